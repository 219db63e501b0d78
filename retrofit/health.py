"""``retrofit health``: is this boot healthy? And, at boot (``--boot``, run by
``retrofit-health.service``), settle a pending trial boot (``grub/trial.py``).

Healthy means: systemd finished starting up (``running`` or ``degraded``) within the
timeout, none of the required units failed, and every executable in
``/etc/retrofit/health.d/`` exits 0. Configuration: ``/etc/retrofit/health.conf``::

    [health]
    # units that must not have failed (space separated)
    required-units = ssh.service
    # seconds to wait for start-up to finish
    timeout = 900
    # seconds each health.d script may take
    script-timeout = 120
    # reboot into the previous deployment when a trial boot fails
    reboot-on-failure = yes
"""

from __future__ import annotations

import configparser
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grub import trial
from retrofit import atomic, layout
from retrofit import ostree as ot
from retrofit.log import log

CONF = Path("etc/retrofit/health.conf")
SCRIPTS = Path("etc/retrofit/health.d")
RECORD = layout.STATE_DIR / "health.json"
# How long the health unit waits for a running retrofit operation before settling.
LOCK_WAIT = 300.0


@dataclass
class Config:
    required_units: list[str] = field(default_factory=lambda: ["ssh.service"])
    timeout: float = 900.0
    script_timeout: float = 120.0
    reboot_on_failure: bool = True

    @staticmethod
    def load(root: Path) -> Config:
        cfg = Config()
        p = root / CONF
        if not p.exists():
            return cfg
        cp = configparser.ConfigParser()
        cp.read_string(p.read_text())
        if not cp.has_section("health"):
            return cfg
        s = cp["health"]
        if "required-units" in s:
            cfg.required_units = s["required-units"].split()
        cfg.timeout = s.getfloat("timeout", cfg.timeout)
        cfg.script_timeout = s.getfloat("script-timeout", cfg.script_timeout)
        cfg.reboot_on_failure = s.getboolean("reboot-on-failure", cfg.reboot_on_failure)
        return cfg


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


def _system_state(timeout: float) -> Check:
    try:
        r = subprocess.run(
            ["systemctl", "is-system-running", "--wait"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        state = r.stdout.strip() or r.stderr.strip()
    except subprocess.TimeoutExpired:
        return Check("system", False, f"start-up did not finish within {timeout:.0f}s")
    except FileNotFoundError:
        return Check("system", False, "systemctl not found")
    return Check("system", state in ("running", "degraded"), f"system is {state}")


def _required_units(units: list[str]) -> list[Check]:
    out = []
    for unit in units:
        r = subprocess.run(
            ["systemctl", "is-failed", "--quiet", unit], capture_output=True, text=True
        )
        failed = r.returncode == 0
        out.append(Check(f"unit {unit}", not failed, "failed" if failed else "not failed"))
    return out


def _scripts(root: Path, timeout: float) -> list[Check]:
    d = root / SCRIPTS
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        if not p.is_file() or not os.access(p, os.X_OK) or p.name.startswith("."):
            continue
        try:
            r = subprocess.run([str(p)], capture_output=True, text=True, timeout=timeout)
            text = (r.stdout + r.stderr).strip().splitlines()
            detail = f"exit {r.returncode}" + (f": {text[-1]}" if text else "")
            out.append(Check(f"script {p.name}", r.returncode == 0, detail))
        except subprocess.TimeoutExpired:
            out.append(Check(f"script {p.name}", False, f"timed out after {timeout:.0f}s"))
        except OSError as exc:
            out.append(Check(f"script {p.name}", False, str(exc)))
    return out


def check(root: Path, cfg: Config) -> list[Check]:
    checks = [_system_state(cfg.timeout)]
    checks += _required_units(cfg.required_units)
    checks += _scripts(root, cfg.script_timeout)
    return checks


def _describe(d: ot.Deployment | None) -> str:
    return "the old system (before retrofit)" if d is None else f"deployment {d.name}"


def record(sysroot: Path, checks: list[Check], booted: ot.Deployment | None) -> dict[str, Any]:
    data = {
        "apiVersion": 1,
        "ok": all(c.ok for c in checks),
        "finished": time.time(),
        "booted": booted.checksum if booted is not None else None,
        "checks": [asdict(c) for c in checks],
    }
    atomic.write_json(sysroot / RECORD, data)
    return data


def load_record(sysroot: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads((sysroot / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def booted_deployment(sysroot: Path) -> ot.Deployment | None:
    if not (sysroot / layout.REPO / "config").exists():
        return None
    return next((d for d in ot.Sysroot(sysroot).deployments() if d.booted), None)


@dataclass
class BootOutcome:
    checks: list[Check]
    trial: dict[str, Any] | None
    reboot: bool


def at_boot(sysroot: Path, root: Path, cfg: Config) -> BootOutcome:
    """The health run of ``retrofit-health.service``: check, record, settle the trial.

    The checks run first (they wait for start-up to finish); the trial is then settled
    under the sysroot's operation lock, so an operator's ``retrofit rollback`` or
    ``install`` at the same moment waits for it (or fails with a clear message)
    instead of racing the menu and deployment order."""
    from dpkg_layer.system import sysroot_lock

    checks = check(root, cfg)
    with sysroot_lock(sysroot, "health", wait=LOCK_WAIT) as got:
        if not got:
            log.warning("health: another retrofit operation holds the lock; settling anyway")
        return _settle(sysroot, checks, cfg)


def _settle(sysroot: Path, checks: list[Check], cfg: Config) -> BootOutcome:
    booted = booted_deployment(sysroot)
    t = trial.load(sysroot)
    pending = t is not None and t.get("state") == "pending"
    if pending and t is not None:
        target = trial.Target(t.get("checksum"), t.get("serial"))
        if not target.matches(booted):
            reason = (
                f"the trial boot of {t.get('title') or t.get('checksum')} never reported"
                f" healthy; the machine came back on {_describe(booted)}"
            )
            t = trial.fail(sysroot, reason, booted)
            pending = False
    record(sysroot, checks, booted)
    if not pending:
        return BootOutcome(checks, t, False)
    bad = [c for c in checks if not c.ok]
    if not bad:
        return BootOutcome(checks, trial.confirm(sysroot), False)
    reason = "; ".join(f"{c.name}: {c.detail}" for c in bad)
    t = trial.fail(sysroot, f"health check failed on the trial boot: {reason}", booted)
    return BootOutcome(checks, t, cfg.reboot_on_failure)


def reboot() -> None:
    log.warning("health: rebooting into the previous deployment")
    subprocess.run(["systemctl", "reboot"], check=False)
