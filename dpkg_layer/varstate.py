"""What packages put under /var becomes tmpfiles.d lines in the commit.

A commit carries no /var: the deployment's /var is the persistent one, and nothing
copies a new package's ``/var/lib/foo`` into it. Packages unpack and run their
scripts against a scratch /var (prepared with the tree's own tmpfiles.d, as boot
would); every directory and symlink that appears there becomes a ``d``/``L`` line
with the owner and mode it ended up with, so ``systemd-tmpfiles --create`` makes it
at boot. Regular files (seed databases, state files) are kept under
``/usr/share/factory/var/...`` and copied in by a ``C`` line. Logs, caches and
temporary files are left behind.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

from convert import content
from retrofit import layout

# Relative to /var. Files below these are not carried (directories still are).
SKIP_FILES_UNDER = ("log/", "cache/", "tmp/", "lib/apt/", "backups/", "spool/")
FACTORY = "usr/share/factory/var"
LAYER_TMPFILES = "usr/lib/tmpfiles.d/retrofit-layer.conf"
UPGRADE_TMPFILES = "usr/lib/tmpfiles.d/retrofit-var-upgrade.conf"


@dataclass(frozen=True)
class Entry:
    kind: str  # "d", "L", "f"
    mode: int
    uid: int
    gid: int
    target: str = ""


Snapshot = Dict[str, Entry]  # typing.Dict: an alias evaluated at run time (3.8)


def prepare(var: Path) -> None:
    """A scratch /var whose package state points into /usr, as on the real system."""
    var.mkdir(parents=True, exist_ok=True)
    for m in layout.STATE_MOVES:
        link = var / m.var_path
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            os.symlink(f"/{m.usr_path}", link)


def snapshot(var: Path) -> Snapshot:
    out: Snapshot = {}
    top = str(var)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, top)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = Entry("L", 0o777, st.st_uid, st.st_gid, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = Entry("d", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = Entry("f", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        # symlinked directories are listed, never followed (os.walk default)
    return out


def _quote(path: str) -> str:
    return path.replace("\\", "\\\\").replace(" ", "\\x20")


def new_entries(before: Snapshot, after: Snapshot) -> list[tuple[str, Entry]]:
    return sorted((p, e) for p, e in after.items() if p not in before)


def carry(
    var: Path, tree: Path, before: Snapshot, after: Snapshot, header: str
) -> tuple[list[str], list[str]]:
    """tmpfiles.d lines for what appeared in scratch ``var`` (relative to ``tree``'s
    accounts for names), copying regular files into ``tree``'s factory. Returns
    (lines, paths of files left behind)."""
    users = content.read_names(tree / "usr/etc/passwd")
    groups = content.read_names(tree / "usr/etc/group")
    lines: list[str] = []
    skipped: list[str] = []
    for rel, e in new_entries(before, after):
        path = _quote(f"/var/{rel}")
        user = users.get(e.uid, str(e.uid))
        group = groups.get(e.gid, str(e.gid))
        if e.kind == "d":
            lines.append(f"d {path} {e.mode:04o} {user} {group} -")
        elif e.kind == "L":
            lines.append(f"L {path} - - - - {e.target}")
        elif any(rel.startswith(s) for s in SKIP_FILES_UNDER):
            skipped.append(f"/var/{rel}")
        else:
            dest = tree / FACTORY / rel
            _mkdirs(tree, dest.parent)
            shutil.copy2(var / rel, dest, follow_symlinks=False)
            os.chown(dest, e.uid, e.gid, follow_symlinks=False)
            lines.append(f"C {path} - - - - /{FACTORY}/{_quote(rel)}")
    if lines:
        lines.insert(0, header)
    return lines, skipped


def _mkdirs(tree: Path, d: Path) -> None:
    missing = []
    while not d.exists():
        missing.append(d)
        d = d.parent
    for m in reversed(missing):
        m.mkdir(mode=0o755)
        os.chmod(m, 0o755)


def write_lines(tree: Path, rel: str, lines: list[str], keep_existing: bool = False) -> None:
    """Write a tmpfiles.d file into the tree (a new file, never in place: the old one
    may be a repository object)."""
    path = tree / rel
    old: list[str] = []
    if keep_existing and path.is_file():
        old = path.read_text().splitlines()
    merged = old + [ln for ln in lines if ln not in old]
    if not merged:
        return
    _mkdirs(tree, path.parent)
    tmp = path.with_name(path.name + ".retrofit-new")
    tmp.write_text("\n".join(merged) + "\n")
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)
