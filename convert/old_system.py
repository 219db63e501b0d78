"""``retrofit cleanup --old-system``: remove the pre-conversion system once the
converted one has proven itself.

After a conversion the physical root still holds the old system — its ``/usr``,
``/etc``, the merged-/usr symlinks, the symlinks ``move-data`` left where ``/var``,
``/home``, … were, and its kernels in ``/boot`` — so that GRUB's "previous system
(before retrofit)" entry boots it. This removes exactly those, and nothing it does
not recognise:

* only after a trial boot of the converted system was confirmed healthy
  (``/ostree/retrofit/boot-confirmed``), unless ``--force`` (an offline tree);
* the old ``/usr``, ``/etc``, … are first *renamed* into
  ``/ostree/retrofit/old-system.trash`` (same filesystem), the record
  ``old-system-removed.json`` is written, then the trash is deleted: an
  interrupted run is finished by running it again, and nothing is half-deleted in
  place;
* a data symlink goes only if it is still the one the conversion left; a directory with
  anything mounted below it is refused;
* the old kernels (``/boot/vmlinuz-*``, ``initrd.img-*``, ``config-*``,
  ``System.map-*``) go, so GRUB's ``10_linux`` lists nothing and the menu is
  regenerated without the old entries;
* ``convert --revert`` refuses afterwards: there is nothing left to revert to.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from convert.journal import Journal
from grub import trial
from retrofit import atomic, layout
from retrofit.errors import NothingToDo, RetrofitError
from retrofit.log import log

TRASH = layout.STATE_DIR / "old-system.trash"
RECORD = layout.STATE_DIR / "old-system-removed.json"
# the old system's own trees (or merged-/usr symlinks) at the top of the physical root
OS_ENTRIES = ("usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Debian's kernel symlinks in / (linux-base)
ROOT_KERNEL_LINKS = ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old")
BOOT_GLOBS = ("vmlinuz-*", "initrd.img-*", "config-*", "System.map-*")


@dataclass
class Item:
    path: str  # as the operator sees it
    kind: str  # tree, symlink, file
    bytes: int = 0


@dataclass
class Report:
    items: list[Item] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def physical_root(sysroot: Path, live: bool) -> Path:
    """Where the old system lives: the physical root (``/sysroot`` when a deployment
    is booted, else the sysroot itself)."""
    if live and os.path.exists("/run/ostree-booted"):
        return Path("/sysroot")
    return sysroot


def boot_dir(sysroot: Path, live: bool) -> Path:
    return Path("/boot") if live else sysroot / "boot"


def _size(path: Path) -> int:
    """Bytes the tree frees: files whose last link goes (an ``--adopt-usr`` file
    shares its inode with the repository and frees nothing)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                total += st.st_blocks * 512
    return total


