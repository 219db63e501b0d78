"""Every blocking preflight failure: one line with a hint, exit 1, nothing changed."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrofit.run import run
from tests.treeutil import copy_tree, manifest, retrofit_cmd


def make_mini_tree(src: Path, dest: Path) -> Path:
    """A small tree that passes preflight: the reference tree's /etc, dpkg database,
    one kernel, merged-/usr links; /usr itself only a little (refusal tests never
    get past preflight)."""
    dest.mkdir()
    for name in ("bin", "sbin", "lib", "lib64"):
        os.symlink(os.readlink(src / name), dest / name)
    run(["cp", "-a", str(src / "etc"), str(dest / "etc")])
    (dest / "var/lib").mkdir(parents=True)
    run(["cp", "-a", str(src / "var/lib/dpkg"), str(dest / "var/lib/dpkg")])
    (dest / "usr/bin").mkdir(parents=True)
    shutil.copy2(src / "usr/bin/ls", dest / "usr/bin/ls")
    (dest / "usr/lib").mkdir()
    shutil.copy2(src / "usr/lib/os-release", dest / "usr/lib/os-release")
    for kdir in (src / "usr/lib/modules").iterdir():
        (dest / "usr/lib/modules" / kdir.name).mkdir(parents=True)
        (dest / "boot").mkdir(exist_ok=True)
        for f in (f"vmlinuz-{kdir.name}", f"initrd.img-{kdir.name}"):
            (dest / "boot" / f).write_bytes(b"k" * 1024)
    for d in ("home", "root", "srv", "opt", "mnt", "tmp"):
        (dest / d).mkdir()
    return dest


@pytest.fixture
def mini(reference_tree: Path, tmp_path: Path) -> Path:
    return make_mini_tree(reference_tree, tmp_path / "mini")


def assert_refused(tree: Path, expect: str, hint: str, user: str | None = None) -> None:
    before = manifest(tree)
    argv = ["convert", "--sysroot", str(tree), "--yes"]
    if user:
        import sys

        r = run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-m",
                "retrofit",
                *argv,
            ],
            ok=(1,),
            env={"PYTHONPATH": str(Path(__file__).parents[2])},
        )
    else:
        r = retrofit_cmd(*argv, ok=(1,))
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith("retrofit: preflight: ") and expect in lines[0], lines[0]
    assert lines[1].startswith("hint: ") and hint in lines[1], lines[1]
    assert r.stdout == ""
    assert manifest(tree) == before


def test_mini_tree_passes_preflight(mini: Path) -> None:
    out = json.loads(retrofit_cmd("preflight", "--root", str(mini), "--json").stdout)
    assert out["ok"], [c for c in out["checks"] if c["status"] == "fail"]


def test_refuse_not_root(reference_tree: Path) -> None:
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="retrofit-nonroot-"))
    try:
        top.chmod(0o755)
        tree = make_mini_tree(reference_tree, top / "mini")
        assert_refused(tree, "running as uid 65534, not root", "sudo retrofit", user="nobody")
    finally:
        shutil.rmtree(top)


def test_refuse_unsupported_distro(mini: Path) -> None:
    osr = mini / "etc/os-release"
    osr.unlink()
    osr.write_text('ID=fedora\nVERSION_ID="40"\nPRETTY_NAME="Fedora Linux 40"\n')
    assert_refused(mini, "unsupported distribution fedora 40", "supported: Debian 11, 12, 13")


def test_refuse_dpkg_broken(mini: Path) -> None:
    status = mini / "var/lib/dpkg/status"
    text = status.read_text().replace(
        "Package: less\nStatus: install ok installed",
        "Package: less\nStatus: install ok half-configured",
    )
    assert "half-configured" in text
    status.write_text(text)
    assert_refused(mini, "dpkg state is not clean: less (half-configured)", "dpkg --configure -a")


def test_refuse_separate_usr(mini: Path) -> None:
    run(["mount", "--bind", str(mini / "usr"), str(mini / "usr")])
    try:
        assert_refused(mini, "/usr is a separate mount", "merge /usr into the root filesystem")
    finally:
        run(["umount", str(mini / "usr")])


def test_refuse_already_converted(mini: Path) -> None:
    (mini / "ostree/deploy/debian/deploy/abc.0").mkdir(parents=True)
    assert_refused(mini, "already has OSTree deployments", "use the day-two verbs")


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield mnt, ""
    run(["umount", "-l", str(mnt)], ok=(0, 32))


def test_refuse_unknown_filesystem(reference_tree: Path, mounted: tuple[Path, str]) -> None:
    mnt, _ = mounted
    run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mnt)])
    tree = make_mini_tree(reference_tree, mnt / "tree")
    assert_refused(tree, "is tmpfs, which is not supported", "supported: ext4, xfs, btrfs")


def test_refuse_not_enough_space(
    reference_tree: Path, mounted: tuple[Path, str], tmp_path: Path
) -> None:
    mnt, _ = mounted
    img = tmp_path / "small.img"
    run(["truncate", "-s", "120M", str(img)])
    run(["mkfs.ext4", "-q", str(img)])
    run(["mount", "-o", "loop", str(img), str(mnt)])
    tree = make_mini_tree(reference_tree, mnt / "tree")
    # /usr bigger than what is left: a real 100 MiB file
    run(["dd", "if=/dev/urandom", f"of={tree}/usr/bin/big", "bs=1M", "count=70", "status=none"])
    assert_refused(tree, "not enough space on", "free at least")


def test_preflight_json_lists_every_check(mini: Path) -> None:
    out = json.loads(retrofit_cmd("preflight", "--root", str(mini), "--json").stdout)
    names = {c["name"] for c in out["checks"]}
    assert {
        "distro",
        "architecture",
        "root",
        "container",
        "dpkg-state",
        "free-space",
        "filesystem",
        "usr-mount",
        "already-converted",
        "bootloader",
        "initramfs",
        "merged-usr",
        "kernel",
    } <= names
    for c in out["checks"]:
        assert c["status"] in ("pass", "fail", "warn", "skip") and c["reason"]


def test_dry_run_changes_nothing(ready_tree: Path, tmp_path: Path) -> None:
    tree = copy_tree(ready_tree, tmp_path / "tree", hardlink=True)
    before = manifest(tree, content=False)
    out = retrofit_cmd("convert", "--sysroot", str(tree), "--dry-run").stdout
    assert "Phases:" in out and "/var -> /ostree/deploy/debian/var" in out
    assert "commit" in out and "MiB" in out
    assert manifest(tree, content=False) == before
