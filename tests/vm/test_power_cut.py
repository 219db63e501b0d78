"""Power cuts in the middle of a live ``retrofit convert`` (heavy: ``RETROFIT_VM_HEAVY=1``).

For three phases — after the commit, after the data moves, after ``ostree admin
deploy`` — each time before the journal records the phase (its worst moment): the
converter pauses at that failpoint (``RETROFIT_FAILPOINT_ACTION=pause``), QEMU is
killed (what the guest had not written out is lost) and started again on the same
disk. The machine must boot (the old system: no phase before ``bootloader`` changes
GRUB's default), the data written before must be intact, and then ``retrofit
convert`` must complete (and the deployment boot, confirmed by its trial) or
``retrofit convert --revert`` must restore the old layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from retrofit.vm import qemu, scenario

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        os.environ.get("RETROFIT_VM_HEAVY") != "1",
        reason="heavy VM matrix: set RETROFIT_VM_HEAVY=1 (about 8 minutes per phase)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
CASES = [("commit", "complete"), ("move-data", "revert"), ("deploy", "complete")]


@pytest.fixture(scope="module")
def deb() -> Path:
    return scenario.build_deb(REPO)


@pytest.mark.parametrize(("phase", "then"), CASES)
def test_power_cut_during_convert(
    phase: str, then: str, deb: Path, lab_image: Path, lab: Any
) -> None:
    vm = lab.track(qemu.boot(image=lab_image))
    try:
        vm.install_deb(deb)
        scenario.write_data(vm)
        vm.cmd(
            f"RETROFIT_FAILPOINTS={phase} RETROFIT_FAILPOINT_ACTION=pause"
            " setsid nohup retrofit convert --yes >/run/convert.log 2>&1 </dev/null &",
            sudo=True,
        )
        vm.settle(
            "cat /run/retrofit-failpoint 2>/dev/null || true",
            lambda r: r.stdout.strip() == phase,
            timeout=2400,
            what=f"the converter paused after {phase}",
        )
        seconds = vm.power_cycle()
        lab.timings[f"power cut after {phase}: boot to ssh"] = seconds
        cmdline = vm.cmd("cat /proc/cmdline").stdout
        assert "ostree=" not in cmdline, f"expected the old system: {cmdline}"
        scenario.check_data(vm)
        st = vm.status_json()
        assert st["conversion"]["state"] != "complete", st["conversion"]
        if then == "complete":
            vm.cmd("sudo retrofit convert --yes", timeout=2400)
            g = scenario.reboot_settled(vm)
            assert g.trial["kind"] == "convert", g.trial
            scenario.booted_checks(vm)
            scenario.check_data(vm)
        else:
            vm.cmd("sudo retrofit convert --revert", timeout=1200)
            for path in ("/var", "/home", "/srv", "/opt"):
                r = vm.cmd(f"test -d {path} && ! test -L {path}", check=False)
                assert r.returncode == 0, f"{path} is not back in place"
            scenario.check_data(vm)
            vm.reboot()
            assert "ostree=" not in vm.cmd("cat /proc/cmdline").stdout
            scenario.check_data(vm)
            assert vm.failed_units() == [], vm.failed_units()
    finally:
        lab.untrack(vm)
        vm.destroy()
