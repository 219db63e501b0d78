"""What goes into the converted commit besides /usr itself.

- a skeleton of the root directory (OSTree's top-level symlinks and empty mount
  points, merged-/usr symlinks copied from the host), with the host's own metadata;
- Python bytecode whose recorded source mtime is rewritten to 0, since OSTree sets
  every mtime in a commit to 0 (only for .pyc files that were valid for their source,
  so nothing that was stale becomes valid);
- tmpfiles.d lines for every directory packages own under /var, so a fresh /var is
  recreated at boot, and symlinks from /var to the package state moved into /usr.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from retrofit import dpkgdb, layout
from retrofit.ostree import ExtraFile

PYC_HEADER = 16
TMPFILES_PATH = "usr/lib/tmpfiles.d/retrofit-var.conf"


def copy_meta(src: Path, dst: Path) -> None:
    st = os.lstat(src)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        for name in os.listxattr(src, follow_symlinks=False):
            os.setxattr(
                dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False
            )


def build_skeleton(root: Path, dest: Path) -> None:
    """The commit's root directory: mount points, OSTree symlinks, merged-/usr links."""
    dest.mkdir(parents=True)
    copy_meta(root, dest)
    for name in layout.COMMIT_EMPTY_DIRS:
        d = dest / name
        d.mkdir()
        src = root / name
        if src.is_dir() and not src.is_symlink():
            copy_meta(src, d)
    (dest / "tmp").chmod(0o1777)
    for name, target in layout.COMMIT_SYMLINKS.items():
        os.symlink(target, dest / name)
    # merged-/usr symlinks (bin -> usr/bin, ...) exactly as the host has them
    for entry in os.scandir(root):
        if entry.is_symlink() and os.readlink(entry.path).startswith("usr/"):
            os.symlink(os.readlink(entry.path), dest / entry.name)
    usr = dest / "usr"
    usr.mkdir()
    copy_meta(root / "usr", usr)
    os.symlink("../var/usrlocal", usr / "local")


def pyc_patches(usr: Path, prefix: str = "usr") -> Iterator[ExtraFile]:
    """Bytecode valid for its source, with the source mtime field set to 0."""
    for dirpath, _dirnames, filenames in os.walk(usr):
        if os.path.basename(dirpath) != "__pycache__":
            continue
        for name in filenames:
            if not name.endswith(".pyc"):
                continue
            pyc = Path(dirpath) / name
            source = Path(dirpath).parent / (name.split(".", 1)[0] + ".py")
            try:
                if pyc.is_symlink() or source.is_symlink():
                    continue
                data = pyc.read_bytes()
                sst = source.stat()
            except OSError:
                continue
            patched = patch_pyc(data, int(sst.st_mtime), sst.st_size)
            if patched is not None:
                rel = pyc.relative_to(usr)
                yield ExtraFile(dest=f"{prefix}/{rel}", source=pyc, data=patched)


def patch_pyc(data: bytes, source_mtime: int, source_size: int) -> bytes | None:
    """The pyc with its source-mtime field zeroed, or None if it is hash-based or was
    not valid for the given source."""
    if len(data) < PYC_HEADER:
        return None
    flags = int.from_bytes(data[4:8], "little")
    if flags != 0:
        return None  # hash-based pyc (PEP 552): independent of mtime already
    mtime = int.from_bytes(data[8:12], "little")
    size = int.from_bytes(data[12:16], "little")
    if mtime != source_mtime & 0xFFFFFFFF or size != source_size & 0xFFFFFFFF:
        return None
    if mtime == 0:
        return None
    return data[:8] + b"\0\0\0\0" + data[12:]


def read_names(path: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        for line in path.read_text(errors="replace").splitlines():
            f = line.split(":")
            if len(f) >= 3 and f[2].isdigit():
                out.setdefault(int(f[2]), f[0])
    except OSError:
        pass
    return out


def tmpfiles_lines(root: Path, admindir: Path, relocated: list[str]) -> list[str]:
    """tmpfiles.d lines recreating /var as packages expect it.

    ``relocated`` are /var paths (e.g. "/var/lib/dpkg") now symlinks into /usr.
    """
    users = read_names(root / "etc/passwd")
    groups = read_names(root / "etc/group")
    lines = [
        "# Written by retrofit convert: directories packages own under /var, so that",
        "# /var can be recreated at boot. Package state lives in /usr (see L lines).",
    ]
    for var_path in relocated:
        target = next(m.usr_path for m in layout.STATE_MOVES if f"/var/{m.var_path}" == var_path)
        lines.append(f"L {var_path} - - - - /{target}")
    for name, mode in (
        ("home", "0755"),
        ("roothome", "0700"),
        ("opt", "0755"),
        ("srv", "0755"),
        ("mnt", "0755"),
        ("usrlocal", "0755"),
    ):
        lines.append(f"d /var/{name} {mode} root root -")
    for sub in ("bin", "etc", "games", "include", "lib", "man", "sbin", "share", "src"):
        lines.append(f"d /var/usrlocal/{sub} 0755 root root -")
    seen: set[str] = set()
    paths = sorted({p for _pkg, p in dpkgdb.owned_paths(admindir) if p.startswith("/var/")})
    for p in paths:
        if any(p == r or p.startswith(r + "/") for r in relocated) or p in seen or " " in p:
            continue
        full = root / p.lstrip("/")
        try:
            st = os.lstat(full)
        except OSError:
            continue
        seen.add(p)
        if stat.S_ISLNK(st.st_mode):
            lines.append(f"L {p} - - - - {os.readlink(full)}")
        elif stat.S_ISDIR(st.st_mode):
            user = users.get(st.st_uid, str(st.st_uid))
            group = groups.get(st.st_gid, str(st.st_gid))
            lines.append(f"d {p} {stat.S_IMODE(st.st_mode):04o} {user} {group} -")
    return lines
