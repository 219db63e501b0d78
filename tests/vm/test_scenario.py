"""The project's main proof: a live conversion of a real Debian 12 VM that boots into
its OSTree deployment, with the data written before the conversion intact.

Fresh VM from the cached BIOS lab image → retrofit from the project's .deb → data in
/home, /var/lib, /etc → ``retrofit preflight`` → ``retrofit convert --yes`` → reboot →
booted deployment (``ostree=`` on the cmdline, read-only /usr, ``*`` in ``ostree admin
status``), data intact, nothing failed. Then, when the CLI has them, ``install`` /
``rollback`` across reboots.

Opt-in until it passes reliably: ``RETROFIT_VM_SCENARIO=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from retrofit.vm.machine import Machine

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]

DATA = {
    "/home/vagrant/notes.txt": "written before the conversion\n",
    "/var/lib/dbdemo/table.db": "row1|alpha\nrow2|beta\n",
    "/etc/retrofit-demo.conf": "setting = kept\n",
}


class Steps:
    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []
        self.started = time.monotonic()

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.times.append((name, time.monotonic() - t))
            print(f"[scenario] {name}: {time.monotonic() - t:.0f}s", flush=True)

    def report(self) -> str:
        lines = [f"  {name:<40} {sec:6.0f}s" for name, sec in self.times]
        lines.append(f"  {'total':<40} {time.monotonic() - self.started:6.0f}s")
        return "\n".join(lines)


def _deb() -> Path:
    subprocess.run(["make", "-C", str(REPO), "deb"], check=True, capture_output=True)
    debs = sorted((REPO / "dist").glob("retrofit_*_all.deb"))
    assert debs, "make deb produced no .deb"
    return debs[-1]


def _write_data(vm: Machine) -> None:
    for path, text in DATA.items():
        owner = "vagrant" if path.startswith("/home/vagrant") else "root"
        vm.cmd(
            f"sudo mkdir -p $(dirname {path}) && sudo tee {path} >/dev/null"
            f" && sudo chown {owner}: {path}",
            input=text.encode(),
        )
    vm.cmd("echo 'retrofit demo motd' | sudo tee -a /etc/motd >/dev/null; sync")


def _check_data(vm: Machine) -> None:
    for path, text in DATA.items():
        assert vm.cmd(f"sudo cat {path}").stdout == text, path
    assert "retrofit demo motd" in vm.cmd("cat /etc/motd").stdout


def _booted_checks(vm: Machine) -> dict[str, Any]:
    cmdline = vm.cmd("cat /proc/cmdline").stdout
    assert "ostree=" in cmdline, f"not booted into a deployment: {cmdline}"
    opts = vm.cmd("findmnt -no OPTIONS /usr", check=False).stdout
    ro = "ro" in opts.split(",") or (
        vm.cmd("sudo touch /usr/.retrofit-rw-probe", check=False).returncode != 0
    )
    assert ro, f"/usr is writable: {opts!r}"
    status = vm.cmd("sudo ostree admin status").stdout
    assert any(line.startswith("* ") for line in status.splitlines()), status
    return {"cmdline": cmdline.strip(), "usr": opts.strip(), "ostree_status": status}


def _failed(vm: Machine) -> list[str]:
    vm.system_state(timeout=300)
    return vm.failed_units()


def _retrofit_status(vm: Machine) -> Any:
    r = vm.cmd("sudo /usr/bin/retrofit status --json")
    return json.loads(r.stdout)


def _has_verbs(vm: Machine, *verbs: str) -> bool:
    r = vm.cmd("/usr/bin/retrofit --help", check=False)
    return all(v in r.stdout for v in verbs)


@pytest.mark.skipif(
    os.environ.get("RETROFIT_VM_SCENARIO") != "1",
    reason="set RETROFIT_VM_SCENARIO=1: the live conversion scenario does not pass reliably yet",
)
def test_live_conversion_boots_into_deployment(lab_image: Path, lab: Any) -> None:
    from retrofit.vm import qemu

    steps = Steps()
    deb = steps.run("make deb", _deb)
    vm = steps.run("boot fresh VM", qemu.boot, image=lab_image, keep_on_failure=True)
    lab.track(vm)
    ok = False
    try:
        net = vm.cmd("sudo apt-get update -qq", check=False, timeout=300)
        print(f"[scenario] guest apt-get update: rc={net.returncode}", flush=True)
        vm.copy_in(deb, f"/tmp/{deb.name}")
        steps.run(
            "install retrofit .deb",
            vm.cmd,
            f"sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends"
            f" /tmp/{deb.name}",
            timeout=600,
        )
        steps.run("write data", _write_data, vm)
        steps.run("preflight", vm.cmd, "sudo retrofit preflight", timeout=300)
        conv = steps.run("convert", vm.cmd, "sudo retrofit convert --yes", timeout=1800)
        print(conv.stderr[-3000:], flush=True)
        grubcfg = vm.cmd(
            "ls -la /boot /boot/loader/ /boot/grub/grub.cfg;"
            r" grep -E '^(menuentry|submenu|\s*set default)' /boot/grub/grub.cfg;"
            " grep -h ^title /boot/loader/entries/*.conf",
            sudo=True,
        )
        print("[scenario] /boot and grub.cfg entries:\n" + grubcfg.stdout, flush=True)
        assert "ostree-0-" in grubcfg.stdout, "15_ostree listed no deployment"
        assert "gnulinux-simple-" in grubcfg.stdout, "the old system left the menu"
        steps.run("reboot into deployment", vm.reboot)
        facts = steps.run("booted checks", _booted_checks, vm)
        print(f"[scenario] {json.dumps(facts, indent=1)}", flush=True)
        steps.run("data intact", _check_data, vm)
        failed = steps.run("system state", _failed, vm)
        assert failed == [], f"failed units after conversion: {failed}"
        st = steps.run("retrofit status", _retrofit_status, vm)
        assert "booted" in json.dumps(st), st

        if _has_verbs(vm, "install", "rollback"):
            steps.run("retrofit install htop", vm.cmd, "sudo retrofit install htop", timeout=1200)
            steps.run("reboot (layered)", vm.reboot)
            steps.run("htop runs", vm.cmd, "htop --version")
            steps.run("rollback", vm.cmd, "sudo retrofit rollback", timeout=600)
            steps.run("reboot (rolled back)", vm.reboot)
            assert vm.cmd("command -v htop", check=False).returncode != 0, "htop still there"
            steps.run("data intact after rollback", _check_data, vm)
        else:
            print("[scenario] retrofit has no install/rollback verbs: skipped that part")
        ok = True
    finally:
        print("[scenario] timings:\n" + steps.report(), flush=True)
        for name, sec in steps.times:
            lab.timings[f"scenario: {name}"] = sec
        if not ok:
            vm.failed = True
            print(vm.diagnostics(lines=120), flush=True)
        lab.untrack(vm)
        if not ok and os.environ.get("RETROFIT_VM_KEEP") == "1":
            print(f"[scenario] VM kept running: {vm.backend.describe()}", flush=True)
        else:
            vm.destroy()
