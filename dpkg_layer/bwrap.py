"""bubblewrap command lines for layering: a tree as ``/`` with extra mounts in a
given order (retrofit.sandbox's helper appends binds after its own mounts, which
cannot mount over a fresh tmpfs ``/var``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from retrofit.sandbox import base_argv

# Set in every sandbox that runs dpkg or apt on purpose: the guard installed on
# converted systems (dpkg_layer.guard) lets those runs through.
LAYERING_ENV = "RETROFIT_LAYERING"


def argv(
    root: Path,
    command: Sequence[str],
    *,
    mounts: Sequence[tuple[str, str, str]] = (),
    network: bool = False,
    root_readonly: bool = False,
    setenv: Mapping[str, str] | None = None,
) -> list[str]:
    """``mounts`` are (kind, source, dest) with kind one of bind, ro-bind, tmpfs,
    symlink; applied in order after /dev, /proc, /tmp and /run."""
    out = base_argv(root, root_readonly) + ["--new-session", "--setenv", LAYERING_ENV, "1"]
    if not network:
        out.append("--unshare-net")
    for key, value in (setenv or {}).items():
        out += ["--setenv", key, value]
    for kind, src, dest in mounts:
        if kind == "tmpfs":
            out += ["--tmpfs", dest]
        else:
            out += [f"--{kind}", src, dest]
    return out + ["--", *command]


def resolv_conf_mounts(root: Path) -> list[tuple[str, str, str]]:
    """The host's resolver configuration where the tree expects it (for downloads)."""
    host = "/etc/resolv.conf"
    if not os.path.exists(host):
        return []
    src = os.path.realpath(host)
    tree = root / "etc/resolv.conf"
    if tree.is_symlink():
        # absolute or relative (systemd-resolved: ../run/systemd/resolve/stub-resolv.conf)
        target = os.path.normpath(os.path.join("/etc", os.readlink(tree)))
        if target.startswith("/run/"):
            return [("ro-bind", src, target)]
        return []
    if tree.is_file():
        return [("ro-bind", src, "/etc/resolv.conf")]
    return []
