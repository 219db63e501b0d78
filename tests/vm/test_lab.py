"""The VM lab itself: the image builds (cached), boots from a copy-on-write overlay
under plain QEMU, is healthy, reboots to a new boot_id, and two VMs from one image
do not share changes. One test drives Vagrant (vagrant-libvirt) via python-vagrant."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from retrofit.run import output
from retrofit.vm.machine import Machine

pytestmark = pytest.mark.vm

MARKER = "/var/lib/retrofit-lab-marker"


def test_image_is_cached_qcow2(lab_image: Path) -> None:
    from retrofit.vm.image import build_image

    started = time.monotonic()
    assert build_image() == lab_image
    assert time.monotonic() - started < 5, "a cached image must not be rebuilt"
    info = json.loads(output(["qemu-img", "info", "--output=json", str(lab_image)]))
    assert info["format"] == "qcow2"
    assert info["virtual-size"] >= 8 * 1024**3
    assert "backing-filename" not in info


def test_uname(vm: Machine) -> None:
    r = vm.cmd("uname -r")
    assert r.stdout.strip().endswith("-amd64")


def test_system_running_nothing_failed(vm: Machine) -> None:
    state = vm.system_state()
    assert state in ("running", "degraded"), state
    assert vm.failed_units() == []


def test_guest_has_lab_conventions(vm: Machine) -> None:
    r = vm.cmd(
        "cat /proc/cmdline; sudo -n true && echo SUDO-OK; findmnt -no SOURCE /;"
        " python3 -c 'import apt, gi, parted, sh, yaml, merge3; print(\"PY-OK\")'; ostree --version"
    )
    cmdline = r.stdout.splitlines()[0]
    assert "root=UUID=" in cmdline and "console=ttyS0" in cmdline
    assert "SUDO-OK" in r.stdout and "PY-OK" in r.stdout
    assert "/dev/vda" in r.stdout


def test_copy_in_and_install(vm: Machine, tmp_path: Path) -> None:
    src = tmp_path / "payload"
    src.mkdir()
    (src / "hello.txt").write_text("hello from the host\n")
    vm.copy_in(src, "/opt/payload")
    assert vm.cmd("cat /opt/payload/hello.txt").stdout == "hello from the host\n"
    from retrofit.vm import scenario

    deb = scenario.build_deb(Path(__file__).resolve().parents[2])
    installed = vm.install_deb(deb)
    assert installed.split() == ["retrofit", deb.name.split("_")[1]], installed
    assert vm.cmd("/usr/bin/retrofit --version", check=False).returncode == 0


def test_reboot_changes_boot_id_and_keeps_disk(vm: Machine, lab: Any) -> None:
    old = vm.boot_id()
    vm.cmd(f"echo {old} | sudo tee {MARKER} >/dev/null && sync")
    new = vm.reboot()
    lab.timings["qemu reboot to new boot_id"] = vm.last_reboot_seconds or 0
    assert new and new != old
    assert vm.cmd(f"cat {MARKER}").stdout.strip() == old
    assert vm.system_state() in ("running", "degraded")
    assert vm.failed_units() == []


def test_second_vm_does_not_see_first_vms_changes(vm: Machine, lab_image: Path, lab: Any) -> None:
    from retrofit.vm import qemu

    vm.cmd(f"echo first | sudo tee {MARKER}.cow >/dev/null && sync")
    mtime = lab_image.stat().st_mtime
    with qemu.boot(image=lab_image) as second:
        lab.track(second)
        try:
            assert second.cmd(f"test -e {MARKER}.cow", check=False).returncode == 1
            assert second.cmd(f"test -e {MARKER}", check=False).returncode == 1
            assert second.boot_id() != vm.boot_id()
        finally:
            lab.untrack(second)
    assert lab_image.stat().st_mtime == mtime, "the cached image itself was written"
    assert vm.cmd(f"cat {MARKER}.cow").stdout.strip() == "first"


def test_uefi_image_with_separate_boot(lab: Any) -> None:
    """The UEFI variant (ESP + grub-efi on the removable path, /boot on its own
    partition) boots under OVMF and survives a reboot."""
    from retrofit.vm import qemu
    from retrofit.vm.image import ImageSpec

    started = time.monotonic()
    with qemu.boot(spec=ImageSpec(firmware="uefi", separate_boot=True)) as vm:
        lab.track(vm)
        try:
            lab.timings["uefi image (cached) + boot to ssh"] = time.monotonic() - started
            r = vm.cmd(
                "test -d /sys/firmware/efi && echo EFI;"
                " findmnt -no SOURCE /boot; findmnt -no SOURCE /boot/efi; cat /proc/cmdline"
            )
            lines = r.stdout.splitlines()
            assert lines[:3] == ["EFI", "/dev/vda2", "/dev/vda1"], lines
            assert "root=UUID=" in lines[3]
            old = vm.boot_id()
            assert vm.reboot() != old
            lab.timings["uefi reboot to new boot_id"] = vm.last_reboot_seconds or 0
            assert vm.failed_units() == []
        finally:
            lab.untrack(vm)


def test_vagrant_up_ssh_destroy(lab_image: Path, lab: Any) -> None:
    pytest.importorskip("vagrant", reason="python-vagrant is not installed (python3-vagrant)")
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (apt-get install --no-install-recommends vagrant)")
    if not list(
        Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-libvirt-*")
    ) and "vagrant-libvirt" not in output(["vagrant", "plugin", "list"]):
        pytest.skip(
            "vagrant-libvirt is not installed "
            "(apt-get install --no-install-recommends vagrant-libvirt)"
        )
    if shutil.which("libvirtd") is None or shutil.which("virsh") is None:
        pytest.skip(
            "libvirt is not installed "
            "(apt-get install --no-install-recommends libvirt-daemon-system)"
        )
    from retrofit.vm import scenario, vagrant_backend

    deb = scenario.build_deb(Path(__file__).resolve().parents[2])
    with vagrant_backend.libvirt_running():
        started = time.monotonic()
        name, url = vagrant_backend.local_box()
        vagrant_backend.prune_local_boxes(keep=name)
        machine = vagrant_backend.boot(box=name, box_url=url)
        lab.timings["vagrant up (incl. box add when new)"] = time.monotonic() - started
        domain = machine.backend.domain
        lab.track(machine)
        try:
            with machine:
                out = machine.vagrant_ssh("uname -r; cat /proc/sys/kernel/random/boot_id")
                assert "-amd64" in out
                assert machine.cmd("id -un").stdout.strip() == "vagrant"
                # The Vagrantfile installed the project's .deb (dist/, built above).
                got = machine.cmd("dpkg-query -W -f '${Version}' retrofit").stdout.strip()
                assert got == deb.name.split("_")[1], got
                machine.cmd("/usr/bin/retrofit --version")
        finally:
            lab.untrack(machine)
        states = output(["virsh", "-c", "qemu:///system", "list", "--all", "--name"]).split()
        assert domain not in states, "vagrant destroy left the domain defined"
