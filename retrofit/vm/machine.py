"""The VM class the tests (and ``retrofit rehearse``) drive.

A :class:`Machine` is one booted guest reached over ssh as the ``vagrant`` user with
passwordless sudo. What starts and stops it is a :class:`Backend`: plain QEMU
(:mod:`retrofit.vm.qemu`) or Vagrant through python-vagrant
(:mod:`retrofit.vm.vagrant_backend`). Everything else (commands, reboots that are
proven by a new ``boot_id``, health, diagnostics) is the same for both.

    with qemu.boot() as vm:
        vm.cmd("uname -r")
        old = vm.boot_id()
        vm.reboot()            # returns once ssh answers with a different boot_id
"""

from __future__ import annotations

import abc
import io
import json
import os
import shlex
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from retrofit.errors import RetrofitError, stderr_tail
from retrofit.log import log
from retrofit.run import Result, require_tool, run

# How long one command may run, and how long a boot or reboot may take, by default.
# Under TCG a boot to ssh takes about 60 s and a reboot about 100 s.
DEFAULT_CMD_TIMEOUT = 900
DEFAULT_BOOT_TIMEOUT = int(os.environ.get("RETROFIT_VM_BOOT_TIMEOUT", "600"))
SSH_CONNECT_TIMEOUT = 10
_ALL_CODES = tuple(range(256))
TIMEOUT_CODES = (124, 137)
SSH_ERROR = 255


class VMError(RetrofitError):
    """A VM failed to boot, answer, or run a command."""


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    user: str
    key: Path


class Backend(abc.ABC):
    """What starts, reaches and stops one guest."""

    name: str = "vm"

    @abc.abstractmethod
    def start(self) -> None:
        """Create and power on the guest (returns before ssh is up)."""

    @abc.abstractmethod
    def ssh_target(self) -> SshTarget:
        """Where ssh reaches the guest."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the guest's hypervisor process is still there."""

    @abc.abstractmethod
    def console_tail(self, lines: int = 60) -> str:
        """The end of the serial console log ('' if there is none)."""

    @abc.abstractmethod
    def destroy(self, keep_log: bool = False) -> None:
        """Power off and delete the guest (keeping its console log). Idempotent."""

    def log_location(self) -> str:
        """Where the console log is kept after a failure."""
        return ""

    def describe(self) -> str:
        return self.name


