"""The fleet rollout, for real: playbooks/convert.yml against two VMs of the lab.

1. A fresh pair, retrofit installed from the project's .deb: convert.yml converts
   the canary, reboots it into its deployment and verifies the trial boot, then
   the second VM; both run their deployment with a good trial and a healthy boot.
   A second run changes nothing (PLAY RECAP changed=0, no reboot).
2. Another fresh pair, with a failing /etc/retrofit/health.d/ script on the canary
   before the conversion: its trial boot fails, it falls back to the old system by
   itself, the play reverts the conversion and fails the host, and the second VM
   is never converted nor rebooted.

Heavy (TCG: a conversion takes ~5 min, a reboot ~1.5 min; the whole module
~45 min): runs only with RETROFIT_VM_HEAVY=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from retrofit.vm import scenario
from retrofit.vm.machine import Machine

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        os.environ.get("RETROFIT_VM_HEAVY") != "1",
        reason="heavy (two VMs, two conversions, ~45 min under TCG): set RETROFIT_VM_HEAVY=1",
    ),
]

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
NAMES = ("canary", "second")
FAILING_SCRIPT = (
    "#!/bin/sh\necho 'injected by test_ansible: this boot is not healthy' >&2\nexit 1\n"
)
RECAP = re.compile(
    r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)


def _install(vm: Machine, deb: Path) -> None:
    vm.cmd("sudo apt-get update -qq", check=False, timeout=600)
    vm.install_deb(deb)
    assert vm.cmd("systemctl is-enabled retrofit-health.service", check=False).stdout.strip() == (
        "enabled"
    ), "the .deb did not enable retrofit-health.service"


@pytest.fixture
def pair(lab_image: Path, lab: Any) -> Iterator[dict[str, Machine]]:
    """Two fresh VMs from the lab image, retrofit installed from the .deb."""
    if shutil.which("ansible-playbook") is None:
        pytest.skip("ansible-playbook is not installed (apt-get install ansible)")
    from retrofit.vm import qemu

    deb = scenario.build_deb(REPO)
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(qemu.boot, image=lab_image) for _ in NAMES]
        vms: dict[str, Machine] = {}
        errors = []
        for name, fut in zip(NAMES, futures):
            try:
                vms[name] = lab.track(fut.result())
            except Exception as exc:  # boot the other one's cleanup below
                errors.append(exc)
    try:
        if errors:
            raise errors[0]
        lab.timings.setdefault("ansible: boot two VMs", time.monotonic() - started)
        for vm in vms.values():
            _install(vm, deb)
        yield vms
    finally:
        for vm in vms.values():
            lab.untrack(vm)
            vm.destroy()


def _inventory(vms: dict[str, Machine], path: Path) -> Path:
    hosts = {}
    for name, vm in vms.items():
        t = vm.backend.ssh_target()
        hosts[name] = {
            "ansible_host": t.host,
            "ansible_port": t.port,
            "ansible_user": t.user,
            "ansible_ssh_private_key_file": str(t.key),
            # a fresh VM on a port an earlier one had: never trust known_hosts
            "ansible_ssh_common_args": "-o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes",
        }
    path.write_text(json.dumps({"all": {"hosts": hosts}}, indent=2))
    return path


def _playbook(inventory: Path, log: Path, *extra: str, timeout: float = 5400) -> tuple[int, str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(PLAYBOOKS / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    started = time.monotonic()
    r = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(PLAYBOOKS / "convert.yml"), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = r.stdout + r.stderr
    log.write_text(out)
    print(
        f"[ansible] {log.name}: rc={r.returncode} in {time.monotonic() - started:.0f}s", flush=True
    )
    return r.returncode, out


def _recap(out: str) -> dict[str, dict[str, int]]:
    tail = out[out.rfind("PLAY RECAP") :]
    return {
        m.group(1): {
            "ok": int(m.group(2)),
            "changed": int(m.group(3)),
            "unreachable": int(m.group(4)),
            "failed": int(m.group(5)),
        }
        for m in RECAP.finditer(tail)
    }


def _status(vm: Machine) -> dict[str, Any]:
    st: dict[str, Any] = vm.status_json()
    return st


def _assert_converted(name: str, vm: Machine) -> dict[str, Any]:
    st = _status(vm)
    where = f"{name}: {json.dumps(st, indent=1)[:3000]}"
    assert st["booted"], f"not booted into a deployment: {where}"
    assert st["deployments"][0]["checksum"] == st["booted"], where
    assert st["deployments"][0]["booted"], where
    assert (st["trial"] or {}).get("state") == "good", where
    assert (st["trial"] or {}).get("checksum") == st["booted"], where
    assert (st["health"] or {}).get("ok") is True, where
    assert (st["health"] or {}).get("booted") == st["booted"], where
    assert "ostree=" in vm.cmd("cat /proc/cmdline").stdout, where
    return st


def test_convert_rollout_then_nothing_to_do(
    pair: dict[str, Machine], lab: Any, tmp_path: Path
) -> None:
    inv = _inventory(pair, tmp_path / "inventory.json")
    started = time.monotonic()
    rc, out = _playbook(
        inv, tmp_path / "run1.log", "-e", "retrofit_canary=1", "-e", "retrofit_batch=1"
    )
    lab.timings["ansible: convert.yml, two hosts"] = time.monotonic() - started
    assert rc == 0, f"convert.yml failed (rc {rc}):\n{out[-6000:]}"
    recap = _recap(out)
    assert set(recap) == set(NAMES), recap
    for name in NAMES:
        assert recap[name]["changed"] > 0 and recap[name]["failed"] == 0, recap
    sts = {name: _assert_converted(name, vm) for name, vm in pair.items()}
    # the canary was judged good before the second host's conversion ended
    canary_done = sts["canary"]["trial"]["finished"]
    second_trial = sts["second"]["trial"]["started"]
    assert canary_done < second_trial, (
        f"the second host was converted before the canary was verified: "
        f"canary verdict {canary_done}, second trial {second_trial}"
    )

    boots = {name: vm.boot_id() for name, vm in pair.items()}
    started = time.monotonic()
    rc, out = _playbook(
        inv, tmp_path / "run2.log", "-e", "retrofit_canary=1", "-e", "retrofit_batch=1"
    )
    lab.timings["ansible: convert.yml again (nothing to do)"] = time.monotonic() - started
    assert rc == 0, f"the second run failed (rc {rc}):\n{out[-6000:]}"
    recap = _recap(out)
    assert set(recap) == set(NAMES), recap
    for name in NAMES:
        assert recap[name]["changed"] == 0 and recap[name]["failed"] == 0, (
            f"{name}: the second run changed something: {recap}\n{out[-4000:]}"
        )
    assert {name: vm.boot_id() for name, vm in pair.items()} == boots, "a host was rebooted"


def test_failing_canary_is_rolled_back_and_stops_the_rollout(
    pair: dict[str, Machine], lab: Any, tmp_path: Path
) -> None:
    canary, second = pair["canary"], pair["second"]
    canary.cmd(
        "mkdir -p /etc/retrofit/health.d && cat > /etc/retrofit/health.d/50-injected-failure"
        " && chmod 0755 /etc/retrofit/health.d/50-injected-failure",
        sudo=True,
        input=FAILING_SCRIPT.encode(),
    )
    second_boot = second.boot_id()
    inv = _inventory(pair, tmp_path / "inventory.json")
    started = time.monotonic()
    rc, out = _playbook(
        inv, tmp_path / "failing.log", "-e", "retrofit_canary=1", "-e", "retrofit_batch=1"
    )
    lab.timings["ansible: convert.yml, failing canary"] = time.monotonic() - started
    assert rc != 0, f"convert.yml should fail on the canary:\n{out[-6000:]}"
    recap = _recap(out)
    assert recap.get("canary", {}).get("failed") == 1, f"{recap}\n{out[-6000:]}"
    assert recap.get("second", {}).get("changed") == 0, f"{recap}\n{out[-6000:]}"
    assert recap.get("second", {}).get("failed") == 0, f"{recap}\n{out[-6000:]}"
    assert "50-injected-failure" in out, f"the failure reason is not reported:\n{out[-6000:]}"
    assert "rolled back" in out, out[-6000:]

    # the canary: back on its old system, the conversion undone
    st = _status(canary)
    where = json.dumps(st, indent=1)[:3000]
    assert st["booted"] is None, f"the canary still runs a deployment: {where}"
    assert st["conversion"] is None and st["deployments"] == [], f"not reverted: {where}"
    assert canary.cmd("test -e /run/ostree-booted", check=False).returncode != 0
    assert canary.cmd("test -e /ostree/repo", check=False).returncode != 0, where
    assert "ostree=" not in canary.cmd("cat /proc/cmdline").stdout

    # the second VM: never converted, never rebooted
    assert second.cmd("test -e /ostree/repo", check=False).returncode != 0, "second VM converted"
    assert second.boot_id() == second_boot, "the second VM was rebooted"
    sst = _status(second)
    assert sst["conversion"] is None and sst["deployments"] == [], sst


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-s", "-v"]))
