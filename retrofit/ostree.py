"""The libostree adapter: repositories, commits and deployments, through GObject
introspection (``gir1.2-ostree-1.0``), with the ``ostree`` CLI (via :mod:`retrofit.run`)
where the CLI is the stable interface (deploy, fsck).

Commits are built in-process from several source directories into one MutableTree,
so the converter commits the live ``/usr`` and ``/etc`` where they are, without a
staging copy.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

from retrofit.errors import RetrofitError  # noqa: E402
from retrofit.log import Progress, log  # noqa: E402
from retrofit.run import run  # noqa: E402


def _gerror(action: str, exc: GLib.Error) -> RetrofitError:
    return RetrofitError(f"{action}: {exc.message}")


@dataclass
class CommitSource:
    """One directory written into the commit at ``dest`` (a path inside the commit)."""

    src: Path
    dest: str  # "" for the commit root, else e.g. "usr" or "usr/etc"
    # Paths (relative to src, with a leading "/") to leave out.
    exclude: frozenset[str] = field(default_factory=frozenset)
    # Adopt regular files into the repository by hardlink instead of copying them
    # (see Repo.adopt_dir): no extra disk, but the objects ARE the source files.
    adopt: bool = False


@dataclass(frozen=True)
class ExtraFile:
    """One file placed at ``dest`` in the commit: content from ``data`` or ``source``;
    owner, mode and xattrs from ``source`` (root:root 0644 for generated files) unless
    ``mode`` overrides the permission bits."""

    dest: str
    source: Path | None = None
    data: bytes | None = None
    mode: int | None = None
    # hardlink ``source`` into the object store instead of copying it (falls back
    # to a copy across filesystems); ``source`` must never be written in place
    link: bool = False


@dataclass
class CommitStats:
    files: int = 0
    bytes: int = 0
    skipped_special: list[str] = field(default_factory=list)


COMMIT_WORKERS = max(1, min(4, os.cpu_count() or 1))
SPLIT_DEPTH = 4


def dir_sizes(top: Path, depth: int) -> dict[str, int]:
    """Bytes below each directory of ``top`` down to ``depth`` levels ("" is ``top``,
    else "/a/b"), hardlinked inodes counted once."""
    sizes: dict[str, int] = {}
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[str, list[str]]] = [("", [""])]
    while stack:
        rel, ancestors = stack.pop()
        try:
            it = os.scandir(top / rel.lstrip("/") if rel else top)
        except OSError:
            continue
        with it:
            for e in it:
                child = f"{rel}/{e.name}"
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if e.is_dir(follow_symlinks=False):
                    anc = ancestors + [child] if child.count("/") <= depth else ancestors
                    stack.append((child, anc))
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                for a in ancestors:
                    sizes[a] = sizes.get(a, 0) + st.st_size
    return sizes


def mtree_dir(
    mtree: OSTree.MutableTree, path: str, default_meta: str | None = None
) -> OSTree.MutableTree:
    """The subtree at ``path``, created if missing (new directories get
    ``default_meta`` when given)."""
    for part in [p for p in path.split("/") if p]:
        ok, mtree = mtree.ensure_dir(part)
        if default_meta and not mtree.get_metadata_checksum():
            mtree.set_metadata_checksum(default_meta)
    return mtree


def find_special(top: Path, exclude: frozenset[str] = frozenset()) -> set[str]:
    """Paths (relative to ``top``, leading "/") of fifos, sockets and device nodes."""
    found: set[str] = set()
    stack = [("", str(top))]
    while stack:
        rel, d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                child = f"{rel}/{e.name}"
                if child in exclude:
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append((child, e.path))
                elif not (e.is_file(follow_symlinks=False) or e.is_symlink()):
                    found.add(child)
    return found


def _xattrs_variant(path: Path) -> GLib.Variant:
    items = []
    for name in sorted(os.listxattr(path, follow_symlinks=False)):
        value = os.getxattr(path, name, follow_symlinks=False)
        items.append((name.encode() + b"\0", value))
    return GLib.Variant("a(ayay)", items)


def _skip_filter(exclude: frozenset[str]) -> Callable[..., OSTree.RepoCommitFilterResult]:
    def _filter(repo: Any, path: str, info: Any, *_u: Any) -> OSTree.RepoCommitFilterResult:
        if path in exclude:
            return OSTree.RepoCommitFilterResult.SKIP
        return OSTree.RepoCommitFilterResult.ALLOW

    return _filter


def init_repo(path: Path, mode: str = "bare") -> None:
    run(["ostree", "init", f"--repo={path}", f"--mode={mode}"])


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.repo = OSTree.Repo.new(Gio.File.new_for_path(str(self.path)))
        try:
            self.repo.open(None)
        except GLib.Error as exc:
            raise _gerror(f"opening the OSTree repository {self.path}", exc) from None

    # -- refs and commits ---------------------------------------------------------
    def resolve(self, ref: str) -> str | None:
        try:
            ok, rev = self.repo.resolve_rev(ref, True)
        except GLib.Error as exc:
            raise _gerror(f"resolving {ref}", exc) from None
        return str(rev) if rev else None

    def refs(self, prefix: str | None = None) -> dict[str, str]:
        ok, refs = self.repo.list_refs(prefix, None)
        out = {str(k): str(v) for k, v in refs.items()}
        if prefix:
            out = {
                f"{prefix.rstrip('/')}/{k}" if not k.startswith(prefix) else k: v
                for k, v in out.items()
            }
        return out

    def set_ref(self, ref: str, checksum: str | None) -> None:
        self.repo.set_ref_immediate(None, ref, checksum, None)

    def commit_metadata(self, checksum: str) -> dict[str, Any]:
        ok, commit = self.repo.load_variant(OSTree.ObjectType.COMMIT, checksum)
        meta = commit.get_child_value(0).unpack()
        return dict(meta)

    def commit_subject(self, checksum: str) -> str:
        ok, commit = self.repo.load_variant(OSTree.ObjectType.COMMIT, checksum)
        return str(commit.get_child_value(3).unpack())

    def commit_timestamp(self, checksum: str) -> int:
        ok, commit = self.repo.load_variant(OSTree.ObjectType.COMMIT, checksum)
        return int(OSTree.commit_get_timestamp(commit))

    # -- writing ------------------------------------------------------------------
    def write_tree_commit(
        self,
        sources: Sequence[CommitSource],
        *,
        ref: str,
        subject: str,
        metadata: dict[str, Any],
        parent: str | None = None,
        progress_total: int = 0,
        extra_files: Sequence[ExtraFile] = (),
    ) -> tuple[str, CommitStats]:
        """Write ``sources`` (overlaid in order), then ``extra_files``, as one commit and
        point ``ref`` at it. Fifos, sockets and device nodes are left out (OSTree cannot
        store them) and listed in the stats."""
        stats = CommitStats()
        prog = Progress("commit", progress_total) if progress_total else None

        def make_filter(src: CommitSource) -> Callable[..., OSTree.RepoCommitFilterResult]:
            def _filter(
                repo: Any, path: str, info: Gio.FileInfo, *_user: Any
            ) -> OSTree.RepoCommitFilterResult:
                if path in src.exclude:
                    return OSTree.RepoCommitFilterResult.SKIP
                if info.get_file_type() == Gio.FileType.REGULAR:
                    stats.files += 1
                    size = info.get_size()
                    stats.bytes += size
                    if prog:
                        prog.update(size)
                return OSTree.RepoCommitFilterResult.ALLOW

            return _filter

        try:
            self.repo.prepare_transaction(None)
            mtree = OSTree.MutableTree.new()
            for src in sources:
                target = mtree_dir(mtree, src.dest)
                modifier = OSTree.RepoCommitModifier.new(
                    OSTree.RepoCommitModifierFlags.NONE, make_filter(src), None
                )
                specials = find_special(src.src, src.exclude)
                for sp in specials:
                    full = f"/{src.dest}{sp}" if src.dest else sp
                    stats.skipped_special.append(full)
                    log.warning(
                        "commit: skipping %s (OSTree cannot store fifos, sockets or device nodes)",
                        full,
                    )
                if src.adopt:
                    self.adopt_dir(src.src, "", target, specials, src.exclude, stats, prog)
                elif specials:
                    self._write_dir(src.src, "", target, modifier, specials, src.exclude)
                else:
                    self._write_parallel(src, target, stats, prog)
            default_meta = self.default_dirmeta()
            for extra in extra_files:
                parent_dir, _, name = extra.dest.rpartition("/")
                csum = None
                if extra.link and extra.source is not None and extra.data is None:
                    csum = self.link_file_object(extra.source)
                if csum is None:
                    csum = self.write_file_content(extra)
                mtree_dir(mtree, parent_dir, default_meta).replace_file(name, csum)
            ok, root = self.repo.write_mtree(mtree, None)
            meta = GLib.Variant("a{sv}", metadata)
            ok, checksum = self.repo.write_commit(parent, subject, None, meta, root, None)
            self.repo.transaction_set_ref(None, ref, checksum)
            self.repo.commit_transaction(None)
        except GLib.Error as exc:
            self.repo.abort_transaction(None)
            raise _gerror("writing the commit", exc) from None
        if prog:
            prog.finish()
        return str(checksum), stats

    def _write_parallel(
        self,
        src: CommitSource,
        target: OSTree.MutableTree,
        stats: CommitStats,
        prog: Progress | None,
    ) -> None:
        """Write ``src`` with several threads: the tree is split into directory tasks
        of balanced size (big directories become tasks of their own, skipped by their
        parent's walk); each task is libostree's own C walk into its own subtree.
        libostree's content writes are safe from several threads (one transaction);
        PyGObject releases the GIL while they run."""
        sizes = dir_sizes(src.src, SPLIT_DEPTH)
        total = max(sizes.get("", 0), 1)
        limit = total / (COMMIT_WORKERS * 4)
        tasks: dict[str, tuple[OSTree.MutableTree, set[str]]] = {"": (target, set())}
        frontier = [""]
        while frontier and COMMIT_WORKERS > 1:
            rel = max(frontier, key=lambda r: sizes.get(r, 0))
            frontier.remove(rel)
            if sizes.get(rel, 0) <= limit or rel.count("/") >= SPLIT_DEPTH:
                continue
            mtree, skip = tasks[rel]
            with os.scandir(src.src / rel.lstrip("/") if rel else src.src) as it:
                for entry in it:
                    child = f"{rel}/{entry.name}"
                    if child in src.exclude or not entry.is_dir(follow_symlinks=False):
                        continue
                    if sizes.get(child, 0) < limit / 8:
                        continue  # small: stays in the parent's walk
                    ok, sub = mtree.ensure_dir(entry.name)
                    skip.add(f"/{entry.name}")
                    tasks[child] = (sub, set())
                    frontier.append(child)
        lock = threading.Lock()

        def task(rel: str) -> None:
            mtree, skip = tasks[rel]
            excl = {e[len(rel) :] for e in src.exclude if e.startswith(rel + "/")}
            drop = frozenset(skip | excl)

            def _filter(
                repo: Any, path: str, info: Gio.FileInfo, *_user: Any
            ) -> OSTree.RepoCommitFilterResult:
                if path in drop:
                    return OSTree.RepoCommitFilterResult.SKIP
                if info.get_file_type() == Gio.FileType.REGULAR:
                    size = info.get_size()
                    with lock:
                        stats.files += 1
                        stats.bytes += size
                        if prog:
                            prog.update(size)
                return OSTree.RepoCommitFilterResult.ALLOW

            modifier = OSTree.RepoCommitModifier.new(
                OSTree.RepoCommitModifierFlags.NONE, _filter, None
            )
            dfd = os.open(src.src / rel.lstrip("/") if rel else src.src,
                          os.O_RDONLY | os.O_DIRECTORY)  # fmt: skip
            try:
                self.repo.write_dfd_to_mtree(dfd, ".", mtree, modifier, None)
            finally:
                os.close(dfd)

        own = {r: sizes.get(r, 0) - sum(sizes.get(f"{r}{c}", 0) for c in tasks[r][1])
               for r in tasks}  # fmt: skip
        order = sorted(tasks, key=lambda r: -own[r])
        with ThreadPoolExecutor(max_workers=COMMIT_WORKERS) as pool:
            for fut in [pool.submit(task, r) for r in order]:
                fut.result()

    def link_file_object(self, path: Path) -> str | None:
        """Make ``path`` itself the content object (hardlink), if it is on the
        repository's filesystem; None if it is not."""
        gfile = Gio.File.new_for_path(str(path))
        ok, raw = OSTree.checksum_file(gfile, OSTree.ObjectType.FILE, None)
        csum = str(OSTree.checksum_from_bytes(raw))
        obj = self.path / "objects" / csum[:2] / f"{csum[2:]}.file"
        if obj.exists():
            return csum
        obj.parent.mkdir(exist_ok=True)
        try:
            os.link(path, obj)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return None
            raise
        return csum

    def _write_dir(
        self,
        top: Path,
        rel: str,
        target: OSTree.MutableTree,
        modifier: OSTree.RepoCommitModifier,
        specials: set[str],
        exclude: frozenset[str],
    ) -> None:
        """Write ``top/rel`` into ``target``: the fast C walk when the subtree holds no
        special files, else entry by entry down to the directories that do."""
        path = top / rel.lstrip("/") if rel else top
        if not any(sp.startswith(rel + "/") for sp in specials):
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self.repo.write_dfd_to_mtree(dfd, ".", target, modifier, None)
            finally:
                os.close(dfd)
            return
        # Slow path. The filter sees paths relative to the directory it was given, so
        # the subdirectories written in C get a modifier for their own prefix.
        target.set_metadata_checksum(self.write_dirmeta(path))
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            child = f"{rel}/{entry.name}"
            if child in specials or child in exclude:
                continue
            if entry.is_dir(follow_symlinks=False):
                ok, sub = target.ensure_dir(entry.name)
                sub_excl = frozenset(e[len(child) :] for e in exclude if e.startswith(child + "/"))
                sub_mod = OSTree.RepoCommitModifier.new(
                    OSTree.RepoCommitModifierFlags.NONE, _skip_filter(sub_excl), None
                )
                sub_specials = {s[len(child) :] for s in specials if s.startswith(child + "/")}
                self._write_dir(Path(entry.path), "", sub, sub_mod, sub_specials, sub_excl)
            else:
                target.replace_file(
                    entry.name,
                    self.write_file_content(ExtraFile(dest=entry.name, source=Path(entry.path))),
                )

    def adopt_dir(
        self,
        top: Path,
        rel: str,
        target: OSTree.MutableTree,
        specials: set[str],
        exclude: frozenset[str],
        stats: CommitStats,
        prog: Progress | None,
    ) -> None:
        """Commit ``top/rel`` by linking its regular files into the object store.

        Each file's content checksum (content, owner, mode, xattrs) is computed and
        the file itself is hardlinked as ``objects/xx/yyyy.file``: the repository
        takes no extra space for it. The risk: an in-place write to such a file (not
        dpkg's write-new-then-rename, but e.g. ``>>`` or an editor that writes in
        place, or a chmod) while the old system runs changes the object too;
        ``ostree fsck`` reports it. Symlinks and directories are written normally.
        Checksums are computed by several threads.
        """
        files: list[tuple[OSTree.MutableTree, str, str, int]] = []
        self._adopt_walk(top, rel, target, specials, exclude, files)
        lock = threading.Lock()

        def checksum(item: tuple[OSTree.MutableTree, str, str, int]) -> str:
            csum = self.link_file_object(Path(item[2]))
            if csum is None:
                raise RetrofitError(
                    f"commit: cannot adopt {item[2]}: not on the repository's filesystem",
                    hint="convert without --adopt-usr",
                )
            with lock:
                stats.files += 1
                stats.bytes += item[3]
                if prog:
                    prog.update(item[3])
            return csum

        with ThreadPoolExecutor(max_workers=COMMIT_WORKERS) as pool:
            sums = list(pool.map(checksum, files, chunksize=64))
        for (mtree, name, _path, _size), csum in zip(files, sums):
            mtree.replace_file(name, csum)

    def _adopt_walk(
        self,
        top: Path,
        rel: str,
        target: OSTree.MutableTree,
        specials: set[str],
        exclude: frozenset[str],
        files: list[tuple[OSTree.MutableTree, str, str, int]],
    ) -> None:
        path = top / rel.lstrip("/") if rel else top
        target.set_metadata_checksum(self.write_dirmeta(path))
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            child = f"{rel}/{entry.name}"
            if child in specials or child in exclude:
                continue
            if entry.is_dir(follow_symlinks=False):
                ok, sub = target.ensure_dir(entry.name)
                self._adopt_walk(top, child, sub, specials, exclude, files)
            elif entry.is_symlink():
                target.replace_file(
                    entry.name,
                    self.write_file_content(ExtraFile(dest=entry.name, source=Path(entry.path))),
                )
            else:
                size = entry.stat(follow_symlinks=False).st_size
                files.append((target, entry.name, entry.path, size))

    def default_dirmeta(self) -> str:
        """root:root 0755, for directories that exist only in generated content."""
        info = Gio.FileInfo.new()
        info.set_file_type(Gio.FileType.DIRECTORY)
        info.set_attribute_uint32("unix::uid", 0)
        info.set_attribute_uint32("unix::gid", 0)
        info.set_attribute_uint32("unix::mode", stat.S_IFDIR | 0o755)
        variant = OSTree.create_directory_metadata(info, GLib.Variant("a(ayay)", []))
        ok, csum = self.repo.write_metadata(OSTree.ObjectType.DIR_META, None, variant, None)
        return str(OSTree.checksum_from_bytes(csum))

    def write_dirmeta(self, path: Path) -> str:
        info = Gio.File.new_for_path(str(path)).query_info(
            "standard::*,unix::*", Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None
        )
        variant = OSTree.create_directory_metadata(info, _xattrs_variant(path))
        ok, csum = self.repo.write_metadata(OSTree.ObjectType.DIR_META, None, variant, None)
        return str(OSTree.checksum_from_bytes(csum))

    def write_file_content(self, extra: ExtraFile) -> str:
        """Write one content object: a file (metadata from ``source`` unless overridden)
        or generated bytes."""
        if extra.source is not None:
            info = Gio.File.new_for_path(str(extra.source)).query_info(
                "standard::*,unix::*", Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None
            )
            xattrs = _xattrs_variant(extra.source)
        else:
            info = Gio.FileInfo.new()
            info.set_file_type(Gio.FileType.REGULAR)
            info.set_attribute_uint32("unix::uid", 0)
            info.set_attribute_uint32("unix::gid", 0)
            info.set_attribute_uint32("unix::mode", stat.S_IFREG | 0o644)
            xattrs = GLib.Variant("a(ayay)", [])
        if extra.mode is not None:
            info.set_attribute_uint32("unix::mode", stat.S_IFREG | extra.mode)
        data = extra.data
        if info.get_file_type() == Gio.FileType.SYMBOLIC_LINK:
            instream = Gio.MemoryInputStream.new()
        elif data is not None:
            info.set_size(len(data))
            instream = Gio.MemoryInputStream.new_from_bytes(GLib.Bytes.new(data))
        else:
            assert extra.source is not None
            instream = Gio.File.new_for_path(str(extra.source)).read(None)
        ok, stream, length = OSTree.raw_file_to_content_stream(instream, info, xattrs, None)
        ok, csum = self.repo.write_content(None, stream, length, None)
        return str(OSTree.checksum_from_bytes(csum))

    def prune(self) -> None:
        run(["ostree", "prune", f"--repo={self.path}", "--refs-only"])

    def fsck(self) -> str:
        return run(["ostree", "fsck", f"--repo={self.path}"]).stdout


def v_str(s: str) -> GLib.Variant:
    return GLib.Variant("s", s)


def v_bool(b: bool) -> GLib.Variant:
    return GLib.Variant("b", b)


def v_strv(items: Sequence[str]) -> GLib.Variant:
    return GLib.Variant("as", list(items))


# -- sysroot and deployments ---------------------------------------------------------
@dataclass(frozen=True)
class Deployment:
    index: int
    stateroot: str
    checksum: str
    serial: int
    booted: bool
    staged: bool
    pinned: bool
    origin_refspec: str | None
    origin: dict[str, dict[str, str]]
    kargs: str
    path: str  # absolute path of the deployment directory

    @property
    def name(self) -> str:
        return f"{self.checksum}.{self.serial}"


def _keyfile_dict(kf: GLib.KeyFile | None) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    if kf is None:
        return out
    groups, _ = kf.get_groups()
    for g in groups:
        keys, _ = kf.get_keys(g)
        out[g] = {k: kf.get_value(g, k) for k in keys}
    return out


class Sysroot:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.sysroot = OSTree.Sysroot.new(Gio.File.new_for_path(str(self.path)))
        try:
            self.sysroot.load(None)
        except GLib.Error as exc:
            raise _gerror(f"loading the OSTree sysroot {self.path}", exc) from None

    def deployments(self) -> list[Deployment]:
        booted = self.sysroot.get_booted_deployment()
        staged = self.sysroot.get_staged_deployment()
        out = []
        for i, d in enumerate(self.sysroot.get_deployments()):
            origin = d.get_origin()
            refspec = None
            if origin is not None:
                try:
                    refspec = origin.get_string("origin", "refspec")
                except GLib.Error:
                    refspec = None
            bootconfig = d.get_bootconfig()
            kargs = bootconfig.get("options") if bootconfig else ""
            out.append(
                Deployment(
                    index=i,
                    stateroot=d.get_osname(),
                    checksum=d.get_csum(),
                    serial=d.get_deployserial(),
                    booted=booted is not None and d.equal(booted),
                    staged=staged is not None and d.equal(staged),
                    pinned=d.is_pinned(),
                    origin_refspec=refspec,
                    origin=_keyfile_dict(origin),
                    kargs=kargs or "",
                    path=str(self.path / self.sysroot.get_deployment_dirpath(d)),
                )
            )
        return out

    def repo(self) -> Repo:
        return Repo(self.path / "ostree/repo")


def deploy(
    sysroot: Path,
    stateroot: str,
    ref: str,
    kargs: Sequence[str] | None,
    origin_file: Path | None = None,
) -> None:
    """``ostree admin deploy``; ``kargs=None`` inherits the merge deployment's."""
    argv = ["ostree", "admin", "deploy", f"--sysroot={sysroot}", f"--os={stateroot}"]
    if kargs is not None:
        # --karg-append: --karg keeps only the last of repeated names
        # (console=tty0 console=ttyS0)
        argv += ["--karg-none", *(f"--karg-append={k}" for k in kargs)]
    if origin_file is not None:
        argv.append(f"--origin-file={origin_file}")
    argv.append(ref)
    run(argv, hint="see the message above; the system is unchanged until the deployment exists")


def undeploy_all(sysroot: Path, stateroot: str) -> None:
    """Remove every deployment of ``stateroot`` (used by convert --revert)."""
    sr = Sysroot(sysroot)
    deps = [d for d in sr.deployments() if d.stateroot == stateroot]
    for d in sorted(deps, key=lambda d: d.index, reverse=True):
        run(["ostree", "admin", "undeploy", f"--sysroot={sysroot}", str(d.index)])


def clear_immutable(path: Path) -> None:
    """Deployment roots carry the immutable attribute; clear it before removing."""
    if path.exists() and not path.is_symlink():
        run(["chattr", "-i", str(path)], ok=(0, 1))


def is_special(mode: int) -> bool:
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
