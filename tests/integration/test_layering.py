"""Package layering on a converted real Debian 12 tree (--sysroot): real apt lists
and downloads (cached across runs), real dpkg in bubblewrap over rofiles-fuse, real
ostree commits and deployments.

The tests of this module share one converted tree and run in order; each checks
its own before/after, so a failure does not hide behind another."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from retrofit import ostree as ot
from retrofit.run import Result, run
from tests.treeutil import copy_tree, manifest, retrofit_cmd

BASE_REF = "retrofit/debian/bookworm/amd64/base"
LAYERED_REF = "retrofit/debian/bookworm/amd64/layered"
DB = "usr/share/dpkg/database"
# Shared by every test tree: lists and downloads survive the throwaway trees.
LAYER_CACHE = Path(os.environ.get("RETROFIT_CACHE", "/var/cache/retrofit")) / "layer-cache"

# Until retrofit/cli.py registers the layering verbs itself, add them here (a no-op
# once it does).
_CLI = """
import argparse, sys
from retrofit import cli, layer_cmd
_build = cli.build_parser
def build_parser():
    p = _build()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    if "install" not in sub.choices:
        layer_cmd.register(sub, sub.add_parser)
    return p
cli.build_parser = build_parser
sys.exit(cli.main(sys.argv[1:]))
"""


def rf(*args: str, ok: Sequence[int] = (0,), env: Mapping[str, str] | None = None) -> Result:
    """The retrofit command line, with the shared layering cache."""
    full = {"RETROFIT_LAYER_CACHE": str(LAYER_CACHE), **(env or {})}
    return run([sys.executable, "-c", _CLI, *args], env=full, ok=tuple(ok),
               cwd=Path(__file__).parents[2])  # fmt: skip


def error_line(r: Result) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("retrofit: ")]
    assert lines, r.stderr
    return lines[-1]


def make_deb(
    workdir: Path,
    name: str,
    *,
    version: str = "1.0",
    fields: Mapping[str, str] | None = None,
    files: Mapping[str, str] | None = None,
    dirs: Sequence[str] = (),
    scripts: Mapping[str, str] | None = None,
) -> Path:
    """A real .deb (dpkg-deb --build); unlike tests/debs.py it can ship empty
    directories and any maintainer script."""
    root = workdir / f"{name}-{version}-pkg"
    (root / "DEBIAN").mkdir(parents=True)
    control = {
        "Package": name,
        "Version": version,
        "Architecture": "all",
        "Maintainer": "retrofit tests <tests@example.invalid>",
        "Description": f"retrofit layering test package {name}",
        **(fields or {}),
    }
    (root / "DEBIAN/control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
    for script, text in (scripts or {}).items():
        p = root / "DEBIAN" / script
        p.write_text(text)
        p.chmod(0o755)
    for d in dirs:
        (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for path, text in (files or {}).items():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        if path.startswith(("/etc/init.d/", "etc/init.d/", "/usr/bin/", "usr/bin/")):
            dest.chmod(0o755)
    out = workdir / f"{name}_{version}_all.deb"
    run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)])
    return out


def deployments(tree: Path) -> list[ot.Deployment]:
    return ot.Sysroot(tree).deployments()


def default_root(tree: Path) -> Path:
    return Path(deployments(tree)[0].path)


def installed(root: Path) -> dict[str, str]:
    from retrofit import dpkgdb

    return {n: p.version for n, p in dpkgdb.installed(root / DB).items()}


def fsck(tree: Path) -> None:
    out = run(["ostree", "fsck", f"--repo={tree}/ostree/repo"]).stdout
    assert "no errors found" in out, out


def convert(ready_tree: Path, dest: Path) -> Path:
    tree = copy_tree(ready_tree, dest, hardlink=True)
    retrofit_cmd("convert", "--sysroot", str(tree), "--yes")
    return tree


def state(tree: Path) -> dict[str, object]:
    """What a refused command must leave exactly as it was: every path of the sysroot
    (type, mode, owner, xattrs; sizes and hashes of everything outside the object
    store), refs and deployments."""
    skip = ("ostree/repo/objects", "ostree/repo/tmp", "ostree/repo/refs")
    return {
        "files": manifest(tree, skip=skip),
        "objects": sorted(p.name for p in (tree / "ostree/repo/objects").glob("*/*")),
        "refs": ot.Repo(tree / "ostree/repo").refs(),
        "deployments": [(d.checksum, d.serial, d.origin) for d in deployments(tree)],
    }


@pytest.fixture(scope="module")
def tree(ready_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    t = convert(ready_tree, tmp_path_factory.mktemp("layering") / "tree")
    yield t
    run(["chattr", "-R", "-i", str(t / "ostree/deploy")], ok=(0, 1))


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("debs")


def test_install_htop_deploys_and_rolls_back(tree: Path) -> None:
    before = deployments(tree)
    base = before[0]
    base_db = (Path(base.path) / DB / "status").read_bytes()
    assert "htop" not in installed(Path(base.path))
    objects_before = len(list((tree / "ostree/repo/objects").glob("*/*")))

    r = rf("install", "--sysroot", str(tree), "htop", "--json")
    result = json.loads(r.stdout)
    assert {c["name"] for c in result["changes"]} >= {"htop", "libnl-3-200", "libnl-genl-3-200"}
    assert all(c["old"] is None for c in result["changes"])

    deps = deployments(tree)
    new = deps[0]
    assert len(deps) == len(before) + 1 and new.checksum == result["deployed"]
    assert (base.checksum, base.serial) == (deps[1].checksum, deps[1].serial)
    root = Path(new.path)
    assert (root / "usr/bin/htop").is_file()
    assert installed(root)["htop"] == next(
        c["new"] for c in result["changes"] if c["name"] == "htop"
    )
    # requests in the origin, the ref, and the commit (a child of the base)
    assert new.origin_refspec == LAYERED_REF
    assert new.origin["retrofit"]["requested-packages"] == "htop"
    assert new.origin["retrofit"]["base-refspec"] == BASE_REF
    repo = ot.Repo(tree / "ostree/repo")
    assert repo.resolve(LAYERED_REF) == new.checksum
    meta = repo.commit_metadata(new.checksum)
    assert meta["retrofit.base-commit"] == base.checksum
    assert list(meta["retrofit.requested-packages"]) == ["htop"]
    from dpkg_layer import ostreeops

    assert ostreeops.commit_parent(repo, new.checksum) == base.checksum
    # the commit wrote only what is new: htop's files and the changed metadata
    objects_after = len(list((tree / "ostree/repo/objects").glob("*/*")))
    assert objects_after - objects_before == result["objects_written"]
    assert 0 < result["objects_written"] < 200
    # the base deployment is as it was
    assert (Path(base.path) / DB / "status").read_bytes() == base_db
    assert not (Path(base.path) / "usr/bin/htop").exists()
    fsck(tree)

    status = rf("status", "--sysroot", str(tree)).stdout
    assert "LayeredPackages: htop" in status
    diff = rf("db", "diff", "--sysroot", str(tree)).stdout
    assert re.search(r"^  \+ htop \S+$", diff, re.M), diff

    out = rf("rollback", "--sysroot", str(tree)).stdout
    assert base.name in out
    assert (deployments(tree)[0].checksum, deployments(tree)[0].serial) == (
        base.checksum,
        base.serial,
    )
    rf("rollback", "--sysroot", str(tree))
    assert deployments(tree)[0].checksum == new.checksum

    # asking again is nothing to do
    again = rf("install", "--sysroot", str(tree), "htop", ok=(77,))
    assert "already requested: htop" in error_line(again)


def test_local_deb_with_user_and_var_dir(tree: Path, debs: Path, tmp_path: Path) -> None:
    deb = make_deb(
        debs,
        "newsvc",
        fields={"Depends": "passwd"},
        dirs=["var/lib/newsvc"],
        files={"usr/share/newsvc/README": "newsvc\n"},
        scripts={
            "postinst": """#!/bin/sh
