"""Plain QEMU backend: the fallback harness that needs nothing but qemu-system-x86.

Each VM boots a fresh copy-on-write qcow2 overlay of the cached image, so the image
is never written and two VMs never see each other's changes. The guest's port 22 is
forwarded to a free port on 127.0.0.1; the serial console goes to a log file; a QMP
socket allows a hard reset. QEMU runs with ``-daemonize`` and is stopped by its pid.

Acceleration: ``RETROFIT_VM_ACCEL`` = ``kvm``, ``tcg`` or ``auto`` (default). ``auto``
uses KVM only when /dev/kvm is usable by a stock kernel: a kvm_intel or kvm_amd
module and no kvm_pvm (a PVM host's /dev/kvm cannot run a stock Debian kernel).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from retrofit.errors import CommandError, RetrofitError
from retrofit.log import log
from retrofit.run import require_tool, run
from retrofit.vm.image import PRIVATE_KEY_FILE, VM_CACHE_DIR, ImageSpec, build_image
from retrofit.vm.machine import Backend, Machine, SshTarget, VMError

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# The CPU model under TCG. "max" (everything TCG emulates) boots as fast as qemu64
# here, and OVMF hangs after a guest reboot on qemu64 (QEMU 7.2, OVMF 2022.11).
TCG_CPU = "max"
RUN_DIR = Path(os.environ.get("RETROFIT_VM_RUN_DIR", "/var/tmp"))

_live: set[QemuBackend] = set()


def kvm_usable() -> bool:
    """Whether /dev/kvm can run a stock guest kernel (never assumed)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    modules = Path("/sys/module")
    if (modules / "kvm_pvm").exists():
        return False
    return (modules / "kvm_intel").exists() or (modules / "kvm_amd").exists()


def detect_accel() -> str:
    wanted = os.environ.get("RETROFIT_VM_ACCEL", "auto").strip().lower()
    if wanted in ("kvm", "tcg"):
        return wanted
    if wanted not in ("", "auto"):
        raise RetrofitError(
            f"vm: RETROFIT_VM_ACCEL={wanted!r} is not kvm, tcg or auto",
            hint="unset it to detect KVM",
        )
    return "kvm" if kvm_usable() else "tcg"


