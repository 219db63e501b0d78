"""retrofit convert on a real Debian 12 tree (mmdebstrap), with real ostree, dpkg and
bubblewrap. The tree carries local state: a user with a home, /etc edits and a 0600
secret, data under /var/lib, /srv, /opt, /usr/local and /root, a setuid binary, an
xattr and a file capability."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from retrofit import ostree as ot
from tests.treeutil import copy_tree, diff_manifests, in_tree, manifest, retrofit_cmd

STATEROOT = "debian"
REF = "retrofit/debian/bookworm/amd64/base"
# Moved out of /var into /usr (the deployment's /var has symlinks there instead).
RELOCATED = {
    "lib/dpkg": "usr/share/dpkg/database",
    "cache/debconf": "usr/share/debconf/database",
    "lib/ucf": "usr/share/ucf/database",
}
DATA = {
    "home": "home",
    "root": "roothome",
    "opt": "opt",
    "srv": "srv",
    "mnt": "mnt",
    "usr/local": "usrlocal",
}


def deployment_dir(tree: Path) -> Path:
    deps = sorted((tree / "ostree/deploy" / STATEROOT / "deploy").glob("*.0"))
    assert len(deps) == 1, deps
    return deps[0]


@pytest.fixture(scope="module")
def converted(ready_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One full conversion shared by the checks below (a full copy, not hardlinks)."""
    work = tmp_path_factory.mktemp("convert")
    tree = copy_tree(ready_tree, work / "tree")
    before = {
        "usr": manifest(tree / "usr", skip=["local"]),
        "etc": manifest(tree / "etc"),
        "var": manifest(tree / "var", skip=[*RELOCATED, *DATA.values()]),
        "state": {k: manifest(tree / "var" / k) for k in RELOCATED},
        "data": {k: manifest(tree / k) for k in DATA},
        "dpkg_l": in_tree(tree, "dpkg -l").stdout,
        "dpkg_V": in_tree(tree, "dpkg -V; echo rc=$?").stdout,
    }
    res = retrofit_cmd("convert", "--sysroot", str(tree), "--yes", "--json")
    return {"tree": tree, "before": before, "result": json.loads(res.stdout), "stderr": res.stderr}


def test_one_deployment_and_fsck_clean(converted: dict[str, object]) -> None:
    tree = converted["tree"]
    assert isinstance(tree, Path)
    status = ot.Sysroot(tree).deployments()
    assert [d.stateroot for d in status] == [STATEROOT]
    out = retrofit_cmd("status", "--sysroot", str(tree), "--json").stdout
    st = json.loads(out)
    assert st["apiVersion"] == 1
    assert len(st["deployments"]) == 1 and st["pending"] == st["deployments"][0]["checksum"]
    assert st["deployments"][0]["refspec"] == REF
    assert st["conversion"]["state"] == "complete"
    from retrofit.run import run

    admin = run(["ostree", "admin", f"--sysroot={tree}", "status"]).stdout
    assert admin.count(f"{STATEROOT} ") == 1, admin
    fsck = run(["ostree", "fsck", f"--repo={tree}/ostree/repo"]).stdout
    assert "no errors found" in fsck


