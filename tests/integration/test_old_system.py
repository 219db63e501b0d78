"""``retrofit cleanup --old-system`` on a converted real Debian 12 tree: refused until
the converted system has proven itself, a dry run changes nothing, the real run
removes the old /usr, /etc, merged-/usr links, data symlinks and kernels — and
nothing of the deployment, the repository or the user's data — and
``convert --revert`` refuses afterwards."""

from __future__ import annotations

import json
from pathlib import Path

from retrofit.run import run
from tests.treeutil import copy_tree, manifest, retrofit_cmd

STATEROOT = "debian"


def _tree_state(tree: Path) -> dict[str, object]:
    return {p.name: p.is_symlink() or p.exists() for p in sorted(tree.iterdir())}


def test_cleanup_old_system(ready_tree: Path, tmp_path: Path) -> None:
    tree = copy_tree(ready_tree, tmp_path / "tree")
    retrofit_cmd("convert", "--sysroot", str(tree), "--yes")
    var = tree / "ostree/deploy" / STATEROOT / "var"
    data_before = manifest(var)
    kernels = sorted(p.name for p in (tree / "boot").glob("vmlinuz-*"))
    assert kernels, "the reference tree has a kernel in /boot"
    assert (tree / "usr/bin/dpkg").exists() and (tree / "home").is_symlink()

    # not confirmed: refused with a hint, nothing touched
    before = _tree_state(tree)
    r = retrofit_cmd("cleanup", "--old-system", "--sysroot", str(tree), ok=(1,))
    assert "not yet proven itself" in r.stderr and "hint:" in r.stderr, r.stderr
    assert _tree_state(tree) == before

    # dry run: the list, and nothing touched
    out = retrofit_cmd(
        "cleanup", "--old-system", "--force", "--dry-run", "--json", "--sysroot", str(tree)
    ).stdout
    rep = json.loads(out)
    paths = {i["path"] for i in rep["items"]}
    assert f"{tree}/usr" in paths and f"{tree}/etc" in paths and f"{tree}/home" in paths
    assert any(p.endswith(f"/boot/{kernels[0]}") for p in paths), paths
    assert rep["freed_bytes"] > 100 * 2**20, rep["freed_bytes"]
    assert _tree_state(tree) == before

    retrofit_cmd("cleanup", "--old-system", "--force", "--sysroot", str(tree))
    for name in ("usr", "etc", "bin", "sbin", "lib", "home", "root", "var", "srv", "opt"):
        assert not (tree / name).is_symlink() and not (tree / name).exists(), name
    assert not list((tree / "boot").glob("vmlinuz-*"))
    assert not (tree / "ostree/retrofit/old-system.trash").exists()
    # the deployment, the repository and the data are whole
    dep = next((tree / "ostree/deploy" / STATEROOT / "deploy").glob("*.0"))
    assert (dep / "usr/bin/dpkg").is_file() and (dep / "usr/etc/passwd").is_file()
    assert manifest(var) == data_before
    st = retrofit_cmd("status", "--sysroot", str(tree), "--json").stdout
    assert json.loads(st)["deployments"], "the deployment is gone"
    run(["ostree", "fsck", f"--repo={tree}/ostree/repo"])  # raises on corruption

    # twice: nothing to do; revert: refused
    retrofit_cmd("cleanup", "--old-system", "--force", "--sysroot", str(tree), ok=(77,))
    r = retrofit_cmd("convert", "--sysroot", str(tree), "--revert", ok=(1,))
    assert "cleanup --old-system" in r.stderr, r.stderr
