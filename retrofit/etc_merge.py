"""The /etc three-way merge engine.

Inputs are three directories: BASE (the old deployment's ``/usr/etc``, what was
shipped), LOCAL (the old deployment's ``/etc``, what the machine has) and NEW (the new
deployment's ``/usr/etc``). The result is written into OUT, which must be absent or
empty. Nothing here runs a subprocess; everything is ``os`` calls.

Two entries are *the same* when they have the same type and the same content
(bytes of a regular file, target of a symlink), mode, owner, group and extended
attributes (``security.selinux`` is ignored, as labels are the policy's business).
Timestamps are never compared: OSTree commits set every mtime to 0.

Rules, path by path (libostree's ``merge_configuration_from`` first, then ours):

1. Unchanged locally (LOCAL same as BASE) -> take NEW, whatever NEW is, including
   "removed upstream".
2. Changed locally and not upstream (NEW same as BASE) -> keep LOCAL.
3. Deleted locally -> stays deleted, even if upstream changed it (reported).
4. Added locally -> kept. Added on both sides: same content -> that; else metadata as
   in rule 5 and, if the contents differ, a conflict (there is no BASE to diff3 with).
5. Changed on both sides, differently: metadata and content are decided apart.
   Each of mode, owner, group and each xattr takes LOCAL's value if LOCAL changed
   it, else NEW's (a local chmod/chown survives new content). Content: the side that
   changed it; if both did, text files are merged line by line with diff3
   (``merge3``, on byte lines, so CRLF and non-UTF-8 text work); a clean merge is
   written, a conflicting one keeps LOCAL whole and writes NEW whole beside it as
   ``<name>.retrofit-new`` (a conflict). Binary files (a NUL byte, or not UTF-8 and
   full of control characters) and symlinks with two new targets are never merged:
   conflict, same treatment.
6. Secrets never get more readable: when both sides changed an entry, the group and
   other permission bits of the result are limited to those both LOCAL and NEW
   allow.
7. Directories are merged recursively; their own metadata follows rule 5. A directory
   removed upstream survives only if something local is left inside it (or LOCAL
   changed its metadata), and then carries LOCAL's metadata: missing parent chains
   are recreated from LOCAL.
8. Symlinks are compared by target and never followed; dangling ones are kept.
9. FIFOs, sockets and device nodes are never copied: a warning names the path, and
   for the merge they count as absent (one in LOCAL leaves the path empty).
10. A type change (file <-> directory <-> symlink) that only one side made wins like
    any change. If LOCAL and NEW disagree on the type and both differ from BASE,
    that is a *type conflict*: LOCAL's entry is kept, NEW's is written beside it as
    ``<name>.retrofit-new`` and the report names the path. libostree refuses the
    whole deployment in that case ("Modified config file newly defaults to
    directory"); we finish the merge and let the caller refuse on conflicts.
11. ``passwd``, ``group``, ``shadow``, ``gshadow``, ``subuid`` and ``subgid`` at the
    top of /etc, when changed on both sides, are merged by entry
    (:mod:`retrofit.account_merge`); collisions are conflicts. Whenever ``shadow``
    or ``gshadow`` is written from anything but LOCAL unchanged, it is owned by
    root and the group ``shadow`` of the merged ``group`` file (else LOCAL's group),
    mode 0640 at most.
12. A stale ``<name>.retrofit-new`` in LOCAL is replaced when the same path
    conflicts again; the conflict record (:data:`CONFLICT_RECORD`) in LOCAL's top
    directory is never carried forward.

Every file is written to a temporary name inside OUT and renamed into place, with
owner, mode, xattrs (``security.capability`` included: it is set after ``chown``,
which clears it) and the source's mtime. Files are not fsynced one by one unless
``fsync=True``; a caller that switches to OUT should sync the filesystem first. On an
error OUT is left partial and the caller removes it.
"""

from __future__ import annotations

import difflib
import errno
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import merge3

from retrofit import account_merge
from retrofit.atomic import write_json
from retrofit.errors import RetrofitError
from retrofit.log import log

API_VERSION = 1
CONFLICT_SUFFIX = ".retrofit-new"
CONFLICT_RECORD = ".retrofit-merge-conflicts.json"
"""Name of the conflict record, at the top of a deployment's /etc."""

_IGNORED_XATTRS = frozenset({"security.selinux"})

DIR = "directory"
REG = "regular file"
LNK = "symlink"
SPECIAL = "special file"

