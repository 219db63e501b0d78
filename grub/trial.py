"""Trial boots: every new deployment boots once on probation, and the machine falls
back by itself when it does not prove healthy.

Debian's GRUB has no boot counting and no ``blscfg``, but it does have a one-shot
``next_entry`` in ``/boot/grub/grubenv`` (``00_header`` reads and clears it on
every boot). The scheme:

* Before a new deployment is written, :func:`prepare` writes the marker
  ``/ostree/retrofit/trial-pending`` (``convert`` or ``deploy``). The GRUB drop-in
  (``grub/entries.py``) reads it every time ``grub-mkconfig`` runs, libostree's runs
  included, and keeps the *previous* system the default entry while it exists: the
  old pre-conversion system for ``convert``, ``(ostree:1)`` for ``deploy``.
* Until a converted system has once proven healthy (``/ostree/retrofit/boot-confirmed``)
  the old system stays the default, whatever happens.
* After the deployment exists, :func:`begin` points ``next_entry`` at it and records
  ``/ostree/retrofit/trial.json`` (state ``pending``).
* The next boot runs the new deployment once. ``retrofit-health.service`` runs the
  health checks (``retrofit/health.py``) and calls :func:`confirm` (marker removed,
  menu regenerated: the new deployment becomes the default) or :func:`fail`
  (previous deployment made the default, then a reboot).
* If the trial boot never gets that far (a kernel or initramfs panic — kargs carry
  ``panic=`` — or a hang the operator power-cycles), GRUB has already cleared
  ``next_entry``, so the next boot is the previous system; its health run sees a
  pending trial it did not boot and records it as failed with the reason.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrofit import atomic, layout
from retrofit import ostree as ot
from retrofit.errors import RetrofitError
from retrofit.log import log
from retrofit.run import run

TRIAL = layout.STATE_DIR / "trial.json"
PENDING = layout.STATE_DIR / "trial-pending"
# written when the converted system first proves healthy; until then the old system
# stays GRUB's default (read by the drop-in in grub/entries.py)
CONFIRMED = layout.STATE_DIR / "boot-confirmed"
GRUBENV = Path("boot/grub/grubenv")
ENTRIES = Path("boot/loader/entries")
HISTORY = 10
KINDS = ("convert", "deploy")


def enabled(sysroot: Path) -> bool:
    """Trial boots need retrofit's GRUB drop-in: a live conversion that manages
    GRUB. Offline trees and hosts converted without GRUB get none."""
    from grub import entries

    return (sysroot / entries.DROPIN).is_file() and (sysroot / "boot/grub").is_dir()


def load(sysroot: Path) -> dict[str, Any] | None:
    import json

    p = sysroot / TRIAL
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _save(sysroot: Path, data: dict[str, Any]) -> None:
    atomic.write_json(sysroot / TRIAL, data)


def prepare(sysroot: Path, kind: str) -> None:
    """Mark a trial as coming: from now on the menu keeps the previous default."""
    if kind not in KINDS:
        raise ValueError(kind)
    p = sysroot / PENDING
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(kind + "\n")
    os.replace(tmp, p)


def abort(sysroot: Path) -> None:
    """Undo :func:`prepare` (the deployment was not made)."""
    for p in (sysroot / PENDING,):
        if p.exists():
            p.unlink()
    set_next_entry(sysroot, None)


def reset(sysroot: Path) -> None:
    """Forget every trial (``convert --revert``): marker, record, confirmation."""
    abort(sysroot)
    for rel in (TRIAL, CONFIRMED):
        if (sysroot / rel).exists():
            (sysroot / rel).unlink()


def pending_kind(sysroot: Path) -> str | None:
    try:
        return (sysroot / PENDING).read_text().strip() or None
    except OSError:
        return None


_TITLE = re.compile(r"^title\s+(.*\S)\s*$", re.M)


def entry_title(sysroot: Path, index: int) -> str | None:
    """The GRUB menu title of the deployment at ``index`` (15_ostree titles entries
    with the BLS title, which ends in ``(ostree:N)`` or ``(ostree:N:stateroot)``)."""
    d = sysroot / ENTRIES
    if not d.is_dir():
        return None
    for conf in sorted(d.glob("ostree-*.conf")):
        m = _TITLE.search(conf.read_text(errors="replace"))
        if m and re.search(rf"\(ostree:{index}[):]", m.group(1)):
            return m.group(1)
    return None


@contextmanager
def writable_boot(sysroot: Path) -> Iterator[None]:
    """A booted deployment sees /boot read-only (the initramfs mounted the root
    ``ro`` and only /sysroot, /etc and /var are remounted); lift that for a write, as
    libostree does for its own, and put it back."""
    boot = sysroot / "boot"
    ro = boot.is_dir() and bool(os.statvfs(boot).f_flag & os.ST_RDONLY)
    if ro:
        run(["mount", "-o", "remount,bind,rw", str(boot)])
    try:
        yield
    finally:
        if ro:
            run(["mount", "-o", "remount,bind,ro", str(boot)], ok=(0, 32))


def set_next_entry(sysroot: Path, title: str | None) -> None:
    env = sysroot / GRUBENV
    if not env.parent.is_dir():
        return
    with writable_boot(sysroot):
        if title is None:
            if env.exists():
                run(["grub-editenv", str(env), "unset", "next_entry"])
            return
        if not env.exists():
            run(["grub-editenv", str(env), "create"])
        run(["grub-editenv", str(env), "set", f"next_entry={title}"])


def next_entry(sysroot: Path) -> str | None:
    env = sysroot / GRUBENV
    if not env.exists():
        return None
    r = run(["grub-editenv", str(env), "list"])
    for line in r.stdout.splitlines():
        if line.startswith("next_entry="):
            return line.split("=", 1)[1] or None
    return None


@dataclass(frozen=True)
class Target:
    checksum: str | None  # None: the old, pre-conversion system
    serial: int | None

    @staticmethod
    def of(d: ot.Deployment | None) -> Target:
        return Target(d.checksum, d.serial) if d is not None else Target(None, None)

    def matches(self, d: ot.Deployment | None) -> bool:
        if d is None:
            return self.checksum is None
        return (d.checksum, d.serial) == (self.checksum, self.serial)


def begin(sysroot: Path, kind: str, previous: ot.Deployment | None) -> dict[str, Any]:
    """The newest deployment (index 0) boots next, once, on trial."""
    deps = ot.Sysroot(sysroot).deployments()
    if not deps:
        raise RuntimeError("trial: no deployment to try")
    new = deps[0]
    title = entry_title(sysroot, 0)
    if title is None:
        raise RuntimeError(f"trial: no GRUB entry for the new deployment in {sysroot / ENTRIES}")
    set_next_entry(sysroot, title)
    old = load(sysroot) or {}
    history = ([old] if old.get("state") else []) + list(old.get("history", []))
    data = {
        "apiVersion": 1,
        "state": "pending",
        "kind": kind,
        "checksum": new.checksum,
        "serial": new.serial,
        "title": title,
        "previous": {"checksum": previous.checksum, "serial": previous.serial}
        if previous is not None
        else None,
        "reason": "",
        "started": time.time(),
        "finished": None,
        "history": [{k: v for k, v in h.items() if k != "history"} for h in history][:HISTORY],
    }
    _save(sysroot, data)
    log.info("trial: the next boot tries %r once; the previous system stays the default", title)
    return data


def _finish(sysroot: Path, state: str, reason: str, keep_marker: bool = False) -> dict[str, Any]:
    data = load(sysroot) or {}
    data.update(state=state, reason=reason, finished=time.time())
    _save(sysroot, data)
    p = sysroot / PENDING
    if p.exists() and not keep_marker:
        p.unlink()
    return data


def confirm(sysroot: Path) -> dict[str, Any]:
    """The trial deployment is healthy: it becomes the default entry."""
    from grub import entries

    # the menu first, the record last: "good" means the deployment *is* the default
    # (a rollback or reboot right after must not race a half-done regeneration)
    if (sysroot / PENDING).exists():
        (sysroot / PENDING).unlink()
    if not (sysroot / CONFIRMED).exists():
        atomic.write_json(sysroot / CONFIRMED, {"confirmed": time.time()})
    entries.refresh(sysroot)
    data = _finish(sysroot, "good", "")
    log.info("trial: the deployment is healthy and now the default boot entry")
    return data


def fail(sysroot: Path, reason: str, booted: ot.Deployment | None) -> dict[str, Any]:
    """The trial failed: make the previous system the default again for good.

    If that cannot be done (``/boot`` not writable, say), the pending marker stays:
    the menu written when the deployment was made already boots the previous one by
    default, so the machine still falls back."""
    from grub import entries

    data = load(sysroot) or {}
    kind = pending_kind(sysroot)
    set_next_entry(sysroot, None)
    prev = data.get("previous")
    deps = ot.Sysroot(sysroot).deployments()
    target = None
    if booted is not None and not Target(data.get("checksum"), data.get("serial")).matches(booted):
        target = booted  # we came back on it: keep it
    elif prev:
        target = next(
            (d for d in deps if (d.checksum, d.serial) == (prev["checksum"], prev["serial"])),
            None,
        )
    # the marker goes first: the menu regenerated below must default to index 0
    if (sysroot / PENDING).exists():
        (sysroot / PENDING).unlink()
    try:
        if target is not None and target.index != 0:
            from dpkg_layer import ostreeops

            ostreeops.reorder_deployments(sysroot, target)  # libostree rewrites the menu
        elif data.get("kind") == "convert":
            entries.refresh(sysroot)  # the old system stays the default
    except RetrofitError as exc:
        if kind is not None:
            prepare(sysroot, kind)
        reason += (
            f"; making the previous deployment the default failed ({exc}):"
            " GRUB still boots it by default, while the trial's marker stays"
        )
        restored = True
    else:
        restored = False
    data = _finish(sysroot, "failed", reason, keep_marker=restored)
    log.error("trial failed: %s", reason)
    return data


def cancel(sysroot: Path, reason: str) -> None:
    """Drop a pending trial that will not happen (e.g. ``retrofit rollback`` before
    the reboot): the marker goes, so the menu's default follows the deployment order."""
    if pending_kind(sysroot) is None:
        return
    abort(sysroot)
    data = load(sysroot)
    if data and data.get("state") == "pending":
        data.update(state="cancelled", reason=reason, finished=time.time())
        _save(sysroot, data)