class Machine:
    """One running guest. Use as a context manager: it is destroyed on exit, and on an
    exception the serial log tail and the guest journal tail are logged first."""

    def __init__(self, backend: Backend, keep_on_failure: bool = False) -> None:
        self.backend = backend
        self.keep_on_failure = keep_on_failure
        self._control_dir = tempfile.mkdtemp(prefix="rf-ssh-")
        self.failed = False
        self.boot_seconds: float | None = None
        self.last_reboot_seconds: float | None = None

    # --- lifecycle ----------------------------------------------------------------

    def start(self, timeout: float = DEFAULT_BOOT_TIMEOUT) -> Machine:
        started = time.monotonic()
        self.backend.start()
        try:
            self.wait_ssh(timeout=timeout)
        except BaseException:
            self.failed = True
            self._log_diagnostics(journal=False)
            self.destroy()
            raise
        self.boot_seconds = time.monotonic() - started
        log.info("vm %s: ssh up %.0fs after start", self.backend.describe(), self.boot_seconds)
        return self

    def destroy(self) -> None:
        self._close_master()
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self.backend.destroy(keep_log=self.failed)
        if self.failed and self.backend.log_location():
            log.error(
                "vm %s: console log kept at %s",
                self.backend.describe(),
                self.backend.log_location(),
            )

    def __enter__(self) -> Machine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.failed = True
            if exc_type is not KeyboardInterrupt:
                self._log_diagnostics()
        if exc_type is not None and self.keep_on_failure:
            log.warning("vm %s: kept running for inspection", self.backend.describe())
            return
        self.destroy()

    # --- ssh ----------------------------------------------------------------------

    def ssh_argv(self, connect_timeout: int = SSH_CONNECT_TIMEOUT) -> list[str]:
        t = self.backend.ssh_target()
        # fmt: off
        return [
            "ssh",
            "-i", str(t.key),
            "-p", str(t.port),
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            # One connection carries every command: under TCG a key exchange and a
            # PAM session cost seconds each.
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self._control_dir}/%C",
            "-o", "ControlPersist=60",
            f"{t.user}@{t.host}",
        ]
        # fmt: on

    def _close_master(self) -> None:
        if not os.path.isdir(self._control_dir) or not os.listdir(self._control_dir):
            return
        try:
            run(
                ["timeout", "10", *self.ssh_argv()[:-1], "-O", "exit", self.ssh_argv()[-1]],
                ok=_ALL_CODES,
            )
        except RetrofitError:
            pass

    def _ssh(
        self,
        command: str,
        timeout: float,
        input: bytes | None = None,
        connect_timeout: int = SSH_CONNECT_TIMEOUT,
    ) -> Result:
        require_tool("ssh", "reach the VM", "openssh-client")
        argv = [
            "timeout",
            "--kill-after=10",
            str(int(timeout)),
            *self.ssh_argv(connect_timeout),
            "--",
            command,
        ]
        return run(argv, ok=_ALL_CODES, input=input)

    def cmd(
        self,
        command: str,
        check: bool = True,
        timeout: float = DEFAULT_CMD_TIMEOUT,
        sudo: bool = False,
        input: bytes | None = None,
    ) -> Result:
        """Run a shell command in the guest as ``vagrant`` (as root with ``sudo=True``).

        ``check`` raises :class:`VMError` on a non-zero exit; a timeout or an ssh
        failure (exit 255) always raises.
        """
        remote = f"sudo -n sh -c {shlex.quote(command)}" if sudo else command
        result = self._ssh(remote, timeout, input=input)
        where = self.backend.describe()
        if result.returncode in TIMEOUT_CODES:
            raise VMError(
                f"vm {where}: {command!r} did not finish within {int(timeout)}s",
                hint="the guest may be hung: see its serial log",
            )
        if result.returncode == SSH_ERROR and not self.backend.alive():
            raise VMError(
                f"vm {where}: the VM is gone (while running {command!r})",
                hint=self.console_tail(10) or None,
            )
        if check and result.returncode != 0:
            tail = stderr_tail(result.stderr) or stderr_tail(result.stdout)
            raise VMError(
                f"vm {where}: {command!r} failed (exit {result.returncode})"
                + (f": {tail}" if tail else ""),
                hint="rerun with -s to see the serial log and journal tails",
            )
        return result

    def wait_ssh(self, timeout: float = DEFAULT_BOOT_TIMEOUT) -> float:
        """Wait until a command runs over ssh; return the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if not self.backend.alive():
                raise VMError(
                    f"vm {self.backend.describe()}: the VM stopped before ssh came up",
                    hint=self.console_tail(15) or "no serial output",
                )
            result = self._ssh("true", timeout=SSH_CONNECT_TIMEOUT + 20, connect_timeout=5)
            if result.returncode == 0:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise VMError(
                    f"vm {self.backend.describe()}: no ssh after {int(timeout)}s",
                    hint="see the serial log tail above; under TCG a boot takes about 60 s",
                )
            time.sleep(2)

    # --- the guest ----------------------------------------------------------------

    def boot_id(self) -> str:
        return self.cmd("cat /proc/sys/kernel/random/boot_id", timeout=60).stdout.strip()

    def settle(
        self,
        command: str,
        accept: Callable[[Result], bool],
        timeout: float = DEFAULT_BOOT_TIMEOUT,
        what: str = "the guest to settle",
    ) -> Result:
        """Run ``command`` (as root) until ``accept(result)``, across reboots the guest
        makes by itself: an unreachable guest is retried, not an error."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if not self.backend.alive():
                raise VMError(
                    f"vm {self.backend.describe()}: the VM stopped while waiting for {what}",
                    hint=self.console_tail(15) or None,
                )
            r = self._ssh(
                f"sudo -n sh -c {shlex.quote(command)}",
                timeout=SSH_CONNECT_TIMEOUT + 60,
                connect_timeout=5,
            )
            if r.returncode == 0 and accept(r):
                return r
            if r.returncode == 0:
                last = r.stdout[-300:]
            else:
                self._close_master()  # the guest may be going down: a fresh connection
            if time.monotonic() > deadline:
                raise VMError(
                    f"vm {self.backend.describe()}: no {what} within {int(timeout)}s",
                    hint=f"last answer: {last!r}" if last else "the guest never answered",
                )
            time.sleep(5)

    def reboot(self, timeout: float = DEFAULT_BOOT_TIMEOUT) -> str:
        """Reboot in the guest; return once ssh answers with a new boot_id."""
        old = self.request_reboot()
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if not self.backend.alive():
                raise VMError(
                    f"vm {self.backend.describe()}: the VM stopped while rebooting",
                    hint=self.console_tail(15) or None,
                )
            result = self._ssh(
                "cat /proc/sys/kernel/random/boot_id",
                timeout=SSH_CONNECT_TIMEOUT + 20,
                connect_timeout=5,
            )
            new = result.stdout.strip()
            if result.returncode == 0 and new and new != old:
                break
            if result.returncode == 0:
                # Still the old boot (shutdown not reached sshd yet): drop the shared
                # connection so the next try reaches the new boot.
                self._close_master()
            if time.monotonic() > deadline:
                raise VMError(
                    f"vm {self.backend.describe()}: no new boot_id {int(timeout)}s after reboot",
                    hint="see the serial log tail above",
                )
            time.sleep(3)
        self.last_reboot_seconds = time.monotonic() - started
        log.info("vm %s: rebooted in %.0fs", self.backend.describe(), self.last_reboot_seconds)
        return new

    def request_reboot(self) -> str:
        """Ask the guest to reboot; return the boot_id it had (see :meth:`settle`)."""
        old = self.boot_id()
        self._ssh("sudo -n systemctl reboot", timeout=30)
        self._close_master()
        return old

    def system_state(self, timeout: float = 300) -> str:
        """``systemctl is-system-running --wait``: running, degraded, ..."""
        r = self.cmd("systemctl is-system-running --wait", check=False, timeout=timeout)
        return r.stdout.strip()

    def failed_units(self) -> list[str]:
        r = self.cmd("systemctl --failed --no-legend --plain --no-pager", timeout=60)
        return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]

    def status_json(self) -> Any:
        """``retrofit status --json`` in the guest, parsed."""
        r = self.cmd("retrofit status --json", sudo=True)
        try:
            return json.loads(r.stdout)
        except json.JSONDecodeError as exc:
            raise VMError(
                f"vm {self.backend.describe()}: 'retrofit status --json' printed no JSON: {exc}",
                hint=r.stdout[-200:],
            ) from None

    def copy_in(self, local: str | os.PathLike[str], remote: str, sudo: bool = True) -> None:
        """Copy a file or directory to ``remote`` (its full new path) in the guest."""
        src = Path(local)
        if not src.exists():
            raise VMError(f"vm copy_in: {src} does not exist")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(src), arcname=os.path.basename(remote.rstrip("/")))
        parent = os.path.dirname(remote.rstrip("/")) or "/"
        q = shlex.quote(parent)
        owner = "" if sudo else " --no-same-owner"
        self.cmd(f"mkdir -p {q} && tar -x{owner} -f - -C {q}", sudo=sudo, input=buf.getvalue())

    def install_deb(self, deb: str | os.PathLike[str]) -> str:
        """``apt-get install`` a retrofit ``.deb`` (built by ``make deb``) in the guest,
        its dependencies from the guest's mirror; returns ``dpkg-query -W retrofit``.
        The way retrofit goes onto servers, so the lab does it the same way."""
        deb = Path(deb)
        self.copy_in(deb, f"/tmp/{deb.name}")
        self.cmd(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q"
            f" --no-install-recommends /tmp/{shlex.quote(deb.name)}",
            sudo=True,
            timeout=900,
        )
        return self.cmd("dpkg-query -W retrofit").stdout.strip()

    # --- diagnostics --------------------------------------------------------------

    def console_tail(self, lines: int = 60) -> str:
        return self.backend.console_tail(lines)

    def journal_tail(self, lines: int = 80) -> str:
        try:
            r = self.cmd(f"journalctl -b --no-pager -n {lines}", sudo=True, check=False, timeout=60)
        except RetrofitError as exc:
            return f"(no journal: {exc})"
        return r.stdout

    def diagnostics(self, lines: int = 60, journal: bool = True) -> str:
        parts = [
            f"--- serial console tail ({self.backend.describe()}) ---",
            self.console_tail(lines) or "(empty)",
        ]
        if journal and self.backend.alive():
            parts += ["--- journalctl -b tail ---", self.journal_tail(lines)]
        return "\n".join(parts)

    def _log_diagnostics(self, journal: bool = True) -> None:
        try:
            log.error("%s", self.diagnostics(journal=journal))
        except Exception as exc:  # diagnostics must never hide the original error
            log.error("vm: could not collect diagnostics: %s", exc)


def boot(backend: str = "qemu", **options: Any) -> Machine:
    """Start a VM with the named backend (``qemu`` or ``vagrant``) and wait for ssh."""
    if backend == "qemu":
        from retrofit.vm import qemu

        return qemu.boot(**options)
    if backend == "vagrant":
        from retrofit.vm import vagrant_backend

        return vagrant_backend.boot(**options)
    raise RetrofitError(f"vm: unknown backend {backend!r}", hint="use 'qemu' or 'vagrant'")