def _mounts_below(paths: list[Path]) -> list[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = [ln.split()[4].replace("\\040", " ") for ln in lines]
    out = []
    for p in paths:
        prefix = os.path.realpath(p)
        out += [m for m in points if m == prefix or m.startswith(prefix + "/")]
    return out


def _data_links(sysroot: Path) -> dict[str, str]:
    journal = Journal.load(sysroot)
    if journal is None:
        return {}
    return {m.source: m.link for m in journal.plan.data_moves if m.link}


def preflight(sysroot: Path, live: bool, force: bool) -> None:
    if not (sysroot / layout.STATE_DIR / "converted.json").exists():
        raise RetrofitError(
            f"cleanup --old-system: {sysroot} was not converted by retrofit (or the"
            " conversion did not finish)",
            hint="retrofit status shows the conversion state",
        )
    if live and not os.path.exists("/run/ostree-booted"):
        raise RetrofitError(
            "cleanup --old-system: the running system is the old system",
            hint="boot the converted deployment first (it is GRUB's default once confirmed)",
        )
    if not (sysroot / trial.CONFIRMED).exists() and not force:
        raise RetrofitError(
            "cleanup --old-system: the converted system has not yet proven itself"
            " (no confirmed trial boot)",
            hint="reboot into the deployment and let retrofit-health.service confirm it"
            " (retrofit status shows the trial); --force skips this check",
        )


def plan(sysroot: Path, live: bool) -> tuple[list[tuple[Path, Item]], list[str]]:
    """What would go: (path, item) pairs, and what was recognised but kept."""
    phys = physical_root(sysroot, live)
    todo: list[tuple[Path, Item]] = []
    kept: list[str] = []
    shown = "/sysroot" if phys != sysroot else str(sysroot).rstrip("/")
    for name in OS_ENTRIES:
        p = phys / name
        if p.is_symlink():
            todo.append((p, Item(f"{shown}/{name}", "symlink")))
        elif p.is_dir():
            todo.append((p, Item(f"{shown}/{name}", "tree", _size(p))))
    for source, link in _data_links(sysroot).items():
        if "/" in source:  # e.g. usr/local: inside the old /usr, goes with it
            continue
        p = phys / source
        if p.is_symlink() and os.readlink(p) == link:
            todo.append((p, Item(f"{shown}/{source}", "symlink")))
        elif p.exists() or p.is_symlink():
            kept.append(f"{shown}/{source} (not the symlink the conversion left)")
    for name in ROOT_KERNEL_LINKS:
        p = phys / name
        if p.is_symlink():
            todo.append((p, Item(f"{shown}/{name}", "symlink")))
    boot = boot_dir(sysroot, live)
    for pattern in BOOT_GLOBS:
        for p in sorted(boot.glob(pattern)):
            if p.is_file() and not p.is_symlink():
                todo.append((p, Item(str(p), "file", p.stat().st_blocks * 512)))
    return todo, kept


def remove(sysroot: Path, *, live: bool, force: bool = False, dry_run: bool = False) -> Report:
    preflight(sysroot, live, force)
    phys = physical_root(sysroot, live)
    trash = phys / TRASH
    todo, kept = plan(sysroot, live)
    report = Report(items=[i for _, i in todo], kept=kept, dry_run=dry_run)
    report.freed_bytes = sum(i.bytes for i in report.items)
    leftover = trash.exists() and any(trash.iterdir())
    if not todo and not leftover:
        raise NothingToDo("cleanup --old-system: the old system is already gone")
    if dry_run:
        return report
    trees = [p for p, i in todo if i.kind == "tree"]
    mounted = _mounts_below(trees)
    if mounted:
        raise RetrofitError(
            f"cleanup --old-system: something is mounted inside the old system: {mounted[0]}",
            hint="unmount it first; nothing was removed",
        )
    # 1. rename the old trees out of the way (atomic, same filesystem), 2. record,
    # 3. delete: a crash leaves either the old system or a trash to finish
    trash.mkdir(parents=True, exist_ok=True)
    for p, item in todo:
        if item.kind == "tree":
            dest = trash / p.name
            if dest.exists():
                dest = trash / f"{p.name}.{time.time_ns()}"
            os.rename(p, dest)
            log.info("cleanup --old-system: %s moved aside", item.path)
    atomic.write_json(
        sysroot / RECORD,
        {"removed": time.time(), "items": [asdict(i) for i in report.items]},
    )
    with trial.writable_boot(sysroot):
        for p, item in todo:
            if item.kind in ("symlink", "file") and (p.is_symlink() or p.exists()):
                p.unlink()
    for child in sorted(trash.iterdir()):
        if child.is_symlink() or not child.is_dir():
            child.unlink()
        else:
            shutil.rmtree(child)
    trash.rmdir()
    if live and (sysroot / "boot/grub").is_dir():
        from grub import entries

        entries.refresh(sysroot)
    log.info(
        "cleanup --old-system: %d item(s) removed, about %d MiB freed",
        len(report.items),
        report.freed_bytes // (1024 * 1024),
    )
    return report


def removed(sysroot: Path) -> bool:
    return (sysroot / RECORD).exists()
