"""Pure logic of the boot chain: kernel-argument edits, GRUB entry titles, the
resolver mount for sandboxes, the health configuration and trial bookkeeping."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from dpkg_layer import bwrap
from grub import entries, trial
from retrofit import health
from retrofit.boot_cmd import edit_kargs
from retrofit.errors import UsageError

BASE = ["root=UUID=x", "ro", "console=tty0", "console=ttyS0,115200n8"]


def test_append_keeps_repeated_names_and_is_idempotent() -> None:
    out = edit_kargs(BASE, append=["quiet", "console=hvc0"])
    assert out == [*BASE, "quiet", "console=hvc0"]
    assert edit_kargs(out, append=["quiet"]) == out


def test_delete_exact_and_by_name() -> None:
    assert edit_kargs(BASE, delete=["console=tty0"]) == [
        "root=UUID=x",
        "ro",
        "console=ttyS0,115200n8",
    ]
    assert edit_kargs(BASE, delete=["console"]) == ["root=UUID=x", "ro"]
    with pytest.raises(UsageError):
        edit_kargs(BASE, delete=["quiet"])
    with pytest.raises(UsageError):
        edit_kargs(BASE, delete=["console=hvc0"])


def test_replace_collapses_to_one() -> None:
    assert edit_kargs(BASE, replace=["console=ttyS1"]) == ["root=UUID=x", "ro", "console=ttyS1"]
    with pytest.raises(UsageError):
        edit_kargs(BASE, replace=["quiet=1"])
    with pytest.raises(UsageError):
        edit_kargs(BASE, replace=["console"])


def _entry(d: Path, n: int, title: str) -> None:
    (d / f"ostree-{n}-debian.conf").write_text(f"title {title}\nversion {n}\noptions ro\n")


def test_entry_title_by_index(tmp_path: Path) -> None:
    d = tmp_path / trial.ENTRIES
    d.mkdir(parents=True)
    _entry(d, 2, "Debian GNU/Linux 12 (bookworm) 12.1 (ostree:0)")
    _entry(d, 1, "Debian GNU/Linux 12 (bookworm) 12.0 (ostree:1)")
    _entry(d, 3, "Debian GNU/Linux 12 (bookworm) 12.0 (ostree:10:other)")
    assert trial.entry_title(tmp_path, 0) == "Debian GNU/Linux 12 (bookworm) 12.1 (ostree:0)"
    assert trial.entry_title(tmp_path, 1) == "Debian GNU/Linux 12 (bookworm) 12.0 (ostree:1)"
    assert (
        trial.entry_title(tmp_path, 10) == "Debian GNU/Linux 12 (bookworm) 12.0 (ostree:10:other)"
    )
    assert trial.entry_title(tmp_path, 2) is None


def _dropin_default(tmp_path: Path, *, confirmed: bool, pending: str | None) -> str:
    """Run the GRUB drop-in the way grub-mkconfig sources it, against a fake /ostree
    and /boot (paths rewritten under tmp_path), and return GRUB_DEFAULT."""
    fake = tmp_path / "fs"
    (fake / "ostree/repo").mkdir(parents=True, exist_ok=True)
    (fake / "ostree/retrofit").mkdir(parents=True, exist_ok=True)
    ent = fake / "boot/loader/entries"
    ent.mkdir(parents=True, exist_ok=True)
    _entry(ent, 2, "Deb 12.1 (ostree:0)")
    _entry(ent, 1, "Deb 12.0 (ostree:1)")
    for name, on in (("boot-confirmed", confirmed),):
        p = fake / "ostree/retrofit" / name
        if on:
            p.write_text("{}")
        elif p.exists():
            p.unlink()
    pend = fake / "ostree/retrofit/trial-pending"
    if pending:
        pend.write_text(pending + "\n")
    elif pend.exists():
        pend.unlink()
    text = entries.DROPIN_TEXT.replace("/ostree/", f"{fake}/ostree/").replace(
        "/boot/loader", f"{fake}/boot/loader"
    )
    script = (
        "GRUB_DEFAULT=0\nGRUB_DISTRIBUTOR=Debian\ngrub_mkconfig_dir=/etc/grub.d\n"
        f'{text}\necho "$GRUB_DEFAULT|$GRUB_DISTRIBUTOR"'
    )
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return r.stdout.strip()


def test_dropin_default_follows_trial_state(tmp_path: Path) -> None:
    prev = "previous system (before retrofit): Debian"
    # converted, not yet proven: the old system (entry 0) stays the default
    assert _dropin_default(tmp_path, confirmed=False, pending="convert") == f"0|{prev}"
    assert _dropin_default(tmp_path, confirmed=False, pending=None) == f"0|{prev}"
    # proven: the newest deployment; during a trial of a new one: the previous one
    assert _dropin_default(tmp_path, confirmed=True, pending=None) == f"Deb 12.1 (ostree:0)|{prev}"
    assert (
        _dropin_default(tmp_path, confirmed=True, pending="deploy") == f"Deb 12.0 (ostree:1)|{prev}"
    )


def test_resolv_conf_relative_symlink(tmp_path: Path) -> None:
    if not os.path.exists("/etc/resolv.conf"):
        pytest.skip("no /etc/resolv.conf here")
    (tmp_path / "etc").mkdir()
    os.symlink("../run/systemd/resolve/stub-resolv.conf", tmp_path / "etc/resolv.conf")
    m = bwrap.resolv_conf_mounts(tmp_path)
    assert m == [
        ("ro-bind", os.path.realpath("/etc/resolv.conf"), "/run/systemd/resolve/stub-resolv.conf")
    ]
    (tmp_path / "etc/resolv.conf").unlink()
    os.symlink("/etc/elsewhere", tmp_path / "etc/resolv.conf")
    assert bwrap.resolv_conf_mounts(tmp_path) == []


def test_health_config(tmp_path: Path) -> None:
    assert health.Config.load(tmp_path).required_units == ["ssh.service"]
    p = tmp_path / health.CONF
    p.parent.mkdir(parents=True)
    p.write_text(
        "[health]\nrequired-units = a.service b.service\ntimeout = 30\nreboot-on-failure = no\n"
    )
    cfg = health.Config.load(tmp_path)
    assert cfg.required_units == ["a.service", "b.service"]
    assert cfg.timeout == 30 and cfg.reboot_on_failure is False


def test_health_scripts(tmp_path: Path) -> None:
    d = tmp_path / health.SCRIPTS
    d.mkdir(parents=True)
    (d / "10-ok").write_text("#!/bin/sh\necho fine\n")
    (d / "20-bad").write_text("#!/bin/sh\necho 'disk too full' >&2\nexit 3\n")
    (d / "30-not-executable").write_text("#!/bin/sh\nexit 1\n")
    (d / "40-slow").write_text("#!/bin/sh\nsleep 5\n")
    for n in ("10-ok", "20-bad", "40-slow"):
        (d / n).chmod(0o755)
    checks = health._scripts(tmp_path, timeout=1)
    assert [(c.name, c.ok) for c in checks] == [
        ("script 10-ok", True),
        ("script 20-bad", False),
        ("script 40-slow", False),
    ]
    assert checks[1].detail == "exit 3: disk too full"


def test_trial_cancel_and_prepare(tmp_path: Path) -> None:
    trial.prepare(tmp_path, "deploy")
    assert trial.pending_kind(tmp_path) == "deploy"
    (tmp_path / trial.TRIAL).write_text(json.dumps({"state": "pending", "kind": "deploy"}))
    trial.cancel(tmp_path, "rollback")
    assert trial.pending_kind(tmp_path) is None
    assert trial.load(tmp_path)["state"] == "cancelled"  # type: ignore[index]
    with pytest.raises(ValueError):
        trial.prepare(tmp_path, "bogus")


def test_trial_reset_forgets_everything(tmp_path: Path) -> None:
    trial.prepare(tmp_path, "convert")
    (tmp_path / trial.TRIAL).write_text(json.dumps({"state": "good", "kind": "convert"}))
    (tmp_path / trial.CONFIRMED).write_text("{}")
    trial.reset(tmp_path)
    assert trial.pending_kind(tmp_path) is None
    assert trial.load(tmp_path) is None
    assert not (tmp_path / trial.CONFIRMED).exists()
    trial.reset(tmp_path)  # nothing left: still fine


def test_sysroot_lock_serialises_operations(tmp_path: Path) -> None:
    """The health unit waits for (then gives up on) a held lock; an operator's
    command fails at once with a clear message."""
    import fcntl
    import time

    from dpkg_layer.system import sysroot_lock
    from retrofit.errors import RetrofitError

    with sysroot_lock(tmp_path, "install") as got:
        assert got is True
        lock = next((tmp_path / "ostree/retrofit").glob("*.lock"))
        with pytest.raises(RetrofitError, match="another retrofit operation"):
            with sysroot_lock(tmp_path, "rollback"):
                pass
        t = time.monotonic()
        with sysroot_lock(tmp_path, "health", wait=0.6) as waited:
            assert waited is False
        assert time.monotonic() - t >= 0.5
    # released: taken at once, and really held while inside
    with sysroot_lock(tmp_path, "health", wait=5) as got, open(lock, "w") as other:
        assert got is True
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
