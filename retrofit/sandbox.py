"""bubblewrap sandboxes: run a command with a tree as its root, unable to touch the host.

The tree is bind-mounted as ``/``; ``/dev``, ``/proc``, ``/tmp`` and ``/run`` are
fresh; PID, IPC and UTS namespaces are private; the network is private unless asked
for (apt downloads). ``policy-rc.d`` denies service starts while packages install.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from retrofit.run import Result, require_tool, run

POLICY_RC_D = (
    b"#!/bin/sh\n# written by retrofit while packages install: no service starts\nexit 101\n"
)


def base_argv(root: Path, root_readonly: bool = False) -> list[str]:
    """bwrap with ``root`` as /, fresh /dev, /proc, /tmp (1777) and /run, private
    PID/IPC/UTS/cgroup namespaces; callers add the network choice and mounts."""
    bwrap = require_tool("bwrap", "run package scripts sandboxed", "bubblewrap")
    return [bwrap, "--ro-bind" if root_readonly else "--bind", str(root), "/",
            "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp",
            "--tmpfs", "/run", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--chdir", "/"]  # fmt: skip


def bwrap_argv(
    root: Path,
    argv: Sequence[str],
    *,
    network: bool = False,
    ro_binds: Sequence[tuple[str, str]] = (),
    binds: Sequence[tuple[str, str]] = (),
    root_readonly: bool = False,
) -> list[str]:
    out = base_argv(root, root_readonly)
    if not network:
        out.append("--unshare-net")
    elif (
        os.path.exists("/etc/resolv.conf")
        and (root / "etc/resolv.conf").is_file()
        and not (root / "etc/resolv.conf").is_symlink()
    ):
        out += ["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"]
    for src, dst in ro_binds:
        out += ["--ro-bind", src, dst]
    for src, dst in binds:
        out += ["--bind", src, dst]
    return out + ["--", *argv]


def run_in(
    root: Path,
    argv: Sequence[str],
    *,
    network: bool = False,
    env: Mapping[str, str] | None = None,
    ok: Sequence[int] = (0,),
    stream: bool = False,
    ro_binds: Sequence[tuple[str, str]] = (),
    binds: Sequence[tuple[str, str]] = (),
    root_readonly: bool = False,
) -> Result:
    return run(
        bwrap_argv(
            root, argv, network=network, ro_binds=ro_binds, binds=binds, root_readonly=root_readonly
        ),
        env=env,
        ok=ok,
        stream=stream,
    )


class PolicyRcD:
    """Context manager: a policy-rc.d that denies service starts, removed afterwards
    (unless the tree already had one, which is left alone)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "usr/sbin/policy-rc.d"
        self.created = False

    def __enter__(self) -> PolicyRcD:
        if not self.path.exists() and not self.path.is_symlink():
            self.path.write_bytes(POLICY_RC_D)
            self.path.chmod(0o755)
            self.created = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.created and self.path.exists():
            self.path.unlink()
