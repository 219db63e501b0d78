"""Vagrant backend, driven through python-vagrant (the project's Vagrantfile).

``vagrant up`` boots the box named by ``RETROFIT_BOX`` (default: the locally built
``retrofit/debian12`` box) with vagrant-libvirt; commands then go over plain ssh to
the address ``vagrant ssh-config`` reports (one connection, multiplexed: far faster
than a ``vagrant ssh`` per command). ``vagrant ssh -c`` stays available as
:meth:`VagrantMachine.vagrant_ssh`.

Each machine gets its own ``VAGRANT_DOTFILE_PATH`` and libvirt name prefix, so
several can run from the one Vagrantfile. python-vagrant runs the ``vagrant``
executable itself, with the environment we build here.

Without systemd as PID 1 the libvirt daemons are not running: :func:`ensure_libvirt`
starts ``virtlogd``, ``libvirtd`` and the ``default`` network, and returns what it
started so :func:`stop_libvirt` can stop exactly that.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from retrofit.errors import RetrofitError
from retrofit.log import log
from retrofit.run import base_env, output, require_tool, run, which
from retrofit.vm.image import BOX_NAME, ImageSpec, build_box
from retrofit.vm.machine import Backend, Machine, SshTarget, VMError

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = Path(os.environ.get("RETROFIT_VM_RUN_DIR", "/var/tmp"))
LIBVIRT_URI = "qemu:///system"
DAEMON_PIDFILES = {"virtlogd": Path("/run/virtlogd.pid"), "libvirtd": Path("/run/libvirtd.pid")}


def _virsh(*args: str, ok: tuple[int, ...] = (0,)) -> str:
    return run(["virsh", "-c", LIBVIRT_URI, *args], ok=ok).stdout


def _libvirt_answers() -> bool:
    if which("virsh") is None:
        return False
    return run(["virsh", "-c", LIBVIRT_URI, "version"], ok=tuple(range(256))).returncode == 0


def ensure_libvirt() -> list[str]:
    """Start virtlogd, libvirtd and the default network if they are not running.

    Returns what was started (``virtlogd``, ``libvirtd``, ``network:default``).
    """
    require_tool("libvirtd", "run Vagrant VMs with vagrant-libvirt", "libvirt-daemon-system")
    require_tool("virsh", "talk to libvirt", "libvirt-clients")
    started: list[str] = []
    if _fix_kvm_permissions():
        started.append("kvm-permissions")
    if not _libvirt_answers():
        for daemon in ("virtlogd", "libvirtd"):
            pidfile = DAEMON_PIDFILES[daemon]
            if not _pid_alive(pidfile):
                run([daemon, "-d"])
                started.append(daemon)
        for _ in range(100):
            if _libvirt_answers():
                break
            time.sleep(0.2)
        else:
            raise VMError(
                "vm: libvirtd started but does not answer",
                hint="look at /var/log/libvirt/libvirtd.log",
            )
    networks = _virsh("net-list", "--all", "--name").split()
    if "default" not in networks:
        xml = Path("/usr/share/libvirt/networks/default.xml")
        _virsh("net-define", str(xml))
    active = _virsh("net-list", "--name").split()
    if "default" not in active:
        _virsh("net-start", "default")
        started.append("network:default")
    if started:
        log.info("vm: started %s", ", ".join(started))
    return started


def stop_libvirt(started: list[str]) -> None:
    """Stop what :func:`ensure_libvirt` started, in reverse order."""
    for what in reversed(started):
        if what == "kvm-permissions":
            _restore_kvm_permissions()
            continue
        if what == "network:default":
            _virsh("net-destroy", "default", ok=(0, 1))
            continue
        pidfile = DAEMON_PIDFILES[what]
        pid = _pid_alive(pidfile)
        if pid:
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not _pid_alive(pidfile):
                    break
                time.sleep(0.1)


KVM_DEVICE = Path("/dev/kvm")


def _fix_kvm_permissions() -> bool:
    """Give /dev/kvm the group and mode udev gives it (kvm, 0660) on a host without udev.

    libvirt checks whether its QEMU user may open /dev/kvm and compares that with what
    the QEMU it probed reports; when they disagree (root-only /dev/kvm, a QEMU that
    can open it) it throws its capability cache away and re-probes every emulator on
    every domain define: some 30 s each time, twice per ``vagrant up``.
    """
    import grp

    try:
        st = KVM_DEVICE.stat()
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except (OSError, KeyError):
        return False
    if st.st_uid != 0 or st.st_gid != 0 or (st.st_mode & 0o777) != 0o600:
        return False
    os.chown(KVM_DEVICE, 0, kvm_gid)
    os.chmod(KVM_DEVICE, 0o660)
    log.info("vm: /dev/kvm set to group kvm, mode 0660 (as udev would) for libvirt")
    return True


def _restore_kvm_permissions() -> None:
    with contextlib.suppress(OSError):
        os.chown(KVM_DEVICE, 0, 0)
        os.chmod(KVM_DEVICE, 0o600)


def _pid_alive(pidfile: Path) -> int:
    """The pid in ``pidfile`` if that process runs (a zombie does not: where PID 1
    does not reap, a stopped daemon lingers as one)."""
    try:
        pid = int(pidfile.read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return 0
    state = stat.rsplit(")", 1)[-1].split()[0]
    return 0 if state in ("Z", "X") else pid


@contextlib.contextmanager
def libvirt_running() -> Iterator[list[str]]:
    started = ensure_libvirt()
    try:
        yield started
    finally:
        stop_libvirt(started)


def local_box(spec: ImageSpec | None = None) -> tuple[str, str]:
    """(name, url) of the locally built box; the name carries the cache key, so a
    rebuilt image is a new box and never a stale one Vagrant or libvirt cached."""
    spec = spec or ImageSpec()
    path = build_box(spec)
    return f"{BOX_NAME}-{spec.key()}", f"file://{path}"


class VagrantBackend(Backend):
    def __init__(
        self,
        box: str | None = None,
        box_url: str | None = None,
        provider: str = "libvirt",
        root: Path = REPO_ROOT,
        workdir: Path | None = None,
        provision: bool = True,
    ) -> None:
        # python-vagrant ships no type information: hold it as Any.
        vagrant: Any = importlib.import_module("vagrant")
        require_tool("vagrant", "run the rehearsal VM with Vagrant", "vagrant")
        self.provider = provider
        self.provision = provision
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="retrofit-vagrant-", dir=RUN_DIR))
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)  # the serial log is opened by libvirt's QEMU
        self.prefix = f"retrofit-{self.workdir.name.rsplit('-', 1)[-1]}-"
        self.domain = f"{self.prefix}default"
        self.name = f"vagrant:{self.domain}"
        self.serial_log = self.workdir / "serial.log"
        self.vagrant_log = self.workdir / "vagrant.log"
        extra = {
            "VAGRANT_DOTFILE_PATH": str(self.workdir / "dotvagrant"),
            "VAGRANT_DEFAULT_PROVIDER": provider,
            "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_NO_COLOR": "1",
            "RETROFIT_VM_PREFIX": self.prefix,
            "RETROFIT_SERIAL_LOG": str(self.serial_log),
        }
        for var in ("RETROFIT_VM_ACCEL", "VAGRANT_HOME", "LIBVIRT_DEFAULT_URI"):
            if var in os.environ:
                extra[var] = os.environ[var]
        if box:
            extra["RETROFIT_BOX"] = box
        if box_url:
            extra["RETROFIT_BOX_URL"] = box_url
        self.env = base_env(extra)
        log_cm = vagrant.make_file_cm(str(self.vagrant_log))
        self.vagrant: Any = vagrant.Vagrant(str(root), env=self.env, out_cm=log_cm, err_cm=log_cm)
        self._target: SshTarget | None = None
        self._up = False
        self.up_seconds: float | None = None

    def _vagrant_error(self, what: str, exc: Exception) -> VMError:
        tail = ""
        with contextlib.suppress(OSError):
            lines = self.vagrant_log.read_text(errors="replace").splitlines()
            tail = " | ".join(ln.strip() for ln in lines[-6:] if ln.strip())
        return VMError(
            f"vm {self.name}: vagrant {what} failed: {tail or exc}",
            hint=f"full output in {self.vagrant_log}",
        )

    def start(self) -> None:
        started = time.monotonic()
        log.info("vm %s: vagrant up (log %s)", self.name, self.vagrant_log)
        self._up = True
        try:
            self.vagrant.up(provider=self.provider, provision=self.provision)
        except Exception as exc:
            raise self._vagrant_error("up", exc) from None
        self.up_seconds = time.monotonic() - started
        log.info("vm %s: vagrant up took %.0fs", self.name, self.up_seconds)

    def ssh_target(self) -> SshTarget:
        if self._target is None:
            try:
                conf = self.vagrant.conf()
            except Exception as exc:
                raise self._vagrant_error("ssh-config", exc) from None
            self._target = SshTarget(
                conf["HostName"],
                int(conf.get("Port", 22)),
                conf.get("User", "vagrant"),
                Path(conf["IdentityFile"].strip('"')),
            )
        return self._target

    def alive(self) -> bool:
        if not self._up:
            return False
        if self.provider == "libvirt":
            r = run(["virsh", "-c", LIBVIRT_URI, "domstate", self.domain], ok=tuple(range(256)))
            return r.returncode == 0 and r.stdout.strip() in ("running", "paused")
        try:
            return any(s.state == "running" for s in self.vagrant.status())
        except Exception:
            return False

    def console_tail(self, lines: int = 60) -> str:
        try:
            text = self.serial_log.read_bytes().decode(errors="replace").replace("\r", "")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_location(self) -> str:
        return str(self.workdir)

    def reload(self) -> None:
        """``vagrant reload``: halt and up again (the Vagrantfile is re-read)."""
        try:
            self.vagrant.reload()
        except Exception as exc:
            raise self._vagrant_error("reload", exc) from None
        self._target = None

    def destroy(self, keep_log: bool = False) -> None:
        if self._up:
            try:
                self.vagrant.destroy()
            except Exception as exc:
                log.error("%s", self._vagrant_error("destroy", exc))
                if self.provider == "libvirt":
                    _virsh("destroy", self.domain, ok=(0, 1))
                    _virsh("undefine", self.domain, "--remove-all-storage", ok=(0, 1))
            self._up = False
        if not keep_log:
            shutil.rmtree(self.workdir, ignore_errors=True)


class VagrantMachine(Machine):
    backend: VagrantBackend

    def vagrant_ssh(self, command: str) -> str:
        """``vagrant ssh -c COMMAND`` through python-vagrant (slow: Vagrant starts each time)."""
        try:
            return str(self.backend.vagrant.ssh(command=command))
        except Exception as exc:
            raise self.backend._vagrant_error(f"ssh -c {command!r}", exc) from None

    def reload(self) -> None:
        self._close_master()
        self.backend.reload()
        self.wait_ssh()


def boot(
    box: str | None = None,
    box_url: str | None = None,
    spec: ImageSpec | None = None,
    provider: str = "libvirt",
    root: Path = REPO_ROOT,
    provision: bool = True,
    keep_on_failure: bool = False,
) -> VagrantMachine:
    """``vagrant up`` a machine (default: the locally built box) and wait for ssh."""
    if box is None:
        box, box_url = local_box(spec)
    if provider == "libvirt" and not _libvirt_answers():
        raise RetrofitError(
            "vm: libvirt is not running, which vagrant-libvirt needs",
            hint="start it: virtlogd -d; libvirtd -d; virsh net-start default "
            "(or use retrofit.vm.vagrant_backend.libvirt_running())",
        )
    backend = VagrantBackend(
        box=box, box_url=box_url, provider=provider, root=root, provision=provision
    )
    machine = VagrantMachine(backend, keep_on_failure=keep_on_failure)
    machine.start()
    return machine


def prune_local_boxes(keep: str) -> None:
    """Remove older ``retrofit/debian12-*`` boxes (and their libvirt volumes)."""
    require_tool("vagrant", "manage Vagrant boxes", "vagrant")
    for line in output(
        ["vagrant", "box", "list"], env={"VAGRANT_CHECKPOINT_DISABLE": "1"}
    ).splitlines():
        name = line.split(" ", 1)[0]
        if name.startswith(f"{BOX_NAME}-") and name != keep:
            run(["vagrant", "box", "remove", "--force", "--all", name], ok=(0, 1))
            volume_prefix = name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image"
            for vol in _virsh("vol-list", "default", "--name", ok=(0, 1)).split():
                if vol.startswith(volume_prefix):
                    _virsh("vol-delete", "--pool", "default", vol, ok=(0, 1))