def private_key() -> Path:
    """The lab's private key with the 0600 mode ssh insists on (git keeps 0644)."""
    dest = VM_CACHE_DIR / "keys" / "vagrant"
    data = PRIVATE_KEY_FILE.read_bytes()
    if not dest.exists() or dest.read_bytes() != data:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.rename(tmp, dest)
    return dest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class QemuBackend(Backend):
    def __init__(
        self,
        image: Path,
        firmware: str = "bios",
        memory: int = 2048,
        cpus: int = 2,
        accel: str | None = None,
        workdir: Path | None = None,
        name: str = "retrofit",
        cpu: str | None = None,
    ) -> None:
        self.cpu = cpu or os.environ.get("RETROFIT_VM_CPU") or None
        self.image = image
        self.firmware = firmware
        self.memory = memory
        self.cpus = cpus
        self.accel = accel or detect_accel()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{name}-vm-", dir=RUN_DIR))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = f"qemu:{self.workdir.name}"
        self.overlay = self.workdir / "overlay.qcow2"
        self.serial_log = self.workdir / "serial.log"
        self.qmp_socket = self.workdir / "qmp.sock"
        self.pidfile = self.workdir / "qemu.pid"
        self.port = 0
        self.pid: int | None = None
        self._key = private_key()

    def describe(self) -> str:
        return f"{self.name} (port {self.port}, {self.accel})"

    def argv(self) -> list[str]:
        cpu = self.cpu or ("host" if self.accel == "kvm" else TCG_CPU)
        # fmt: off
        argv = [
            QEMU,
            "-name", f"retrofit-{self.workdir.name},process=retrofit-{self.workdir.name}",
            "-machine", "q35",
            "-accel", self.accel,
            "-cpu", cpu,
            "-nodefaults", "-vga", "none", "-display", "none",
            "-smp", str(self.cpus), "-m", str(self.memory),
            "-drive", f"file={self.overlay},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-rng-pci",
            "-chardev", f"file,id=serial0,path={self.serial_log},append=on",
            "-serial", "chardev:serial0",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-pidfile", str(self.pidfile),
            "-daemonize",
        ]
        # fmt: on
        if self.firmware == "uefi":
            vars_copy = self.workdir / "OVMF_VARS.fd"
            argv += [
                "-drive",
                f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive",
                f"if=pflash,format=raw,unit=1,file={vars_copy}",
            ]
        return argv

    def start(self) -> None:
        require_tool(QEMU, "boot the rehearsal VM", "qemu-system-x86")
        require_tool("qemu-img", "create the VM's overlay disk", "qemu-utils")
        if self.overlay.exists():  # a restart after a power cut: the same disk
            self._launch()
            return
        run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                str(self.image),
                str(self.overlay),
            ]
        )
        if self.firmware == "uefi":
            if not OVMF_CODE.exists():
                raise RetrofitError(
                    f"vm: {OVMF_CODE} is missing, which a UEFI boot needs",
                    hint="apt-get install --no-install-recommends ovmf",
                )
            shutil.copyfile(OVMF_VARS, self.workdir / "OVMF_VARS.fd")
        self._launch()

    def _launch(self) -> None:
        for attempt in range(5):
            self.port = free_port()
            try:
                run(self.argv())
                break
            except CommandError as exc:
                if "hostfwd" in exc.stderr or "host forwarding" in exc.stderr:
                    log.debug("vm: port %d taken, retrying (%d)", self.port, attempt)
                    continue
                raise VMError(
                    f"vm: {QEMU} did not start: {exc.message}",
                    hint="see the command line with --debug",
                ) from None
        else:
            raise VMError("vm: could not find a free port for ssh forwarding")
        self.pid = int(self.pidfile.read_text().strip())
        _live.add(self)
        log.info(
            "vm %s: started (pid %d, serial log %s)", self.describe(), self.pid, self.serial_log
        )

    def ssh_target(self) -> SshTarget:
        return SshTarget("127.0.0.1", self.port, "vagrant", self._key)

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        # A pid that died and was reused would not be our QEMU.
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self.workdir).encode() in cmdline

    def console_tail(self, lines: int = 60) -> str:
        try:
            data = self.serial_log.read_bytes()
        except OSError:
            return ""
        text = data.decode(errors="replace").replace("\r", "")
        return "\n".join(text.splitlines()[-lines:])

    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Send one QMP command (e.g. ``system_reset``) and return its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.qmp_socket))
            f = s.makefile("rw")
            json.loads(f.readline())  # greeting
            for msg in (
                {"execute": "qmp_capabilities"},
                {"execute": command, "arguments": arguments or {}},
            ):
                f.write(json.dumps(msg) + "\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "event" not in reply:
                        break
            if "error" in reply:
                raise VMError(f"vm: QMP {command} failed: {reply['error']}")
            return reply.get("return")

    def log_location(self) -> str:
        return str(self.serial_log)

    def power_cut(self) -> None:
        """SIGKILL QEMU: what the guest had not written out is lost, as in a power
        cut (the overlay keeps what QEMU had written)."""
        if self.pid is not None and self.alive():
            os.kill(self.pid, signal.SIGKILL)
            for _ in range(100):
                if not self.alive():
                    break
                time.sleep(0.1)
        self.pid = None
        _live.discard(self)

    def destroy(self, keep_log: bool = False) -> None:
        if self.pid is not None and self.alive():
            os.kill(self.pid, signal.SIGTERM)
            for _ in range(100):
                if not self.alive():
                    break
                time.sleep(0.1)
            else:
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None
        _live.discard(self)
        if keep_log:
            self.overlay.unlink(missing_ok=True)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


class QemuMachine(Machine):
    backend: QemuBackend

    def __init__(self, backend: QemuBackend, keep_on_failure: bool = False) -> None:
        super().__init__(backend, keep_on_failure)

    def power_cycle(self, timeout: float | None = None) -> float:
        """Cut the power (kill QEMU), start it again on the same disk, wait for ssh;
        returns the seconds until ssh answered."""
        self._close_master()
        self.backend.power_cut()
        log.info("vm %s: power cut", self.backend.describe())
        self.backend.start()
        return self.wait_ssh() if timeout is None else self.wait_ssh(timeout)

    def hard_reset(self) -> None:
        """Press the reset button (no clean shutdown): for fallback-boot scenarios."""
        self._close_master()
        self.backend.qmp("system_reset")


def boot(
    image: Path | None = None,
    spec: ImageSpec | None = None,
    firmware: str | None = None,
    memory: int = 2048,
    cpus: int = 2,
    accel: str | None = None,
    workdir: Path | None = None,
    timeout: float | None = None,
    keep_on_failure: bool = False,
) -> QemuMachine:
    """Boot a fresh overlay of ``image`` (default: the cached image for ``spec``)."""
    spec = spec or ImageSpec(firmware=firmware or "bios")
    image = image or build_image(spec)
    backend = QemuBackend(
        image,
        firmware=firmware or spec.firmware,
        memory=memory,
        cpus=cpus,
        accel=accel,
        workdir=workdir,
    )
    machine = QemuMachine(backend, keep_on_failure=keep_on_failure)
    if timeout is None:
        machine.start()
    else:
        machine.start(timeout=timeout)
    return machine


def release(backend: Backend) -> None:
    """Let a VM outlive this process (``--keep``): no stop at exit."""
    if isinstance(backend, QemuBackend):
        _live.discard(backend)


@atexit.register
def _destroy_leftovers() -> None:
    for backend in list(_live):
        log.warning("vm: stopping leftover VM %s", backend.describe())
        backend.destroy(keep_log=True)
