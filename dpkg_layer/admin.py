"""Rollback (reorder deployments) and cleanup (old deployments, unreferenced
objects, leftovers of interrupted runs, local .deb files nothing requests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dpkg_layer import engine, ostreeops
from dpkg_layer import origin as originmod
from dpkg_layer.system import System, remove_tree, stale_workdirs
from retrofit import ostree as ot
from retrofit.errors import NothingToDo, RetrofitError
from retrofit.log import log


def rollback_target(deps: list[ot.Deployment]) -> ot.Deployment | None:
    """rpm-ostree's rule: with a pending deployment (default is not the booted one),
    go back to the booted one; otherwise the second deployment becomes the default."""
    if len(deps) < 2:
        return None
    booted = next((d for d in deps if d.booted), None)
    if booted is not None and booted.index != 0:
        return booted
    return deps[1]


def rollback(system: System) -> ot.Deployment:
    deps = ot.Sysroot(system.sysroot).deployments()
    target = rollback_target(deps)
    if target is None:
        raise RetrofitError(
            "rollback: there is no other deployment to roll back to",
            hint="retrofit status lists the deployments",
        )
    from grub import trial

    # a deployment waiting for its trial boot is not the one to fall back to
    trial.cancel(system.sysroot, f"rollback to {target.name} before the trial boot")
    ostreeops.reorder_deployments(system.sysroot, target)
    new = ot.Sysroot(system.sysroot).deployments()[0]
    if (new.checksum, new.serial) != (target.checksum, target.serial):
        raise RetrofitError("rollback: the deployment order did not change")
    return new


@dataclass
class CleanupReport:
    removed_deployments: list[str] = field(default_factory=list)
    removed_workdirs: list[str] = field(default_factory=list)
    removed_local_debs: list[str] = field(default_factory=list)
    removed_downloads: int = 0
    objects_before: int = 0
    objects_after: int = 0


def keep_set(deps: list[ot.Deployment]) -> set[int]:
    """Indexes kept: the default, the booted one, and the rollback."""
    keep = {0} if deps else set()
    booted = next((d for d in deps if d.booted), None)
    if booted is not None:
        keep.add(booted.index)
    target = rollback_target(deps)
    if target is not None:
        keep.add(target.index)
    return keep


def cleanup(system: System, *, downloads: bool = False) -> CleanupReport:
    rep = CleanupReport(objects_before=ostreeops.object_count(system.repo_path))
    deps = ot.Sysroot(system.sysroot).deployments()
    keep = keep_set(deps)
    drop = [d for d in deps if d.index not in keep]
    for d in drop:
        rep.removed_deployments.append(d.name)
    if drop:
        ostreeops.undeploy(system.sysroot, [d.index for d in drop])
    for w in stale_workdirs(system):
        remove_tree(w)
        rep.removed_workdirs.append(str(w))
    ostreeops.set_refs(
        system.repo(), {k: v for k, v in engine.base_pins(system).items() if v is None}
    )
    ostreeops.admin_cleanup(system.sysroot)
    # local .deb files no remaining deployment requests
    wanted: set[str] = set()
    for d in ot.Sysroot(system.sysroot).deployments():
        try:
            wanted |= {p.sha256 for p in originmod.from_origin(d.origin).local_packages}
        except RetrofitError:
            continue
    if system.local_store.is_dir():
        for f in system.local_store.glob("*.deb"):
            if f.stem not in wanted:
                f.unlink()
                rep.removed_local_debs.append(f.name)
    if downloads:
        archives = Path(system.cache) / "debs"
        if archives.is_dir():
            for f in archives.glob("*.deb"):
                f.unlink()
                rep.removed_downloads += 1
    rep.objects_after = ostreeops.object_count(system.repo_path)
    if not (
        rep.removed_deployments
        or rep.removed_workdirs
        or rep.removed_local_debs
        or rep.removed_downloads
        or rep.objects_after != rep.objects_before
    ):
        raise NothingToDo("cleanup: nothing to clean up")
    log.info(
        "cleanup: %d deployment(s) removed, objects %d -> %d",
        len(rep.removed_deployments),
        rep.objects_before,
        rep.objects_after,
    )
    return rep
