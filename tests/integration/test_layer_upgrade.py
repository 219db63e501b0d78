"""New bases under a layer: a centrally composed base pulled from an OSTree remote
(rebase, then upgrade), and a local base upgraded here by apt-get dist-upgrade in the
sandbox. The layered requests survive; one the new base already meets is dropped."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from retrofit import ostree as ot
from retrofit.run import run
from tests.integration.test_layering import (
    BASE_REF,
    DB,
    LAYER_CACHE,
    LAYERED_REF,
    convert,
    deployments,
    error_line,
    fsck,
    installed,
    make_deb,
    rf,
)

CENTRAL_REF = "debian/bookworm/x86_64/base"
# Older than bookworm's less (590-2.1~deb12u2), new enough for systemd's Breaks (<< 563).
OLD_LESS = "581-0retrofit1"


def dpkg_in(checkout: Path, debs: Sequence[Path], *opts: str) -> None:
    """dpkg inside a checkout of a commit, the way a compose server would run it:
    /etc is usr/etc, the database the one relocated into /usr, /var a scratch tmpfs."""
    etc = checkout / "etc"
    etc.mkdir(exist_ok=True)
    argv = ["bwrap", "--bind", str(checkout), "/", "--bind", str(checkout / "usr/etc"), "/etc",
            "--tmpfs", "/var", "--bind", str(checkout / DB), "/var/lib/dpkg",
            "--bind", str(checkout / "usr/share/debconf/database"), "/var/cache/debconf",
            "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run",
            "--unshare-net", "--unshare-pid"]  # fmt: skip
    for i, deb in enumerate(debs):
        argv += ["--ro-bind", str(deb), f"/tmp/{i}-{deb.name}"]
    argv += ["--", "dpkg", "--log=/dev/null", *opts, "-i"]
    argv += [f"/tmp/{i}-{deb.name}" for i, deb in enumerate(debs)]
    run(argv)
    etc.rmdir()


def commit_checkout(repo: Path, checkout: Path, branch: str, version: str) -> str:
    parent = ot.Repo(repo).resolve(branch)
    argv = ["ostree", "commit", f"--repo={repo}", f"--branch={branch}", "--link-checkout-speedup",
            f"--tree=dir={checkout}", f"--add-metadata-string=version={version}",
            "--add-metadata=ostree.bootable=true", f"--subject=test base {version}"]  # fmt: skip
    if parent:
        argv.append(f"--parent={parent}")
    return run(argv).stdout.strip()


def checkout(repo: Path, ref: str, dest: Path) -> Path:
    run(["ostree", "checkout", f"--repo={repo}", ref, str(dest)])  # hardlinks
    return dest


@pytest.fixture(scope="module")
def tree(ready_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One converted tree for the module (the second test starts by rebasing back to
    the local base, whatever the first left)."""
    t = convert(ready_tree, tmp_path_factory.mktemp("upgrade") / "tree")
    yield t
    run(["chattr", "-R", "-i", str(t / "ostree/deploy")], ok=(0, 1))


def test_new_bases_keep_the_layer(tree: Path, tmp_path: Path) -> None:
    repo = tree / "ostree/repo"
    rf("install", "--sysroot", str(tree), "htop")
    htop_debs = sorted(
        p for p in (LAYER_CACHE / "debs").glob("*.deb")
        if p.name.startswith(("htop_", "libnl-3-200_", "libnl-genl-3-200_"))
    )  # fmt: skip
    assert len(htop_debs) == 3

    # -- a central build server: its own repository, a newer base with "basetool"
    central = tmp_path / "central"
    run(["ostree", "init", f"--repo={central}", "--mode=bare"])
    run(["ostree", "pull-local", f"--repo={central}", str(repo), BASE_REF])
    tool = make_deb(tmp_path, "basetool", files={"usr/bin/basetool": "#!/bin/sh\necho tool\n"})
    co = checkout(central, BASE_REF, tmp_path / "co1")
    dpkg_in(co, [tool])
    c1 = commit_checkout(central, co, CENTRAL_REF, "12.central.1")
    run(["ostree", "remote", "add", f"--repo={repo}", "--no-gpg-verify", "central",
         f"file://{central}"])  # fmt: skip

    # rebase: the new base under the same layer, requests unchanged
    r = rf("rebase", "--sysroot", str(tree), f"central:{CENTRAL_REF}")
    assert "+ basetool 1.0" in r.stdout
    d = deployments(tree)[0]
    root = Path(d.path)
    assert d.origin_refspec == LAYERED_REF
    assert d.origin["retrofit"]["base-refspec"] == f"central:{CENTRAL_REF}"
    assert d.origin["retrofit"]["requested-packages"] == "htop"
    assert (root / "usr/bin/basetool").is_file() and (root / "usr/bin/htop").is_file()
    assert {"basetool", "htop"} <= set(installed(root))
    meta = ot.Repo(repo).commit_metadata(d.checksum)
    assert meta["retrofit.base-commit"] == c1
    assert "LayeredPackages: htop" in rf("status", "--sysroot", str(tree)).stdout
    rf("rebase", "--sysroot", str(tree), f"central:{CENTRAL_REF}", ok=(77,))
    rf("upgrade", "--sysroot", str(tree), "--check", ok=(77,))

    # the central base gains htop: upgrade pulls it, the request is dropped (with a
    # note) and the deployment is the base itself
    dpkg_in(co, htop_debs)
    c2 = commit_checkout(central, co, CENTRAL_REF, "12.central.2")
    check = rf("upgrade", "--sysroot", str(tree), "--check")
    assert c2[:12] in check.stderr and "Upgrade available" in check.stdout
    r = rf("upgrade", "--sysroot", str(tree))
    assert "htop is already in the base: dropped from the layered requests" in r.stderr
    d = deployments(tree)[0]
    assert d.checksum == c2 and d.origin_refspec == f"central:{CENTRAL_REF}"
    assert d.origin["retrofit"]["requested-packages"] == ""
    assert (Path(d.path) / "usr/bin/htop").is_file()
    rf("upgrade", "--sysroot", str(tree), "--check", ok=(77,))
    fsck(tree)


