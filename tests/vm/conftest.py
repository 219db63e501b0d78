"""Fixtures for the VM tier: the cached lab image and booted machines.

The tier runs with everything else unless deselected (``-m "not vm"``, or
RETROFIT_VM_TESTS=0); alone: ``pytest -m vm tests/vm``. It skips with a reason when
QEMU, root or mmdebstrap are missing. When a test fails, the serial console tail and the guest's
journal tail of every live VM are attached to its report.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from retrofit.log import setup as setup_logging
from retrofit.vm.machine import Machine


class Lab:
    """Live VMs (for failure diagnostics) and measured timings (for the summary)."""

    def __init__(self) -> None:
        self.live: list[Machine] = []
        self.timings: dict[str, float] = {}

    def track(self, vm: Machine) -> Machine:
        self.live.append(vm)
        return vm

    def untrack(self, vm: Machine) -> None:
        if vm in self.live:
            self.live.remove(vm)


LAB = Lab()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The tier runs by default (tools/test runs every tier this machine can run);
    # leave it out with -m "not vm" or RETROFIT_VM_TESTS=0.
    if os.environ.get("RETROFIT_VM_TESTS", "1") != "0":
        return
    skip = pytest.mark.skip(reason="RETROFIT_VM_TESTS=0: VM tests switched off")
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and LAB.live:
        for vm in list(LAB.live):
            vm.failed = True  # keep its console log after destroy
            try:
                text = vm.diagnostics(lines=40)
            except Exception as exc:  # never hide the failure itself
                text = f"(no diagnostics: {exc})"
            report.sections.append((f"VM {vm.backend.describe()}", text))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if LAB.timings:
        terminalreporter.section("VM lab timings")
        for what, seconds in LAB.timings.items():
            terminalreporter.write_line(f"{what}: {seconds:.0f}s")


def require_vm_host() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed (apt-get install qemu-utils)")
    if os.geteuid() != 0:
        pytest.skip("building the lab image needs root (loop devices, mounts)")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed")


@pytest.fixture(scope="session")
def vm_host() -> None:
    """Skips unless this machine can build and boot lab VMs."""
    require_vm_host()


@pytest.fixture(scope="session")
def lab_image() -> Path:
    """The cached BIOS lab image (built on first use: about 2 minutes cold)."""
    require_vm_host()
    setup_logging()
    import time

    from retrofit.vm.image import build_image

    started = time.monotonic()
    path = build_image()
    LAB.timings["image build (0 when cached)"] = time.monotonic() - started
    return path


@pytest.fixture(scope="session")
def lab() -> Lab:
    return LAB


@pytest.fixture(scope="module")
def vm(lab_image: Path) -> Iterator[Machine]:
    """One VM booted from a fresh overlay of the lab image, shared by a module."""
    from retrofit.vm import qemu

    machine = qemu.boot(image=lab_image)
    LAB.timings.setdefault("qemu boot to ssh", machine.boot_seconds or 0)
    LAB.track(machine)
    try:
        yield machine
    finally:
        LAB.untrack(machine)
        machine.destroy()