ACTIONS = (
    "taken-new",
    "kept-local",
    "merged",
    "conflict",
    "type-conflict",
    "deleted",
    "removed",
    "skipped-special",
    "warning",
)
_FIELDS = {a: a.replace("-", "_") for a in ACTIONS[:-1]}
_FIELDS["warning"] = "warnings"


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Item:
    """What happened at one path (relative to /etc)."""

    action: str
    path: str
    detail: str = ""
    new_copy: str | None = None

    def to_dict(self) -> dict[str, str]:
        d = {"action": self.action, "path": self.path, "detail": self.detail}
        if self.new_copy is not None:
            d["newCopy"] = self.new_copy
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        return cls(
            action=str(d["action"]),
            path=str(d["path"]),
            detail=str(d.get("detail", "")),
            new_copy=None if d.get("newCopy") is None else str(d["newCopy"]),
        )


@dataclass
class MergeReport:
    """Per-path outcome of :func:`merge_etc`. Paths are relative to /etc."""

    taken_new: list[Item] = field(default_factory=list)
    kept_local: list[Item] = field(default_factory=list)
    merged: list[Item] = field(default_factory=list)
    conflict: list[Item] = field(default_factory=list)
    type_conflict: list[Item] = field(default_factory=list)
    deleted: list[Item] = field(default_factory=list)
    removed: list[Item] = field(default_factory=list)
    skipped_special: list[Item] = field(default_factory=list)
    warnings: list[Item] = field(default_factory=list)
    unchanged: int = 0

    def _list(self, action: str) -> list[Item]:
        lst: list[Item] = getattr(self, _FIELDS[action])
        return lst

    def add(self, action: str, path: str, detail: str = "", new_copy: str | None = None) -> None:
        self._list(action).append(Item(action, path or ".", detail, new_copy))

    @property
    def conflicts(self) -> list[Item]:
        """Content, account and type conflicts, by path."""
        return sorted(self.conflict + self.type_conflict, key=lambda i: i.path)

    @property
    def clean(self) -> bool:
        return not self.conflict and not self.type_conflict

    def actions(self) -> list[Item]:
        """Every non-trivial action except warnings, sorted by path."""
        out: list[Item] = []
        for action in ACTIONS[:-1]:
            out.extend(self._list(action))
        return sorted(out, key=lambda i: (i.path, i.action))

    def to_dict(self) -> dict[str, Any]:
        counts = {a: len(self._list(a)) for a in ACTIONS}
        counts["unchanged"] = self.unchanged
        return {
            "apiVersion": API_VERSION,
            "clean": self.clean,
            "counts": counts,
            "actions": [i.to_dict() for i in self.actions()],
            "conflicts": [i.to_dict() for i in self.conflicts],
            "warnings": [i.to_dict() for i in self.warnings],
        }


@dataclass
class EtcDiff:
    """Local /etc against the deployment's /usr/etc (paths relative to /etc)."""

    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    """Content or type changed."""
    metadata: list[str] = field(default_factory=list)
    """Only mode, owner, group or xattrs changed."""
    deleted: list[str] = field(default_factory=list)
    special: list[str] = field(default_factory=list)
    """FIFOs, sockets and devices in /etc (never carried by a merge)."""
    conflicts: list[Item] = field(default_factory=list)
    """Unresolved conflicts of the last merge, from the conflict record."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "added": self.added,
            "modified": self.modified,
            "modifiedMetadata": self.metadata,
            "deleted": self.deleted,
            "special": self.special,
            "conflicts": [i.to_dict() for i in self.conflicts],
        }


# ---------------------------------------------------------------------------- nodes


class _Node:
    """One lstat'ed entry of an input tree, with lazily read content and xattrs."""

    __slots__ = ("path", "st", "kind", "_xattrs", "_data", "_target", "_names")

    def __init__(self, path: str, st: os.stat_result) -> None:
        self.path = path
        self.st = st
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFDIR:
            self.kind = DIR
        elif fmt == stat.S_IFREG:
            self.kind = REG
        elif fmt == stat.S_IFLNK:
            self.kind = LNK
        else:
            self.kind = SPECIAL
        self._xattrs: dict[str, bytes] | None = None
        self._data: bytes | None = None
        self._target: str | None = None
        self._names: frozenset[str] | None = None

    @property
    def mode(self) -> int:
        return stat.S_IMODE(self.st.st_mode)

    def special_name(self) -> str:
        m = self.st.st_mode
        if stat.S_ISFIFO(m):
            return "FIFO"
        if stat.S_ISSOCK(m):
            return "socket"
        if stat.S_ISCHR(m):
            return "character device"
        if stat.S_ISBLK(m):
            return "block device"
        return "special file"

    def xattrs(self) -> dict[str, bytes]:
        if self._xattrs is None:
            self._xattrs = _read_xattrs(self.path)
        return self._xattrs

    def data(self) -> bytes:
        if self._data is None:
            with open(self.path, "rb") as f:
                self._data = f.read()
        return self._data

    def target(self) -> str:
        if self._target is None:
            self._target = os.readlink(self.path)
        return self._target

    def names(self) -> frozenset[str]:
        if self._names is None:
            self._names = frozenset(os.listdir(self.path) if self.kind == DIR else ())
        return self._names

    def child(self, name: str) -> _Node | None:
        """The entry ``name`` in this directory, if there is one."""
        if name not in self.names():
            return None
        return _lstat(os.path.join(self.path, name))


