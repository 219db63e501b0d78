"""The /etc merge on a real converted tree: the admin adds a user and edits
sshd_config; a new base's package adds a system user and changes sshd_config
elsewhere. The new deployment gets both users, a line-merged sshd_config, and
systemd-tmpfiles resolves the new user. libostree's own merge (file-level) loses
the package's user: shown side by side."""

from __future__ import annotations

from pathlib import Path

from retrofit import ostree as ot
from retrofit.deploy import deploy_with_merge
from retrofit.run import run
from tests.debs import build_deb
from tests.treeutil import copy_tree, retrofit_cmd

REF = "retrofit/debian/bookworm/amd64/base"
NEWSVC_TMPFILES = "d /var/lib/newsvc 0750 newsvc newsvc -\n"
POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ] && ! getent passwd newsvc >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/newsvc --no-create-home \\
        --shell /usr/sbin/nologin newsvc
fi
"""


def sandbox_dpkg(checkout: Path, deb: Path) -> None:
    """dpkg inside a checkout of a commit: /etc is usr/etc, /var/lib/dpkg the database
    relocated into /usr, /var a scratch tmpfs; no network."""
    (checkout / "etc").mkdir(exist_ok=True)
    run(
        [
            "bwrap",
            "--bind",
            str(checkout),
            "/",
            "--bind",
            str(checkout / "usr/etc"),
            "/etc",
            "--tmpfs",
            "/var",
            "--bind",
            str(checkout / "usr/share/dpkg/database"),
            "/var/lib/dpkg",
            "--bind",
            str(checkout / "usr/share/debconf/database"),
            "/var/cache/debconf",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/run",
            "--unshare-net",
            "--unshare-pid",
            "--ro-bind",
            str(deb),
            "/tmp/pkg.deb",
            "--",
            "dpkg",
            "--log=/dev/null",
            "-i",
            "/tmp/pkg.deb",
        ]
    )
    (checkout / "etc").rmdir()


def test_new_base_merges_users_and_config(ready_tree: Path, tmp_path: Path) -> None:
    tree = copy_tree(ready_tree, tmp_path / "tree", hardlink=True)
    retrofit_cmd("convert", "--sysroot", str(tree), "--yes")
    sysroot = ot.Sysroot(tree)
    old = Path(sysroot.deployments()[0].path)

    # the admin's changes in the running system's /etc (as useradd and an editor would)
    run(
        [
            "bwrap",
            "--ro-bind",
            str(old),
            "/",
            "--bind",
            str(old / "etc"),
            "/etc",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/var",
            "--",
            "useradd",
            "-M",
            "-s",
            "/bin/bash",
            "bob",
        ]
    )
    sshd = old / "etc/ssh/sshd_config"
    text = sshd.read_text()
    assert "#Port 22\n" in text
    sshd.write_text(text.replace("#Port 22\n", "Port 2222\n"))

    # a new base: the old commit + a package that adds a system user and a tmpfiles
    # line, and an upstream sshd_config change in another place
    co = tmp_path / "newbase"
    run(["ostree", "checkout", f"--repo={tree}/ostree/repo", "--force-copy", REF, str(co)])
    deb = build_deb(
        tmp_path,
        "newsvc",
        postinst=POSTINST,
        files={"usr/lib/tmpfiles.d/newsvc.conf": NEWSVC_TMPFILES},
    )
    sandbox_dpkg(co, deb)
    up = co / "usr/etc/ssh/sshd_config"
    upstream = up.read_text()
    assert "#LoginGraceTime 2m\n" in upstream
    up.write_text(upstream.replace("#LoginGraceTime 2m\n", "LoginGraceTime 1m\n"))
    repo = ot.Repo(tree / "ostree/repo")
    repo.write_tree_commit(
        [ot.CommitSource(co, "")],
        ref=REF,
        subject="new base",
        metadata={"version": ot.v_str("12.new")},
        parent=repo.resolve(REF),
    )

    # libostree's own merge, for comparison: LOCAL's passwd wins whole, so the
    # package's user is lost and the upstream sshd_config change is dropped
    run(["ostree", "admin", "deploy", f"--sysroot={tree}", "--os=debian", REF])
    plain = Path(ot.Sysroot(tree).deployments()[0].path)
    assert "\nnewsvc:" not in (plain / "etc/passwd").read_text()
    assert "LoginGraceTime 1m" not in (plain / "etc/ssh/sshd_config").read_text()
    run(["ostree", "admin", "undeploy", f"--sysroot={tree}", "0"])

    result = deploy_with_merge(tree, "debian", REF)
    new = Path(result.deployment.path)
    assert result.merged_from is not None and result.report is not None
    passwd = (new / "etc/passwd").read_text()
    group = (new / "etc/group").read_text()
    for user in ("alice:", "bob:", "newsvc:", "sshd:"):
        assert f"\n{user}" in passwd, user
    assert "\nnewsvc:" in group and "\nbob:" in group
    shadow = new / "etc/shadow"
    st = shadow.stat()
    assert st.st_mode & 0o777 == 0o640
    shadow_gid = next(
        int(ln.split(":")[2]) for ln in group.splitlines() if ln.startswith("shadow:")
    )
    assert (st.st_uid, st.st_gid) == (0, shadow_gid)
    assert "\nnewsvc:" in shadow.read_text() and "\nbob:" in shadow.read_text()

    merged = (new / "etc/ssh/sshd_config").read_text()
    assert "Port 2222\n" in merged and "LoginGraceTime 1m\n" in merged
    assert "PermitRootLogin no" in merged  # the pre-conversion edit is still there
    assert any(i.path.endswith("ssh/sshd_config") for i in result.report.merged)
    assert not result.report.conflicts

    # systemd-tmpfiles in the new deployment resolves the package's user
    var = tmp_path / "scratch-var"
    (var / "lib").mkdir(parents=True)
    run(
        [
            "bwrap",
            "--ro-bind",
            str(new),
            "/",
            "--bind",
            str(var),
            "/var",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/run",
            "--",
            "systemd-tmpfiles",
            "--create",
            "/usr/lib/tmpfiles.d/newsvc.conf",
        ]
    )
    uid = next(int(ln.split(":")[2]) for ln in passwd.splitlines() if ln.startswith("newsvc:"))
    assert (var / "lib/newsvc").stat().st_uid == uid

    # status lists both deployments; the old one is the rollback
    out = retrofit_cmd("status", "--sysroot", str(tree)).stdout
    assert "12.new" in out and "rollback" in out
