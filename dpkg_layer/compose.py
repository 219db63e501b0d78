"""Build a commit: the base checked out as hardlinks, packages changed in the
sandbox, the result committed as a child of the base (only new objects written)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gi.repository import GLib

from dpkg_layer import accounts, dpkgrun, ostreeops, rofiles, varstate
from grub import initramfs
from retrofit import dpkgdb
from retrofit import ostree as ot
from retrofit.log import log


@dataclass
class Composed:
    commit: ostreeops.CommitResult
    installed: dict[str, dpkgdb.Package]
    var_lines: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    initramfs: list[str] = field(default_factory=list)  # kernels rebuilt, with why

    @property
    def checksum(self) -> str:
        return self.commit.checksum


@dataclass(frozen=True)
class Job:
    """What to do to the checkout: a dpkg run (purge, then install in batches) or
    a dist-upgrade with apt-get (``apt_upgrade``: the lists, archives and apt
    configuration to use)."""

    purge: Sequence[str] = ()
    batches: Sequence[Sequence[Path]] = ()
    apt_upgrade: tuple[Path, Path, Path] | None = None  # lists, archives, etc/apt
    tmpfiles: str = varstate.LAYER_TMPFILES
    keep_tmpfiles: bool = False
    # no packages change: only the initramfs is rebuilt (``retrofit initramfs``)
    packages: bool = True
    force_initramfs: bool = False


def compose(
    repo: ot.Repo,
    base: str,
    work: Path,
    job: Job,
    *,
    running_etc: Path,
    image_etc: Path,
    subject: str,
    metadata: Mapping[str, GLib.Variant],
    verb: str,
) -> Composed:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    tree = work / "tree"
    devino = ostreeops.checkout_hardlinks(repo, base, tree)
    before_db = dpkgdb.installed(tree / dpkgrun.DATABASE)
    seeded = accounts.seed(tree / "usr/etc", running_etc, image_etc)
    sb = dpkgrun.Sandbox.prepare(tree, work / "mnt", work)
    timings["checkout"] = time.monotonic() - t0
    t0 = time.monotonic()
    with rofiles.copyup_mount(tree, sb.mnt):
        var_before = sb.snapshot_var(verb)
        if not job.packages:
            out = ""
        elif job.apt_upgrade is not None:
            lists, archives, etc_apt = job.apt_upgrade
            extra = [
                ("ro-bind", str(lists), "/run/retrofit/lists"),
                ("bind", str(archives), "/run/retrofit/archives"),
                ("ro-bind", str(etc_apt), "/run/retrofit/etc-apt"),
            ]
            out = sb.run(dpkgrun.apt_upgrade_script(), extra=extra, what="apt-get dist-upgrade",
                         verb=verb)  # fmt: skip
        else:
            debs = [p for batch in job.batches for p in batch]
            out = sb.run(dpkgrun.dpkg_script(job.purge, job.batches), debs=debs, what="dpkg",
                         verb=verb)  # fmt: skip
        log.debug("%s", out)
        var_after = varstate.snapshot(sb.var)
    sb.remove_mountpoints()
    accounts.unseed(tree / "usr/etc", seeded)
    installed = dpkgrun.check_database(tree, verb)
    changed = [
        n for n, p in installed.items() if n not in before_db or before_db[n].version != p.version
    ]
    dpkgrun.fix_bytecode(tree, changed)
    lines, skipped = varstate.carry(
        sb.var, tree, var_before, var_after,
        "# Written by retrofit: what packages created under /var (made at boot).",
    )  # fmt: skip
    for path in skipped:
        log.debug("%s: not carried into the commit: %s", verb, path)
    varstate.write_lines(tree, job.tmpfiles, lines, keep_existing=job.keep_tmpfiles)
    timings["dpkg"] = time.monotonic() - t0
    t0 = time.monotonic()
    rebuilt = initramfs.refresh(tree, running_etc, work, verb, force=job.force_initramfs)
    if rebuilt:
        timings["initramfs"] = time.monotonic() - t0
    t0 = time.monotonic()
    result = ostreeops.commit_dir(
        repo, tree, parent=base, subject=subject, metadata=metadata, devino=devino
    )
    timings["commit"] = time.monotonic() - t0
    log.info(
        "%s: commit %s (%d new file objects, %d new metadata objects)",
        verb,
        result.checksum[:12],
        result.content_written,
        result.metadata_written,
    )
    return Composed(result, installed, lines, timings, rebuilt)