set -e
if [ "$1" = configure ]; then
    getent passwd newsvc >/dev/null || useradd --system --user-group \\
        --home-dir /var/lib/newsvc --no-create-home --shell /usr/sbin/nologin newsvc
    mkdir -p /var/lib/newsvc/state
    echo seed > /var/lib/newsvc/state/seed.db
    chown -R newsvc:newsvc /var/lib/newsvc
    chmod 0750 /var/lib/newsvc
fi
"""
        },
    )
    import hashlib

    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    r = rf("install", "--sysroot", str(tree), str(deb))
    assert "+ newsvc 1.0" in r.stdout
    new = deployments(tree)[0]
    root = Path(new.path)
    assert new.origin["retrofit"]["requested-local-packages"] == f"{sha}:newsvc"
    assert new.origin["retrofit"]["requested-packages"] == "htop"  # kept
    assert (tree / f"ostree/deploy/debian/var/lib/retrofit/local-debs/{sha}.deb").is_file()
    assert installed(root)["newsvc"] == "1.0" and "htop" in installed(root)

    # the user is in the deployment's merged /etc (and its /usr/etc)
    passwd = (root / "etc/passwd").read_text()
    entry = next(ln for ln in passwd.splitlines() if ln.startswith("newsvc:"))
    uid = int(entry.split(":")[2])
    assert "\nnewsvc:" in (root / "usr/etc/passwd").read_text()
    assert "\nnewsvc:" in (root / "etc/group").read_text()
    assert "\nnewsvc:" in (root / "etc/shadow").read_text()
    assert "\nalice:" in passwd  # local users are still there

    # /var/lib/newsvc is not in the commit but made at boot from tmpfiles.d
    assert not any((root / "var").iterdir())
    conf = (root / "usr/lib/tmpfiles.d/retrofit-layer.conf").read_text()
    assert "d /var/lib/newsvc 0750 newsvc newsvc -\n" in conf, conf
    assert (
        "C /var/lib/newsvc/state/seed.db - - - - /usr/share/factory/var/lib/newsvc/state/seed.db"
        in conf
    )
    var = tmp_path / "scratch-var"
    (var / "lib").mkdir(parents=True)
    run(["bwrap", "--ro-bind", str(root), "/", "--bind", str(var), "/var",
         "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run", "--",
         "systemd-tmpfiles", "--create", "/usr/lib/tmpfiles.d/retrofit-layer.conf"])  # fmt: skip
    st = (var / "lib/newsvc").stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (uid, 0o750)
    seed = var / "lib/newsvc/state/seed.db"
    assert seed.read_text() == "seed\n" and seed.stat().st_uid == uid
    fsck(tree)


def test_refusals_leave_everything_as_it_was(tree: Path, debs: Path, tmp_path: Path) -> None:
    failing = make_deb(
        debs, "failpost",
        scripts={"postinst": '#!/bin/sh\necho "failpost: cannot configure" >&2\nexit 3\n'},
    )  # fmt: skip
    conflicting = make_deb(debs, "lessclash", fields={"Conflicts": "less"})
    not_deb = tmp_path / "notes.deb"
    not_deb.write_text("this is not a package\n")
    before = state(tree)
    # newsvc (layered by the test above) needs passwd; without it, apt's own users do
    layered_newsvc = (
        ":newsvc" in deployments(tree)[0].origin["retrofit"]["requested-local-packages"]
    )
    passwd_refusal = (
        "passwd cannot be removed: layered package newsvc needs it"
        if layered_newsvc
        else "removing passwd would break base packages that need it: "
    )
    dpkg_failed = (
        "dpkg failed in the sandbox: failpost: installed failpost package post-installation "
        "script subprocess returned error exit status 3 (it said: failpost: cannot configure)"
    )
    cases = [
        (["install", str(failing)], 1, f"install: {dpkg_failed}"),
        (["install", str(conflicting)], 1, "install: lessclash conflicts with base package less"),
        (["install", "no-such-pkg", "htop-nope"], 1,
         "install: unknown packages: htop-nope, no-such-pkg"),
        (["install", str(not_deb)], 1, f"install: {not_deb} is not a Debian package"),
        (["install", "Bad_Name"], 2, "install: not a package name: Bad_Name"),
        (["install", "less"], 77, "install: already in the base: less ("),
        (["uninstall", "less"], 2, "uninstall: less is part of the base, not layered"),
        (["override", "remove", "no-such-pkg"], 2,
         "override remove: not installed in the base: no-such-pkg"),
        (["override", "remove", "adduser"], 1,
         "override remove: removing adduser would break base packages that need it: "),
        (["override", "remove", "passwd"], 1, f"override remove: {passwd_refusal}"),
        (["override", "remove", "coreutils"], 1,
         "override remove: coreutils is an essential package"),
    ]  # fmt: skip
    for argv, code, expect in cases:
        r = rf(argv[0], "--sysroot", str(tree), *argv[1:], ok=(code,))
        line = error_line(r)
        assert line.startswith(f"retrofit: {expect}"), (argv, line)
        assert "hint: " in r.stderr, r.stderr
    after = state(tree)
    assert after == before
    assert not list((tree / "ostree/retrofit").glob("layer-work.*"))
    fsck(tree)


def test_sandbox_keeps_scripts_in(tree: Path, debs: Path) -> None:
    """A postinst that writes outside the checkout, appends in place to a file that
    is a repository object, reaches for the network, starts a service and leaves a
    daemon behind: none of it reaches the host or the repository."""
    deb = make_deb(
        debs,
        "escape",
        files={
            "etc/init.d/escape": "#!/bin/sh\n"
            '[ "$1" = start ] && touch /usr/share/escape/service-started\nexit 0\n',
            "usr/share/escape/README": "x\n",
        },
        scripts={
            "postinst": """#!/bin/sh