def test_usr_identical_content_mode_owner_xattrs(converted: dict[str, object]) -> None:
    tree = converted["tree"]
    before = converted["before"]
    assert isinstance(tree, Path) and isinstance(before, dict)
    dep = deployment_dir(tree)
    after = manifest(
        dep / "usr",
        skip=[
            "local",
            "etc",
            "share/dpkg/database",
            "share/debconf/database",
            "share/ucf/database",
        ],
    )
    orig = before["usr"]
    # Additions: kernel + initramfs under modules/, the tmpfiles.d file.
    added = set(after) - set(orig)
    assert added <= {
        "lib/tmpfiles.d/retrofit-var.conf",
        "share/initramfs-tools/hooks/retrofit-ostree",
        "share/initramfs-tools/scripts/local-bottom/retrofit-ostree",
        "share/initramfs-tools/scripts/local-bottom",
        "libexec/retrofit",
        "libexec/retrofit/package-guard",
        *(
            p
            for p in after
            if p.startswith("lib/modules/")
            and p.endswith(("/vmlinuz", "/initramfs.img", "/config", "/retrofit-initramfs.json"))
        ),
    }, sorted(added)[:10]
    missing = set(orig) - set(after)
    assert not missing, sorted(missing)[:10]
    diffs = []
    for path, ent in orig.items():
        got = after[path]
        if path.endswith(".pyc") and "__pycache__" in path:
            # bytecode: same except the source-mtime field (see below)
            assert got[1:] == ent[1:], path
            continue
        if got != ent:
            diffs.append(f"{path}: {ent} != {got}")
    assert not diffs, diffs[:10]
    # the capability and the user xattr survived
    ping = after["bin/ping"]
    assert any(name == "security.capability" for name, _ in ping[4]), ping
    assert any(name == "user.retrofit" for name, _ in after["share/doc/less/copyright"][4])
    assert after["bin/passwd"][1] & 0o4000


def test_bytecode_valid_after_commit(converted: dict[str, object]) -> None:
    """OSTree sets every mtime to 0: the pyc source-mtime field must say 0 too."""
    tree = converted["tree"]
    assert isinstance(tree, Path)
    dep = deployment_dir(tree)
    pycs = list((dep / "usr/lib/python3/dist-packages/yaml/__pycache__").glob("*.pyc"))
    assert pycs
    for pyc in pycs:
        src = pyc.parent.parent / (pyc.name.split(".")[0] + ".py")
        header = pyc.read_bytes()[:16]
        assert os.stat(src).st_mtime == 0
        assert int.from_bytes(header[8:12], "little") == 0, pyc
        assert int.from_bytes(header[12:16], "little") == os.stat(src).st_size
    # and python really uses it without rewriting (read-only /usr, -X dont-write)
    r = in_tree(
        dep,
        "python3 -v -c 'import yaml' 2>&1 "
        "| grep -c 'matches /usr/lib/python3/dist-packages/yaml/__init__.py' || true",
    )
    assert int(r.stdout.strip() or 0) >= 1, r.stdout


def test_etc_equals_original(converted: dict[str, object]) -> None:
    tree = converted["tree"]
    before = converted["before"]
    assert isinstance(tree, Path) and isinstance(before, dict)
    dep = deployment_dir(tree)
    # the only additions: the guards that make apt/dpkg name the retrofit verbs
    guards = {"apt/apt.conf.d/99retrofit-guard", "dpkg/dpkg.cfg.d/retrofit-guard"}
    etc = manifest(dep / "etc")
    assert guards <= set(etc)
    assert not diff_manifests(before["etc"], {k: v for k, v in etc.items() if k not in guards})
    usr_etc = manifest(dep / "usr/etc")
    assert not diff_manifests(before["etc"], {k: v for k, v in usr_etc.items() if k not in guards})
    assert (dep / "etc/myapp/secret").stat().st_mode & 0o777 == 0o600
    assert "PermitRootLogin no" in (dep / "etc/ssh/sshd_config").read_text()


def test_data_present_through_deployment_paths(converted: dict[str, object]) -> None:
    tree = converted["tree"]
    before = converted["before"]
    assert isinstance(tree, Path) and isinstance(before, dict)
    sr_var = tree / "ostree/deploy" / STATEROOT / "var"
    dep = deployment_dir(tree)
    # /var (minus the relocated package state) is the stateroot's var
    var_after = manifest(sr_var, skip=[*RELOCATED, *DATA.values(), ".ostree-selabeled"])
    assert not diff_manifests(before["var"], var_after)
    # /home, /root, /opt, /srv, /mnt, /usr/local through the deployment's symlinks
    for src, target in DATA.items():
        link = dep / src
        assert link.is_symlink(), src
        assert os.readlink(link) in (f"var/{target}", f"../var/{target}")
        assert not diff_manifests(before["data"][src], manifest(sr_var / target)), src
    # package state moved into /usr, /var links to it; the commit holds the same
    for var_rel, usr_rel in RELOCATED.items():
        assert os.readlink(sr_var / var_rel) == f"/{usr_rel}"
        assert not diff_manifests(
            before["state"][var_rel],
            manifest(dep / usr_rel),
        ), var_rel
    assert (sr_var / "lib/myapp/db/data.bin").stat().st_size == 4 << 20
    assert os.getxattr(sr_var / "lib/myapp/db/table.csv", "user.retrofit") == b"keep"


