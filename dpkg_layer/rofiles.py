"""Protect a hardlinked checkout while packages install into it.

A hardlink checkout's files are the repository's objects. dpkg itself never writes a
file in place (it writes ``.dpkg-new`` and renames), but maintainer scripts may
(``>>``, ``chmod``, ``setcap``, editors). Everything that runs in the sandbox sees the
checkout through ``rofiles-fuse --copyup`` (from the ostree package): a write, chmod,
chown or xattr change to a file with more than one link first replaces it with a
private copy, so the object in the store is never touched. Creating, renaming and
deleting work as usual.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retrofit.errors import RetrofitError
from retrofit.log import log
from retrofit.run import require_tool, run


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path`` (deepest first)."""
    prefix = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == prefix or mnt.startswith(prefix + "/"):
                found.append(Path(mnt))
    return sorted(found, key=lambda p: len(str(p)), reverse=True)


def is_mounted(path: Path) -> bool:
    return Path(os.path.realpath(path)) in mounts_under(path)


def unmount(path: Path) -> None:
    for attempt in range(20):
        if not is_mounted(path):
            return
        res = run(["umount", str(path)], ok=(0, 1, 32))
        if res.returncode == 0:
            return
        time.sleep(0.1 * (attempt + 1))
    log.warning("layer: %s is busy, detaching it lazily", path)
    run(["umount", "--lazy", str(path)], ok=(0, 1, 32))


@contextmanager
def copyup_mount(source: Path, mountpoint: Path) -> Iterator[Path]:
    tool = require_tool("rofiles-fuse", "protect the repository while packages install", "ostree")
    if not Path("/dev/fuse").exists():
        raise RetrofitError(
            "layer: /dev/fuse is missing: the checkout cannot be protected while packages install",
            hint="load the fuse module: modprobe fuse",
        )
    mountpoint.mkdir(parents=True, exist_ok=True)
    # allow_other: maintainer scripts that drop to another user (su, runuser) still
    # see the tree; default_permissions: with the kernel's permission checks.
    # kernel_cache and the timeouts: nothing but this mount changes the tree while it
    # is mounted, so the kernel may keep pages, attributes and negative lookups
    # (ldconfig and the dynamic loader probe a lot); it makes scripts ~2x faster.
    opts = ",".join(
        ("allow_other", "default_permissions", "kernel_cache", "entry_timeout=60",
         "attr_timeout=60", "negative_timeout=60")
    )  # fmt: skip
    run([tool, "--copyup", "-o", opts, str(source), str(mountpoint)])
    if not is_mounted(mountpoint):
        raise RetrofitError(f"layer: rofiles-fuse did not mount {mountpoint}")
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)