def _lstat(path: str) -> _Node | None:
    try:
        return _Node(path, os.lstat(path))
    except FileNotFoundError:
        return None


def _read_xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out = {}
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
    return out


@dataclass(frozen=True)
class _Meta:
    mode: int
    uid: int
    gid: int
    xattrs: tuple[tuple[str, bytes], ...]


def _meta(node: _Node) -> _Meta:
    return _Meta(node.mode, node.st.st_uid, node.st.st_gid, tuple(sorted(node.xattrs().items())))


def _cmp_xattrs(node: _Node) -> dict[str, bytes]:
    return {k: v for k, v in node.xattrs().items() if k not in _IGNORED_XATTRS}


def _same_meta(a: _Node, b: _Node) -> bool:
    if a.st.st_uid != b.st.st_uid or a.st.st_gid != b.st.st_gid:
        return False
    if a.kind != LNK and a.mode != b.mode:
        return False
    return _cmp_xattrs(a) == _cmp_xattrs(b)


def _same_content(a: _Node, b: _Node) -> bool:
    if a.kind != b.kind:
        return False
    if a.kind == REG:
        return a.st.st_size == b.st.st_size and a.data() == b.data()
    if a.kind == LNK:
        return a.target() == b.target()
    if a.kind == SPECIAL:
        return stat.S_IFMT(a.st.st_mode) == stat.S_IFMT(b.st.st_mode) and (
            a.st.st_rdev == b.st.st_rdev
        )
    return True


def _same(a: _Node, b: _Node) -> bool:
    """Same type, content and metadata (not recursive for directories)."""
    return _same_content(a, b) and _same_meta(a, b)


def _tree_equal(a: _Node, b: _Node) -> bool:
    """:func:`_same`, recursively for directories."""
    if not _same(a, b):
        return False
    if a.kind != DIR:
        return True
    if a.names() != b.names():
        return False
    for name in a.names():
        ca, cb = a.child(name), b.child(name)
        if ca is None or cb is None or not _tree_equal(ca, cb):
            return False
    return True


# ------------------------------------------------------------------------ text merge

# Bytes that occur in text: printable ASCII, whitespace, ESC, backspace, and 0x80+.
_TEXT_BYTES = bytes({7, 8, 9, 10, 11, 12, 13, 27} | set(range(0x20, 0x100)) - {0x7F})


def is_binary(data: bytes) -> bool:
    """A NUL byte, or not UTF-8 and more than 10% control characters."""
    if b"\0" in data:
        return True
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        pass
    sample = data[:8192]
    odd = len(sample.translate(None, _TEXT_BYTES))
    return odd * 10 > len(sample)


def split_lines(data: bytes) -> list[bytes]:
    """Lines ending in ``\\n`` (kept, so ``\\r\\n`` survives); the last may lack it."""
    lines = data.split(b"\n")
    last = lines.pop()
    out = [line + b"\n" for line in lines]
    if last:
        out.append(last)
    return out


def _matcher(isjunk: Any, a: Sequence[bytes], b: Sequence[bytes]) -> difflib.SequenceMatcher[bytes]:
    # autojunk would treat frequent lines ("", "}") as junk and invent conflicts
    return difflib.SequenceMatcher(isjunk, a, b, autojunk=False)


