"""Failure at every phase boundary: resume reaches the same result as an uninterrupted
run, and --revert returns the tree to its exact pre-conversion state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convert.plan import PHASES
from retrofit import ostree as ot
from tests.treeutil import copy_tree, diff_manifests, manifest, retrofit_cmd

REF = "retrofit/debian/bookworm/amd64/base"


def root_tree_checksum(tree: Path) -> str:
    """The content checksum of the committed root tree (independent of the commit's
    timestamp and version), so two runs can be compared."""
    repo = ot.Repo(tree / "ostree/repo")
    csum = repo.resolve(REF)
    assert csum
    from gi.repository import OSTree

    ok, commit = repo.repo.load_variant(OSTree.ObjectType.COMMIT, csum)
    return OSTree.checksum_from_bytes(commit.get_child_value(6).get_data_as_bytes().get_data())


def deployed_etc(tree: Path) -> dict[str, object]:
    deps = sorted((tree / "ostree/deploy/debian/deploy").glob("*.0"))
    assert len(deps) == 1
    return manifest(deps[0] / "etc")


def full_manifest(tree: Path) -> dict[str, object]:
    return manifest(tree, skip=["proc", "sys", "dev"])


@pytest.fixture(scope="module")
def reference_result(
    ready_tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    tree = copy_tree(ready_tree, tmp_path_factory.mktemp("ref") / "tree", hardlink=True)
    retrofit_cmd("convert", "--sysroot", str(tree), "--yes")
    return {
        "tree_csum": root_tree_checksum(tree),
        "etc": deployed_etc(tree),
        "var": manifest(tree / "ostree/deploy/debian/var", content=False),
    }


# On the ready tree install-packages and bootloader have nothing to do (their
# failpoints still fire); test_install_packages_phase installs for real.
@pytest.mark.parametrize("failpoint", [*PHASES, "move-data:before", "deploy:before"])
def test_failpoint_then_resume_then_revert(
    failpoint: str, ready_tree: Path, tmp_path: Path, reference_result: dict[str, object]
) -> None:
    tree = copy_tree(ready_tree, tmp_path / "tree", hardlink=True)
    pristine = full_manifest(tree)

    killed = retrofit_cmd(
        "convert", "--sysroot", str(tree), "--yes", env={"RETROFIT_FAILPOINTS": failpoint}, ok=(-9,)
    )
    assert f"failpoint {failpoint} hit" in killed.stderr
    journal = json.loads((tree / "ostree/retrofit/journal.json").read_text())
    assert journal["state"] == "in-progress"

    st = json.loads(retrofit_cmd("status", "--sysroot", str(tree), "--json").stdout)
    assert st["conversion"]["state"] == "in-progress"

    # resume: the same result as an uninterrupted run
    retrofit_cmd("convert", "--sysroot", str(tree), "--yes")
    assert root_tree_checksum(tree) == reference_result["tree_csum"]
    assert not diff_manifests(reference_result["etc"], deployed_etc(tree))
    assert not diff_manifests(
        reference_result["var"], manifest(tree / "ostree/deploy/debian/var", content=False)
    )

    # revert: back to exactly the original tree
    retrofit_cmd("convert", "--sysroot", str(tree), "--revert")
    assert not diff_manifests(pristine, full_manifest(tree))


@pytest.mark.parametrize("failpoint", ["commit", "move-data", "deploy"])
def test_failpoint_then_revert(failpoint: str, ready_tree: Path, tmp_path: Path) -> None:
    """Revert straight from an interrupted conversion."""
    tree = copy_tree(ready_tree, tmp_path / "tree", hardlink=True)
    pristine = full_manifest(tree)
    retrofit_cmd(
        "convert", "--sysroot", str(tree), "--yes", env={"RETROFIT_FAILPOINTS": failpoint}, ok=(-9,)
    )
    retrofit_cmd("convert", "--sysroot", str(tree), "--revert")
    assert not diff_manifests(pristine, full_manifest(tree))


def test_install_packages_phase(reference_tree: Path, tmp_path: Path) -> None:
    """A tree without ostree/ostree-boot/bubblewrap gets them through apt, sandboxed;
    a kill right after, then revert, purges exactly what was installed."""
    tree = copy_tree(reference_tree, tmp_path / "tree")
    skip_volatile = ["proc", "sys", "dev"]
    pristine = manifest(tree, skip=skip_volatile)
    plan = retrofit_cmd("convert", "--sysroot", str(tree), "--dry-run").stdout
    assert "install ostree, ostree-boot, bubblewrap with apt (sandboxed in the tree)" in plan
    retrofit_cmd(
        "convert",
        "--sysroot",
        str(tree),
        "--yes",
        env={"RETROFIT_FAILPOINTS": "install-packages"},
        ok=(-9,),
    )
    status = (tree / "var/lib/dpkg/status").read_text()
    assert "Package: ostree-boot\n" in status
    assert not (tree / "usr/sbin/policy-rc.d").exists()
    retrofit_cmd("convert", "--sysroot", str(tree), "--revert")
    after = manifest(tree, skip=skip_volatile)
    diffs = diff_manifests(pristine, after, limit=50)
    assert not diffs, diffs


def test_adopt_usr_shares_inodes_and_reverts(ready_tree: Path, tmp_path: Path) -> None:
    """--adopt-usr: the repository's objects are the /usr files themselves (same
    inode), the deployment sees them with owners, modes and capabilities intact,
    fsck is clean, and revert leaves the tree as it was."""
    import os

    from retrofit.run import run

    tree = copy_tree(ready_tree, tmp_path / "tree", hardlink=True)
    pristine = full_manifest(tree)
    plan = retrofit_cmd("convert", "--sysroot", str(tree), "--dry-run", "--adopt-usr").stdout
    assert "/usr adopted by hardlink, no copy" in plan
    retrofit_cmd("convert", "--sysroot", str(tree), "--yes", "--adopt-usr")
    dep = sorted((tree / "ostree/deploy/debian/deploy").glob("*.0"))[0]
    for rel in ("usr/bin/ping", "usr/bin/passwd", "usr/lib/os-release"):
        assert os.stat(dep / rel).st_ino == os.stat(tree / rel).st_ino, rel
    assert os.getxattr(dep / "usr/bin/ping", "security.capability")
    assert os.stat(dep / "usr/bin/passwd").st_mode & 0o4000
    assert "no errors found" in run(["ostree", "fsck", f"--repo={tree}/ostree/repo"]).stdout
    retrofit_cmd("convert", "--sysroot", str(tree), "--revert")
    assert not diff_manifests(pristine, full_manifest(tree))
