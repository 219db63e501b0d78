"""New deployments that carry /etc forward with retrofit's merge, not libostree's.

``ostree admin deploy`` makes the deployment (checkout, boot entry, origin) and
merges /etc its own file-level way; :func:`deploy_with_merge` then replaces that
/etc with :func:`retrofit.etc_merge.merge_etc` of the merge deployment's
``/usr/etc`` (BASE) and ``/etc`` (LOCAL) and the new ``/usr/etc`` (NEW): line-level
merges, users and groups merged by entry, conflicts written beside as
``.retrofit-new`` and recorded in ``/etc/.retrofit-merge-conflicts.json``.
The swap happens before the deployment is ever booted, by renames inside it.
On a host whose GRUB retrofit manages, the new deployment then boots once on trial
(``grub/trial.py``).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from grub import trial as grub_trial
from retrofit import ostree as ot
from retrofit.errors import RetrofitError
from retrofit.etc_merge import CONFLICT_RECORD, MergeReport, merge_etc, write_conflict_record
from retrofit.log import log
from retrofit.run import run


@dataclass
class DeployResult:
    deployment: ot.Deployment
    merged_from: ot.Deployment | None
    report: MergeReport | None


def merge_source(sysroot: Path, stateroot: str) -> ot.Deployment | None:
    """The deployment whose /etc is carried forward: the booted one, else the default."""
    deps = [d for d in ot.Sysroot(sysroot).deployments() if d.stateroot == stateroot]
    booted = [d for d in deps if d.booted]
    return booted[0] if booted else (deps[0] if deps else None)


def replace_etc(new_dir: Path, merged_from: ot.Deployment) -> MergeReport:
    old = Path(merged_from.path)
    # beside the deployment (its root is immutable), on the same filesystem
    out = new_dir.with_name(new_dir.name + ".etc-merge")
    if out.exists():
        shutil.rmtree(out)
    report = merge_etc(old / "usr/etc", old / "etc", new_dir / "usr/etc", out, fsync=True)
    if report.conflicts:
        write_conflict_record(report, out / CONFLICT_RECORD)
    # deployment roots are immutable; lift it for the two renames
    run(["chattr", "-i", str(new_dir)])
    try:
        ostree_etc = new_dir.with_name(new_dir.name + ".etc-ostree")
        (new_dir / "etc").rename(ostree_etc)
        out.rename(new_dir / "etc")
    finally:
        run(["chattr", "+i", str(new_dir)])
    shutil.rmtree(ostree_etc)
    return report


def deploy_with_merge(
    sysroot: Path,
    stateroot: str,
    ref: str,
    *,
    kargs: Sequence[str] | None = None,
    origin_file: Path | None = None,
    trial: bool = True,
) -> DeployResult:
    merged_from = merge_source(sysroot, stateroot)
    on_trial = trial and grub_trial.enabled(sysroot)
    if on_trial:
        # the menu libostree writes below keeps the previous deployment the default
        grub_trial.prepare(sysroot, "deploy")
    try:
        ot.deploy(sysroot, stateroot, ref, kargs, origin_file)
        new = ot.Sysroot(sysroot).deployments()[0]
        if new.stateroot != stateroot:
            raise RetrofitError(f"deploy: the new deployment of {ref} is not the default")
        report = None
        if merged_from is not None:
            report = replace_etc(Path(new.path), merged_from)
        if on_trial:
            grub_trial.begin(sysroot, "deploy", merged_from)
    except BaseException:
        if on_trial:
            grub_trial.abort(sysroot)
        raise
    if merged_from is not None and report is not None:
        log.info(
            "deploy: /etc merged from %s: %d merged line by line, %d conflicts",
            merged_from.name,
            len(report.merged),
            len(report.conflicts),
        )
        for item in report.conflicts:
            log.warning("deploy: /etc conflict: %s (%s)", item.path, item.detail)
    return DeployResult(new, merged_from, report)