def merge_text(base: bytes, local: bytes, new: bytes) -> bytes | None:
    """diff3 of three byte strings, line by line; None when the changes conflict."""
    b, l_, n = split_lines(base), split_lines(local), split_lines(new)
    m = merge3.Merge3(b, l_, n, sequence_matcher=_matcher)
    out: list[bytes] = []
    for region in m.merge_regions():
        what = region[0]
        if what == "conflict":
            return None
        if what == "unchanged":
            out.extend(b[region[1] : region[2]])
        elif what in ("a", "same"):
            out.extend(l_[region[1] : region[2]])
        elif what == "b":
            out.extend(n[region[1] : region[2]])
        else:  # pragma: no cover - merge3 yields nothing else
            raise AssertionError(what)
    return b"".join(out)


# --------------------------------------------------------------------------- merging


class _Merger:
    def __init__(self, base: Path, local: Path, new: Path, out: Path, fsync: bool) -> None:
        self.base, self.local, self.new, self.out = base, local, new, out
        self.fsync = fsync
        self.report = MergeReport()
        self._tmp_counter = 0
        self._pid = os.getpid()
        self._blocked: dict[str, set[str]] = {}
        # shadow/gshadow written from NEW or merged: name -> (fallback gid, allowed go bits)
        self._shadow_fixup: dict[str, tuple[int, int]] = {}
        self._conflict_copies: set[str] = set()
        self._dir_names: dict[str, set[str]] = {}

    # -- entry points

    def run(self) -> MergeReport:
        roots = []
        for label, p in (("BASE", self.base), ("LOCAL", self.local), ("NEW", self.new)):
            node = _lstat(str(p))
            if node is None or node.kind != DIR:
                raise RetrofitError(
                    f"etc merge: {label} {p} is not a directory",
                    hint="pass the old /usr/etc, the old /etc and the new /usr/etc",
                )
            roots.append(node)
        self._check_out()
        self._dir("", roots[0], roots[1], roots[2])
        self._fix_shadow()
        return self.report

    def _check_out(self) -> None:
        out = self.out
        real_out = os.path.realpath(out)
        for p in (self.base, self.local, self.new):
            real = os.path.realpath(p)
            if real_out == real or real_out.startswith(real + os.sep):
                raise RetrofitError(f"etc merge: OUT {out} is inside the input {p}")
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise RetrofitError(f"etc merge: OUT {out} exists and is not a directory")
        if out.is_dir():
            if any(out.iterdir()):
                raise RetrofitError(
                    f"etc merge: OUT {out} is not empty",
                    hint="the merge writes a new /etc; give it a new or empty directory",
                )
        else:
            out.mkdir(mode=0o700)

    # -- helpers

    def _abs(self, rel: str) -> str:
        return os.path.join(str(self.out), rel) if rel else str(self.out)

    def _tmp(self, parent: str) -> str:
        while True:
            self._tmp_counter += 1
            p = os.path.join(parent, f".retrofit-tmp.{self._pid}.{self._tmp_counter}")
            if not os.path.lexists(p):
                return p

    def _set_xattrs(self, target: int | str, xattrs: Sequence[tuple[str, bytes]], rel: str) -> None:
        for k, v in xattrs:
            try:
                if isinstance(target, int):
                    os.setxattr(target, k, v)
                else:
                    os.setxattr(target, k, v, follow_symlinks=False)
            except OSError as e:
                self.report.add("warning", rel, f"could not set xattr {k}: {e.strerror}")

    def _write_file(self, rel: str, data: bytes, meta: _Meta, mtime_ns: int | None) -> None:
        dst = self._abs(rel)
        tmp = self._tmp(os.path.dirname(dst))
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # chown clears setuid bits and security.capability: chown, chmod, xattrs
            os.fchown(fd, meta.uid, meta.gid)
            os.fchmod(fd, meta.mode)
            self._set_xattrs(fd, meta.xattrs, rel)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, dst)

    def _write_symlink(self, rel: str, target: str, meta: _Meta, mtime_ns: int | None) -> None:
        dst = self._abs(rel)
        tmp = self._tmp(os.path.dirname(dst))
        os.symlink(target, tmp)
        try:
            os.chown(tmp, meta.uid, meta.gid, follow_symlinks=False)
            self._set_xattrs(tmp, meta.xattrs, rel)
            if mtime_ns is not None:
                os.utime(tmp, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        except BaseException:
            os.unlink(tmp)
            raise
        os.rename(tmp, dst)

    def _write_leaf(
        self, rel: str, node: _Node, meta: _Meta | None = None, data: bytes | None = None
    ) -> None:
        """Write ``node`` (a file or symlink) at ``rel``, optionally with other metadata
        or content. New content gets the current time as mtime."""
        m = meta if meta is not None else _meta(node)
        mtime = node.st.st_mtime_ns if data is None else None
        if node.kind == LNK:
            self._write_symlink(rel, node.target(), m, mtime)
        else:
            self._write_file(rel, node.data() if data is None else data, m, mtime)

    def _apply_dir_meta(self, rel: str, meta: _Meta) -> None:
        p = self._abs(rel)
        os.chown(p, meta.uid, meta.gid, follow_symlinks=False)
        os.chmod(p, meta.mode)
        self._set_xattrs(p, meta.xattrs, rel)

    def _copy_tree(self, node: _Node, rel: str) -> int:
        """Copy ``node`` whole to ``rel``; returns the number of entries written."""
        if node.kind == SPECIAL:
            self._skip_special(rel, node)
            return 0
        if node.kind != DIR:
            self._write_leaf(rel, node)
            return 1
        os.mkdir(self._abs(rel), 0o700)
        count = 1
        for name in sorted(node.names()):
            child = node.child(name)
            if child is not None:
                count += self._copy_tree(child, f"{rel}/{name}" if rel else name)
        self._apply_dir_meta(rel, _meta(node))
        return count

    def _skip_special(self, rel: str, node: _Node, where: str = "local /etc") -> None:
        msg = f"{node.special_name()} in {where} not copied"
        log.warning("etc merge: %s: %s", rel, msg)
        self.report.add("skipped-special", rel, msg)

    def _copy_name(self, rel: str) -> str:
        parent, _, name = rel.rpartition("/")
        taken = self._dir_names.get(parent, set())
        candidate = name + CONFLICT_SUFFIX
        i = 0
        while candidate in taken or os.path.lexists(self._abs(_join(parent, candidate))):
            i += 1
            candidate = f"{name}{CONFLICT_SUFFIX}.{i}"
        return _join(parent, candidate)

    def _merge_meta(self, b: _Node | None, l_: _Node, n: _Node) -> tuple[_Meta, str]:
        """Rule 5 + 6: per attribute, LOCAL's value if LOCAL changed it, else NEW's;
        then group/other bits limited to what both LOCAL and NEW allow."""

        def pick(bv: Any, lv: Any, nv: Any) -> Any:
            return nv if b is not None and lv == bv else lv

        bm = _meta(b) if b is not None else None
        lm, nm = _meta(l_), _meta(n)
        mode = pick(bm.mode if bm else None, lm.mode, nm.mode)
        uid = pick(bm.uid if bm else None, lm.uid, nm.uid)
        gid = pick(bm.gid if bm else None, lm.gid, nm.gid)
        bx = dict(bm.xattrs) if bm else {}
        lx, nx = dict(lm.xattrs), dict(nm.xattrs)
        xattrs = {}
        for k in sorted(set(lx) | set(nx) | set(bx)):
            v = pick(bx.get(k), lx.get(k), nx.get(k))
            if v is not None:
                xattrs[k] = v
        note = ""
        if l_.kind != LNK:
            allowed = lm.mode & nm.mode & 0o077
            if mode & 0o077 & ~allowed:
                clamped = (mode & ~0o077) | (mode & allowed)
                note = (
                    f"mode {mode:04o} limited to {clamped:04o} (never more readable than "
                    "local or new)"
                )
                mode = clamped
        return _Meta(mode, uid, gid, tuple(sorted(xattrs.items()))), note

    # -- the walk

    def _dir(self, rel: str, b: _Node | None, l_: _Node | None, n: _Node | None) -> None:
        """Merge a path where every present side is a directory."""
        if rel:
            os.mkdir(self._abs(rel), 0o700)
        names: set[str] = set()
        for side in (b, l_, n):
            if side is not None:
                names.update(side.names())
        self._dir_names[rel] = set(b.names() if b else ()) | set(n.names() if n else ())
        order = sorted(names)
        if not rel:
            names.discard(CONFLICT_RECORD)
            order = [a for a in account_merge.ACCOUNT_FILES if a in names]
            order += sorted(names - set(order))
        for name in order:
            self._entry(
                _join(rel, name),
                b.child(name) if b is not None else None,
                l_.child(name) if l_ is not None else None,
                n.child(name) if n is not None else None,
            )

        assert l_ is not None or n is not None
        if n is None:
            assert l_ is not None
            if b is not None and not os.listdir(self._abs(rel)) and _same_meta(b, l_):
                os.rmdir(self._abs(rel))
                self.report.add("removed", rel, "directory removed upstream")
                return
            if b is not None:
                self.report.add(
                    "kept-local", rel, "directory removed upstream; kept for local changes inside"
                )
            self._apply_dir_meta(rel, _meta(l_))
            return
        if l_ is None:
            self._apply_dir_meta(rel, _meta(n))
            return
        lc = b is None or not _same_meta(b, l_)
        nc = b is None or not _same_meta(b, n)
        if _same_meta(l_, n):
            self._apply_dir_meta(rel, _meta(l_))
        elif not lc:
            self._apply_dir_meta(rel, _meta(n))
            self.report.add("taken-new", rel, "directory metadata changed upstream")
        elif not nc:
            self._apply_dir_meta(rel, _meta(l_))
            self.report.add("kept-local", rel, "directory metadata changed locally")
        else:
            meta, note = self._merge_meta(b, l_, n)
            self._apply_dir_meta(rel, meta)
            self.report.add("merged", rel, _sentence("directory metadata merged", note))

    def _entry(self, rel: str, b: _Node | None, l_: _Node | None, n: _Node | None) -> None:
        rep = self.report
        if rel in self._conflict_copies:
            rep.add("warning", rel, "stale conflict copy replaced by this merge's")
            return
        if l_ is not None and l_.kind == SPECIAL:
            self._skip_special(rel, l_)
            return
        if b is not None and b.kind == SPECIAL:
            self._skip_special(rel, b, "the old /usr/etc")
            b = None
        if n is not None and n.kind == SPECIAL:
            self._skip_special(rel, n, "the new /usr/etc")
            n = None

        if l_ is None:
            if n is None:
                return
            if b is None:
                count = self._copy_tree(n, rel)
                rep.add("taken-new", rel, _added("added upstream", n, count))
                return
            detail = "deleted locally; stays deleted"
            if not _tree_equal(b, n):
                detail += " (it changed upstream)"
            rep.add("deleted", rel, detail)
            return

        if n is None:
            if b is None:
                count = self._copy_tree(l_, rel)
                rep.add("kept-local", rel, _added("added locally", l_, count))
                return
            if b.kind == DIR and l_.kind == DIR:
                self._dir(rel, b, l_, None)
                return
            if _tree_equal(b, l_):
                rep.add("removed", rel, "removed upstream")
                return
            self._copy_tree(l_, rel)
            rep.add("kept-local", rel, "removed upstream, but modified locally: kept")
            rep.add("warning", rel, "removed upstream, but modified locally: kept")
            return

        if l_.kind == n.kind:
            bb = b if b is not None and b.kind == l_.kind else None
            if l_.kind == DIR:
                self._dir(rel, bb, l_, n)
            else:
                self._leaf(rel, bb, l_, n)
            return

        # LOCAL and NEW disagree on the type
        if b is not None and _tree_equal(b, l_):
            self._copy_tree(n, rel)
            rep.add("taken-new", rel, f"became a {n.kind} upstream")
        elif b is not None and _tree_equal(b, n):
            self._copy_tree(l_, rel)
            rep.add("kept-local", rel, f"became a {l_.kind} locally")
        else:
            self._copy_tree(l_, rel)
            copy = self._copy_name(rel)
            self._copy_tree(n, copy)
            self._conflict_copies.add(copy)
            how = "added locally" if b is None else "modified locally"
            rep.add(
                "type-conflict",
                rel,
                f"{how} as a {l_.kind}, but the new version ships a {n.kind}: kept the "
                f"local {l_.kind}; the new {n.kind} is at {copy}",
                copy,
            )
            log.warning("etc merge: %s: %s", rel, rep.type_conflict[-1].detail)

    def _leaf(self, rel: str, b: _Node | None, l_: _Node, n: _Node) -> None:
        """LOCAL and NEW are both files or both symlinks; BASE is the same type or None."""
        rep = self.report
        if b is not None and _same(b, l_):
            self._write_leaf(rel, n)
            self._mark_shadow(rel, l_, n)
            if _same(l_, n):
                rep.unchanged += 1
            else:
                what = "content" if not _same_content(l_, n) else "metadata"
                rep.add("taken-new", rel, f"{what} changed upstream")
            return
        if _same(l_, n):
            self._write_leaf(rel, l_)
            rep.unchanged += 1
            return
        if b is not None and _same(b, n):
            self._write_leaf(rel, l_)
            what = "content" if not _same_content(b, l_) else "metadata"
            rep.add("kept-local", rel, f"{what} changed locally")
            return

        # changed on both sides (or added on both), differently
        meta, note = self._merge_meta(b, l_, n)
        l_changed = b is None or not _same_content(b, l_)
        n_changed = b is None or not _same_content(b, n)
        if not l_changed or not n_changed or _same_content(l_, n):
            src = n if not l_changed else l_
            self._write_leaf(rel, src, meta)
            self._mark_shadow(rel, l_, n)
            if not l_changed:
                detail = "content changed upstream, local metadata kept"
            elif not n_changed:
                detail = "content changed locally, metadata merged"
            else:
                detail = "same content on both sides, metadata merged"
            rep.add("merged", rel, _sentence(detail, note))
            return
        if l_.kind == LNK:
            self._conflict(
                rel,
                l_,
                n,
                f"symlink changed locally (-> {l_.target()}) and upstream (-> {n.target()})",
            )
            return
        if rel in account_merge.ACCOUNT_FILES:  # top level only: rel has no "/"
            if not (is_binary(l_.data()) or is_binary(n.data())):
                self._accounts(rel, b, l_, n, meta, note)
                return
        if is_binary(l_.data()) or is_binary(n.data()) or (b is not None and is_binary(b.data())):
            self._conflict(rel, l_, n, "binary file changed locally and upstream")
            return
        if b is None:  # no common ancestor: diff3 against "empty" would drop an empty side
            self._conflict(rel, l_, n, "added locally and upstream with different content")
            return
        merged = merge_text(b.data(), l_.data(), n.data())
        if merged is None:
            self._conflict(rel, l_, n, "changed locally and upstream; the changes overlap")
            return
        self._write_leaf(rel, l_, meta, merged)
        rep.add("merged", rel, _sentence("merged line by line", note))

    def _conflict(self, rel: str, l_: _Node, n: _Node, why: str) -> None:
        self._write_leaf(rel, l_)
        copy = self._copy_name(rel)
        self._write_leaf(copy, n)
        self._conflict_copies.add(copy)
        detail = f"{why}: kept the local version; the new one is at {copy}"
        self.report.add("conflict", rel, detail, copy)
        log.warning("etc merge: %s: %s", rel, detail)

    def _accounts(
        self, rel: str, b: _Node | None, l_: _Node, n: _Node, meta: _Meta, note: str
    ) -> None:
        blocked = self._blocked.get(account_merge.BLOCKED_BY.get(rel, ""), set())
        res = account_merge.merge_accounts(
            rel, b.data() if b is not None else None, l_.data(), n.data(), blocked
        )
        self._blocked[rel] = res.blocked
        self._write_leaf(rel, l_, meta, res.content)
        self._mark_shadow(rel, l_, n)
        for msg in res.notes:
            self.report.add("warning", rel, msg)
        if res.collisions:
            copy = self._copy_name(rel)
            self._write_leaf(copy, n)
            self._conflict_copies.add(copy)
            detail = "; ".join(res.collisions) + f" (merged the rest; the new file is at {copy})"
            self.report.add("conflict", rel, detail, copy)
            log.warning("etc merge: %s: %s", rel, detail)
        else:
            self.report.add("merged", rel, _sentence("merged by entry", note))

    def _mark_shadow(self, rel: str, l_: _Node, n: _Node) -> None:
        if rel in ("shadow", "gshadow") and l_.kind == REG:
            self._shadow_fixup[rel] = (l_.st.st_gid, l_.mode & n.mode & 0o077)

    def _fix_shadow(self) -> None:
        group = _lstat(self._abs("group"))
        shadow_gid = None
        if group is not None and group.kind == REG:
            shadow_gid = account_merge.group_id(group.data(), "shadow")
        for rel, (fallback_gid, allowed) in sorted(self._shadow_fixup.items()):
            node = _lstat(self._abs(rel))
            if node is None or node.kind != REG:
                continue
            gid = shadow_gid if shadow_gid is not None else fallback_gid
            mode = 0o600 | (0o040 & allowed)
            xattrs = sorted(node.xattrs().items())
            os.chown(node.path, 0, gid, follow_symlinks=False)
            os.chmod(node.path, mode)
            self._set_xattrs(node.path, xattrs, rel)  # chown may have cleared some


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _sentence(detail: str, note: str) -> str:
    return f"{detail}; {note}" if note else detail


def _added(what: str, node: _Node, count: int) -> str:
    if node.kind == DIR:
        return f"{what} (directory, {count} entries)"
    return what


def merge_etc(base: Path, local: Path, new: Path, out: Path, *, fsync: bool = False) -> MergeReport:
    """Three-way merge of /etc: BASE (old /usr/etc), LOCAL (old /etc), NEW (new
    /usr/etc) into OUT (absent or empty). See the module docstring for the rules.

    Raises :class:`RetrofitError` for unusable arguments and I/O failures; conflicts
    are not errors, they are in the report (``report.conflicts``).
    """
    merger = _Merger(Path(base), Path(local), Path(new), Path(out), fsync)
    try:
        report = merger.run()
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise RetrofitError(
            f"etc merge: {where}{e.strerror or e}",
            hint=f"OUT ({out}) is incomplete; remove it, fix the cause and merge again",
        ) from e
    return report


# ------------------------------------------------------------------------------ diff


def etc_diff(usr_etc: Path, etc: Path) -> EtcDiff:
    """Local changes of ``etc`` against ``usr_etc``: added paths (recursively), deleted
    paths (the top of a deleted directory only), content/type changes, metadata-only
    changes, and special files. Timestamps and ``security.selinux`` are ignored."""
    diff = EtcDiff()
    a, b = _lstat(str(usr_etc)), _lstat(str(etc))
    for label, node, p in (("/usr/etc", a, usr_etc), ("/etc", b, etc)):
        if node is None or node.kind != DIR:
            raise RetrofitError(f"etc diff: {label} {p} is not a directory")
    assert a is not None and b is not None
    try:
        _diff_dir("", a, b, diff)
    except OSError as e:
        raise RetrofitError(f"etc diff: {e.filename}: {e.strerror or e}") from e
    return diff


def _diff_dir(rel: str, a: _Node, b: _Node, diff: EtcDiff) -> None:
    names = set(a.names()) | set(b.names())
    if not rel:
        names.discard(CONFLICT_RECORD)
    for name in sorted(names):
        crel = _join(rel, name)
        ca, cb = a.child(name), b.child(name)
        if cb is not None and cb.kind == SPECIAL:
            diff.special.append(crel)
            continue
        if cb is None:
            if ca is not None:
                diff.deleted.append(crel)
            continue
        if ca is None:
            _diff_added(crel, cb, diff)
            continue
        if not _same_content(ca, cb):
            diff.modified.append(crel)
        elif not _same_meta(ca, cb):
            diff.metadata.append(crel)
        if ca.kind == DIR and cb.kind == DIR:
            _diff_dir(crel, ca, cb, diff)


def _diff_added(rel: str, node: _Node, diff: EtcDiff) -> None:
    if node.kind == SPECIAL:
        diff.special.append(rel)
        return
    diff.added.append(rel)
    if node.kind == DIR:
        for name in sorted(node.names()):
            child = node.child(name)
            if child is not None:
                _diff_added(_join(rel, name), child, diff)


# --------------------------------------------------------------------- conflict record


def write_conflict_record(report: MergeReport, path: Path) -> None:
    """Persist the conflicts of a merge as JSON (temp file + fsync + rename)."""
    write_json(
        Path(path),
        {"apiVersion": API_VERSION, "conflicts": [i.to_dict() for i in report.conflicts]},
    )


def read_conflict_record(path: Path) -> list[Item]:
    """The conflicts saved by :func:`write_conflict_record`; [] if there is no record."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise RetrofitError(
            f"cannot read the conflict record {path}: {e}",
            hint="remove it; it is rewritten by the next merge",
        ) from e
    try:
        if doc.get("apiVersion") != API_VERSION:
            raise ValueError(f"unknown apiVersion {doc.get('apiVersion')!r}")
        return [Item.from_dict(d) for d in doc["conflicts"]]
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise RetrofitError(
            f"the conflict record {path} is malformed: {e}",
            hint="remove it; it is rewritten by the next merge",
        ) from e