def test_old_system_still_sees_its_data(converted: dict[str, object]) -> None:
    """The pre-conversion root stays bootable: its paths resolve to the moved data."""
    tree = converted["tree"]
    before = converted["before"]
    assert isinstance(tree, Path) and isinstance(before, dict)
    r = in_tree(
        tree,
        "cat /home/alice/notes.txt; stat -c %a /usr/local/bin/hello; "
        "dpkg -l | wc -l; cat /var/lib/myapp/db/table.csv",
    )
    lines = r.stdout.split()
    assert lines[0:2] == ["alice", "notes"] and lines[2] == "4755"
    assert lines[-1] == "row1"
    assert int(lines[3]) == len(str(before["dpkg_l"]).splitlines())


def test_dpkg_inside_deployment_agrees(converted: dict[str, object]) -> None:
    tree = converted["tree"]
    before = converted["before"]
    assert isinstance(tree, Path) and isinstance(before, dict)
    dep = deployment_dir(tree)
    binds = [
        (str(tree / "ostree/deploy" / STATEROOT / "var"), "/var"),
        (str(tree / "boot"), "/boot"),
    ]
    assert in_tree(dep, "dpkg -l", binds).stdout == before["dpkg_l"]
    assert in_tree(dep, "dpkg -V; echo rc=$?", binds).stdout == before["dpkg_V"]


def test_tmpfiles_and_kernel(converted: dict[str, object]) -> None:
    tree = converted["tree"]
    assert isinstance(tree, Path)
    dep = deployment_dir(tree)
    conf = (dep / "usr/lib/tmpfiles.d/retrofit-var.conf").read_text()
    assert "L /var/lib/dpkg - - - - /usr/share/dpkg/database" in conf
    assert "d /var/lib/nginx " in conf  # a directory a package owns under /var
    kernels = list((dep / "usr/lib/modules").glob("*/vmlinuz"))
    assert kernels and (kernels[0].parent / "initramfs.img").exists()
    entries = list((tree / "boot/loader/entries").glob("ostree-*.conf"))
    assert len(entries) == 1
    options = next(ln for ln in entries[0].read_text().splitlines() if ln.startswith("options"))
    assert "root=/dev/vda1" in options and "console=ttyS0" in options and "ostree=" in options


def test_second_convert_refuses_and_changes_nothing(converted: dict[str, object]) -> None:
    tree = converted["tree"]
    assert isinstance(tree, Path)
    before = manifest(tree / "ostree", skip=["repo/objects", "deploy"], content=True)
    r = retrofit_cmd("convert", "--sysroot", str(tree), "--yes", ok=(1,))
    assert "already converted" in r.stderr
    assert "hint: use the day-two verbs" in r.stderr
    assert manifest(tree / "ostree", skip=["repo/objects", "deploy"]) == before


def test_initramfs_in_commit_can_boot_ostree(converted: dict[str, object]) -> None:
    """The commit's initramfs carries ostree-prepare-root and the local-bottom script
    (initramfs-tools), built by the tree's own mkinitramfs; the host's is untouched."""
    tree = converted["tree"]
    assert isinstance(tree, Path)
    dep = deployment_dir(tree)
    img = next((dep / "usr/lib/modules").glob("*/initramfs.img"))
    listing = in_tree(dep, f"lsinitramfs /usr/lib/modules/{img.parent.name}/initramfs.img").stdout
    assert "usr/lib/ostree/ostree-prepare-root" in listing.split()
    assert "scripts/local-bottom/retrofit-ostree" in listing.split()
    host = next((tree / "boot").glob("initrd.img-*"))
    host_listing = in_tree(tree, f"lsinitramfs /boot/{host.name}").stdout
    assert "usr/lib/ostree/ostree-prepare-root" not in host_listing.split()