def test_local_base_upgrade(tree: Path, tmp_path: Path) -> None:
    """The converted base, made older on purpose (less replaced by a fake older one), is
    upgraded here: apt-get dist-upgrade in the sandbox brings less back from the
    archive; the layer (htop) is applied on top of the new base."""
    repo = tree / "ostree/repo"
    fake = make_deb(tmp_path, "less", version=OLD_LESS, fields={"Architecture": "amd64"},
                    files={"usr/share/doc/less/FAKE": "old\n"})  # fmt: skip
    co = checkout(repo, BASE_REF, tmp_path / "old-base")
    dpkg_in(co, [fake], "--force-downgrade")
    old_base = commit_checkout(repo, co, BASE_REF, "12.old")
    rf("rebase", "--sysroot", str(tree), BASE_REF)  # the deployment is now on it
    rf("install", "--sysroot", str(tree), "htop")
    assert installed(Path(deployments(tree)[0].path))["less"] == OLD_LESS

    check = rf("upgrade", "--sysroot", str(tree), "--check")
    m = re.search(rf"^  ~ less {re.escape(OLD_LESS)} -> (\S+)$", check.stdout, re.M)
    assert m, check.stdout
    new_less = m.group(1)
    preview = rf("upgrade", "--sysroot", str(tree), "--preview")
    assert f"~ less {OLD_LESS} -> {new_less}" in preview.stdout
    assert "Dry run: nothing was deployed." in preview.stdout
    n = len(deployments(tree))

    r = rf("upgrade", "--sysroot", str(tree), "--json")
    assert '"name": "less"' in r.stdout
    d = deployments(tree)[0]
    assert len(deployments(tree)) >= 2 and n >= 2
    root = Path(d.path)
    pkgs = installed(root)
    assert pkgs["less"] == new_less and "htop" in pkgs
    assert (root / "usr/bin/less").is_file() and not (root / "usr/share/doc/less/FAKE").exists()
    assert d.origin_refspec == LAYERED_REF
    assert d.origin["retrofit"]["requested-packages"] == "htop"
    # the new base is a commit of its own, child of the old one, and the base ref's tip
    new_base = ot.Repo(repo).resolve(BASE_REF)
    assert new_base != old_base
    meta = ot.Repo(repo).commit_metadata(new_base)
    assert meta["retrofit.source"] == "upgrade"
    from dpkg_layer import ostreeops

    assert ostreeops.commit_parent(ot.Repo(repo), new_base) == old_base
    assert ot.Repo(repo).commit_metadata(d.checksum)["retrofit.base-commit"] == new_base
    base_pkgs = {
        ln.split(": ", 1)[1]
        for ln in (ostreeops.read_file(ot.Repo(repo), new_base, f"{DB}/status") or b"")
        .decode()
        .splitlines()
        if ln.startswith("Package: ")
    }
    assert "htop" not in base_pkgs and "less" in base_pkgs
    r = rf("upgrade", "--sysroot", str(tree), "--check", ok=(77,))
    assert "no upgrade available" in error_line(r)
    fsck(tree)
