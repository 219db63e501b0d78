"""The boot-chain matrix beyond the default run (heavy: ``RETROFIT_VM_HEAVY=1``):
the main scenario (conversion, trial boot, previous-system entry, kargs, install,
rollback, cleanup --old-system; without the fallback pair, which the default run
carries) on a UEFI (OVMF) image with GPT and ``/boot`` on its own partition, and on
a BIOS image with a separate ``/boot``, and on a BIOS image whose initramfs comes from
dracut (ostree-boot's ``98ostree`` module) instead of initramfs-tools."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from retrofit import rehearse
from retrofit.vm import scenario
from retrofit.vm.image import ImageSpec

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        os.environ.get("RETROFIT_VM_HEAVY") != "1",
        reason="heavy VM matrix: set RETROFIT_VM_HEAVY=1 (about 15 minutes per image)",
    ),
]

SPECS = {
    "uefi-gpt-separate-boot": ImageSpec(firmware="uefi", separate_boot=True),
    "bios-msdos-separate-boot": ImageSpec(firmware="bios", separate_boot=True),
    "bios-msdos-dracut": ImageSpec(firmware="bios", initramfs="dracut"),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_scenario_on(name: str, vm_host: None) -> None:
    repo = Path(__file__).resolve().parents[2]
    report = scenario.rehearse_vm(scenario.build_deb(repo), spec=SPECS[name], fallbacks=False)
    print("\n" + rehearse.render(report), flush=True)
    failed = [s for s in report["steps"] if not s["ok"]]
    assert report["ok"] and not failed, f"{name}: {failed[0]['step']}: {failed[0]['detail']}"
