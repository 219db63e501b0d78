"""Helpers for tests on real trees: manifests, copies, sandboxed commands."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from retrofit.run import Result, run

Entry = tuple[object, ...]


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def entry(path: str, content: bool = True) -> Entry:
    st = os.lstat(path)
    xattrs = tuple(
        sorted(
            (n, os.getxattr(path, n, follow_symlinks=False))
            for n in os.listxattr(path, follow_symlinks=False)
        )
    )
    if stat.S_ISLNK(st.st_mode):
        what: object = ("link", os.readlink(path))
    elif stat.S_ISREG(st.st_mode):
        what = ("file", st.st_size, file_digest(path) if content else None)
    elif stat.S_ISDIR(st.st_mode):
        what = ("dir",)
    else:
        what = ("special", stat.S_IFMT(st.st_mode))
    return (what, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs)


def manifest(top: Path, skip: Iterable[str] = (), content: bool = True) -> dict[str, Entry]:
    """Every path below ``top`` (not following symlinks) -> (type, mode, uid, gid, xattrs).

    ``skip``: relative paths whose subtree is left out."""
    skipped = {s.strip("/") for s in skip}
    out: dict[str, Entry] = {}
    top_s = str(top)
    for dirpath, dirnames, filenames in os.walk(top_s):
        rel_dir = os.path.relpath(dirpath, top_s)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in dirnames:
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if rel in skipped:
                continue
            keep.append(d)
            full = os.path.join(dirpath, d)
            out[rel] = entry(full, content)
        dirnames[:] = [d for d in keep if not os.path.islink(os.path.join(dirpath, d))]
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if rel in skipped:
                continue
            out[rel] = entry(os.path.join(dirpath, f), content)
    return out


def diff_manifests(a: dict[str, Entry], b: dict[str, Entry], limit: int = 20) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k)!r} != {b.get(k)!r}")
            if len(out) >= limit:
                break
    return out


def copy_tree(src: Path, dest: Path, hardlink: bool = False) -> Path:
    """A copy of a cached tree. ``hardlink`` shares file inodes with the cache (fast;
    only for trees whose files are replaced, never written in place)."""
    run(["cp", "-al" if hardlink else "-a", str(src), str(dest)])
    marker = dest / ".retrofit-tree-complete"
    if marker.exists():
        marker.unlink()
    return dest


def in_tree(
    root: Path, script: str, binds: Iterable[tuple[str, str]] = (), ok: tuple[int, ...] = (0,)
) -> Result:
    argv = ["bwrap", "--ro-bind", str(root), "/"]
    for src, dst in binds:
        argv += ["--ro-bind", src, dst]
    argv += [
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--unshare-net",
        "--unshare-pid",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]
    return run(argv, ok=ok)


def retrofit_cmd(
    *args: str, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)
) -> Result:
    import sys

    return run([sys.executable, "-m", "retrofit", *args], env=env, ok=ok)