[ "$1" = configure ] || exit 0
R=/usr/share/escape
for p in /retrofit-escape-marker /sysroot/ostree/repo/config /ostree/repo/objects/escape \\
         /proc/1/root/retrofit-escape-proc; do
    if (echo pwned > "$p") 2>/dev/null; then echo "$p" >> $R/wrote; fi
done
echo "appended in place" >> /usr/share/doc/less/copyright
chmod 0600 /usr/share/doc/sudo/copyright
if python3 -c "import socket; socket.create_connection(('151.101.2.132', 80), 3)" 2>/dev/null
then echo up > $R/network; else echo down > $R/network; fi
/usr/sbin/policy-rc.d escape start; echo $? > $R/policy
invoke-rc.d escape start
start-stop-daemon --start --background --exec /bin/sleep -- 31337 && echo yes > $R/daemon
exit 0
"""
        },
    )
    old = deployments(tree)[0]
    repo_config = (tree / "ostree/repo/config").read_bytes()
    base_copyright = (Path(old.path) / "usr/share/doc/less/copyright").read_bytes()
    rf("install", "--sysroot", str(tree), str(deb))
    root = Path(deployments(tree)[0].path)
    share = root / "usr/share/escape"
    # writes "outside" landed inside the checkout (its root), never on the host
    wrote = (share / "wrote").read_text().split()
    assert wrote == ["/retrofit-escape-marker", "/proc/1/root/retrofit-escape-proc"]
    assert (root / "retrofit-escape-marker").is_file()
    assert not Path("/retrofit-escape-marker").exists()
    assert not Path("/retrofit-escape-proc").exists()
    assert (tree / "ostree/repo/config").read_bytes() == repo_config
    assert not (tree / "ostree/repo/objects/escape").exists()
    # the in-place append and chmod hit a private copy, not the shared object
    assert (root / "usr/share/doc/less/copyright").read_bytes().endswith(b"appended in place\n")
    assert (Path(old.path) / "usr/share/doc/less/copyright").read_bytes() == base_copyright
    assert (Path(old.path) / "usr/share/doc/sudo/copyright").stat().st_mode & 0o777 == 0o644
    fsck(tree)
    # no network, no service start, no daemon left running
    assert (share / "network").read_text() == "down\n"
    assert (share / "policy").read_text() == "101\n"
    assert not (share / "service-started").exists()
    assert (share / "daemon").read_text() == "yes\n"  # it did start, inside the sandbox...
    ps = run(["ps", "-eo", "args"]).stdout
    assert "sleep 31337" not in ps  # ...and died with it
    assert not (root / "usr/sbin/policy-rc.d").exists()  # the sandbox's, not committed


def test_uninstall_override_and_cleanup(tree: Path) -> None:
    start = deployments(tree)[0]
    assert "escape" in start.origin["retrofit"]["requested-local-packages"]
    rf("uninstall", "--sysroot", str(tree), "escape", "htop")
    root = default_root(tree)
    pkgs = installed(root)
    assert "escape" not in pkgs and "htop" not in pkgs and "newsvc" in pkgs
    assert not (root / "usr/bin/htop").exists()
    assert not (root / "retrofit-escape-marker").exists()  # rebuilt from the base
    assert deployments(tree)[0].origin["retrofit"]["requested-packages"] == ""

    r = rf("override", "remove", "--sysroot", str(tree), "less")
    assert "- less " in r.stdout
    d = deployments(tree)[0]
    assert d.origin["retrofit"]["removed-base-packages"] == "less"
    assert not (Path(d.path) / "usr/bin/less").exists()
    assert "RemovedBasePackages: less" in rf("status", "--sysroot", str(tree)).stdout
    rf("override", "reset", "--sysroot", str(tree))
    d = deployments(tree)[0]
    assert d.origin["retrofit"]["removed-base-packages"] == ""
    assert (Path(d.path) / "usr/bin/less").exists()

    rf("uninstall", "--sysroot", str(tree), "newsvc")
    d = deployments(tree)[0]
    assert d.origin_refspec == BASE_REF  # nothing layered: the base itself
    assert d.checksum == ot.Repo(tree / "ostree/repo").resolve(BASE_REF)

    r = rf("cleanup", "--sysroot", str(tree), "--json")
    rep = json.loads(r.stdout)
    assert len(deployments(tree)) == 2
    assert rep["objects_after"] <= rep["objects_before"]
    # local .deb files are kept exactly while a deployment requests them (the
    # rollback still has newsvc; escape is gone)
    wanted = {
        spec.split(":")[0]
        for d in deployments(tree)
        for spec in d.origin["retrofit"]["requested-local-packages"].split()
    }
    store = tree / "ostree/deploy/debian/var/lib/retrofit/local-debs"
    assert {p.stem for p in store.glob("*.deb")} == wanted and len(wanted) == 1
    assert len(rep["removed_local_debs"]) == 1
    fsck(tree)
    rf("cleanup", "--sysroot", str(tree), ok=(77,))


def _initramfs(tree: Path) -> dict[str, object]:
    rows = json.loads(rf("initramfs", "--sysroot", str(tree), "--json").stdout)["kernels"]
    assert len(rows) == 1, rows
    return rows[0]


def _image(root: Path, kver: str) -> bytes:
    return (root / f"usr/lib/modules/{kver}/initramfs.img").read_bytes()


def _lsinitramfs(root: Path, kver: str) -> str:
    """The image's file list, by the tree's own lsinitramfs (in a read-only sandbox)."""
    from retrofit.sandbox import run_in

    img = f"/usr/lib/modules/{kver}/initramfs.img"
    return run_in(root, ["lsinitramfs", img], root_readonly=True).stdout


def test_initramfs_follows_etc(tree: Path, debs: Path) -> None:
    """An initramfs setting changed in /etc: `initramfs` says the image is out of
    date, `--rebuild` deploys the same tree with a rebuilt image (the setting in it),
    and a later install keeps it rebuilt by itself."""
    from grub import initramfs

    row = _initramfs(tree)
    assert row["generator"] == "initramfs-tools" and row["recorded"] and not row["stale"], row
    rf("initramfs", "--rebuild", "--sysroot", str(tree), ok=(77,))
    kver = str(row["kernel"])
    before = deployments(tree)[0]
    old = _image(Path(before.path), kver)
    conf = Path(before.path) / "etc/initramfs-tools/conf.d/90-retrofit-test.conf"
    conf.write_text("COMPRESS=gzip\n")
    row = _initramfs(tree)
    assert row["stale"] == "its configuration in /etc changed", row

    r = rf("initramfs", "--rebuild", "--sysroot", str(tree))
    assert f"initramfs rebuilt for {kver}" in r.stderr, r.stderr
    new = deployments(tree)[0]
    assert new.checksum != before.checksum
    assert new.origin_refspec == before.origin_refspec  # nothing layered: still the base's
    root = Path(new.path)
    assert _image(root, kver) != old
    listing = _lsinitramfs(root, kver)
    assert "conf/conf.d/90-retrofit-test.conf" in listing  # built with the /etc setting
    assert "usr/lib/ostree/ostree-prepare-root" in listing
    assert f"scripts/local-bottom/{initramfs.HOOK_NAME}" in listing
    stamp = json.loads((root / f"usr/lib/modules/{kver}/{initramfs.STAMP}").read_text())
    assert stamp["etc"] == initramfs.etc_digest(root / "etc", "initramfs-tools")
    assert not _initramfs(tree)["stale"]
    rf("initramfs", "--rebuild", "--sysroot", str(tree), ok=(77,))

    # a layer is built from the base, whose image is the old one: rebuilt by itself
    deb = make_deb(debs, "tinytool", files={"usr/share/tinytool/README": "tiny\n"})
    r = rf("install", "--sysroot", str(tree), str(deb))
    assert f"initramfs rebuilt for {kver}" in r.stderr, r.stderr
    layered = Path(deployments(tree)[0].path)
    assert "conf/conf.d/90-retrofit-test.conf" in _lsinitramfs(layered, kver)
    assert not _initramfs(tree)["stale"]
    fsck(tree)  # images were replaced in the hardlinked checkouts, never written in place
