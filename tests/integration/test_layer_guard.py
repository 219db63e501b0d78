"""The guard against apt/dpkg on a converted system: real dpkg and apt-get in a real
Debian tree carrying the guard files, booted (``/run/ostree-booted``) or not."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from dpkg_layer import guard
from retrofit.run import Result, run
from tests.integration.test_layering import make_deb
from tests.treeutil import copy_tree


@pytest.fixture(scope="module")
def guarded(ready_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ready tree (hardlinked: only new files and renames are written below) with
    the guard files where the conversion commit puts them (usr/etc is /etc here)."""
    tree = copy_tree(ready_tree, tmp_path_factory.mktemp("guard") / "tree", hardlink=True)
    for f in guard.guard_files():
        dest = tree / (f.dest[len("usr/") :] if f.dest.startswith("usr/etc/") else f.dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        assert f.data is not None
        dest.write_bytes(f.data)
        dest.chmod(f.mode if f.mode is not None else 0o644)
    return tree


def in_tree(
    tree: Path,
    argv: Sequence[str],
    *,
    booted: bool,
    deb: Path | None = None,
    env: dict[str, str] | None = None,
    ok: Sequence[int] = (0,),
) -> Result:
    cmd = ["bwrap", "--bind", str(tree), "/", "--dev", "/dev", "--proc", "/proc",
           "--tmpfs", "/tmp", "--tmpfs", "/run", "--tmpfs", "/var/log", "--tmpfs", "/var/cache/apt",
           "--unshare-net", "--unshare-pid"]  # fmt: skip
    if booted:
        cmd += ["--ro-bind", "/dev/null", "/run/ostree-booted"]
    if deb is not None:
        cmd += ["--ro-bind", str(deb), "/tmp/pkg.deb"]
    for k, v in (env or {}).items():
        cmd += ["--setenv", k, v]
    return run([*cmd, "--", *argv], ok=tuple(ok))


DPKG_I = ["dpkg", "--log=/dev/null", "-i", "/tmp/pkg.deb"]
APT_I = ["apt-get", "-y", "-o", "Dir::Log=/tmp", "-o", "Dir::State::Lists=/tmp",
         "-o", "DPkg::Options::=--log=/dev/null", "install", "/tmp/pkg.deb"]  # fmt: skip


def test_guard_blocks_dpkg_and_apt_on_a_booted_system(guarded: Path, tmp_path: Path) -> None:
    deb = make_deb(tmp_path, "guardtest", files={"usr/share/guardtest/x": "x\n"})
    r = in_tree(guarded, DPKG_I, booted=True, deb=deb, ok=(2,))
    assert "retrofit: this is an image-based system (OSTree)" in r.stderr
    assert "retrofit install ./FILE.deb" in r.stderr
    assert not (guarded / "usr/share/guardtest/x").exists()

    r = in_tree(guarded, APT_I, booted=True, deb=deb, ok=(100,))
    assert "retrofit install PKG" in r.stderr and "retrofit upgrade" in r.stderr
    assert not (guarded / "usr/share/guardtest/x").exists()

    r = in_tree(guarded, ["dpkg", "--log=/dev/null", "-r", "less"], booted=True, ok=(2,))
    assert "retrofit override remove PKG" in r.stderr
    assert (guarded / "usr/bin/less").exists()

    # queries are not guarded
    assert "less" in in_tree(guarded, ["dpkg", "-l", "less"], booted=True).stdout


def test_guard_lets_retrofit_and_unconverted_systems_through(guarded: Path, tmp_path: Path) -> None:
    deb = make_deb(tmp_path, "guardok", files={"usr/share/guardok/x": "x\n"})
    in_tree(guarded, DPKG_I, booted=True, deb=deb, env={"RETROFIT_LAYERING": "1"})
    assert (guarded / "usr/share/guardok/x").exists()
    in_tree(guarded, ["dpkg", "--log=/dev/null", "-r", "guardok"], booted=False)
    assert not (guarded / "usr/share/guardok/x").exists()
    in_tree(guarded, APT_I, booted=False, deb=deb)
    assert (guarded / "usr/share/guardok/x").exists()
