"""Pure parts of layering: /var to tmpfiles.d, account seeding, dpkg error text,
apt archive names, kernel holds, the guard's text, the command line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from dpkg_layer import accounts, admin, dbdiff, dpkgrun, engine, guard, varstate
from dpkg_layer.resolve import Change, Item, Resolution, archive_name
from retrofit import ostree as ot


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "usr/etc").mkdir(parents=True)
    (tree / "usr/etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nsvc:x:998:997::/:/bin/false\n")
    (tree / "usr/etc/group").write_text("root:x:0:\nsvc:x:997:\n")
    return tree


@pytest.mark.skipif(os.geteuid() != 0, reason="chowns files")
def test_var_entries_become_tmpfiles_lines(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    var = tmp_path / "var"
    varstate.prepare(var)
    assert os.readlink(var / "lib/dpkg") == "/usr/share/dpkg/database"
    (var / "log").mkdir()
    before = varstate.snapshot(var)
    (var / "lib/svc/data").mkdir(parents=True)
    os.chown(var / "lib/svc", 998, 997)
    os.chmod(var / "lib/svc", 0o750)
    (var / "lib/svc/data/seed db").write_text("seed\n")
    os.symlink("/run/svc", var / "lib/svc/run")
    (var / "log/svc.log").write_text("noise\n")
    (var / "log/svc").mkdir()
    after = varstate.snapshot(var)
    lines, skipped = varstate.carry(var, tree, before, after, "# header")
    assert lines == [
        "# header",
        "d /var/lib/svc 0750 svc svc -",
        "d /var/lib/svc/data 0755 root root -",
        "C /var/lib/svc/data/seed\\x20db - - - - /usr/share/factory/var/lib/svc/data/seed\\x20db",
        "L /var/lib/svc/run - - - - /run/svc",
        "d /var/log/svc 0755 root root -",
    ]
    assert skipped == ["/var/log/svc.log"]
    assert (tree / varstate.FACTORY / "lib/svc/data/seed db").read_text() == "seed\n"
    varstate.write_lines(tree, varstate.LAYER_TMPFILES, lines)
    varstate.write_lines(tree, varstate.LAYER_TMPFILES, ["d /var/x 0755 root root -"], True)
    text = (tree / varstate.LAYER_TMPFILES).read_text()
    assert text.startswith("# header\n") and text.endswith("d /var/x 0755 root root -\n")


def test_accounts_seeded_then_local_ones_removed(tmp_path: Path) -> None:
    tree = _tree(tmp_path) / "usr/etc"
    running, image = tmp_path / "etc", tmp_path / "image-etc"
    running.mkdir()
    image.mkdir()
    (image / "passwd").write_text("root:x:0:0::/root:/bin/sh\nold:x:999:999::/:/bin/false\n")
    (running / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nold:x:999:999::/:/bin/false\nbob:x:996:996::/:/bin/sh\n"
    )
    before = os.stat(tree / "passwd").st_ino
    seeded = accounts.seed(tree, running, image)
    text = (tree / "passwd").read_text()
    assert "\nold:x:999" in text and "\nbob:x:996" in text  # ids a script must not reuse
    assert os.stat(tree / "passwd").st_ino != before  # a new inode, never in place
    with open(tree / "passwd", "a") as f:  # a script adds its user
        f.write("newsvc:x:995:995::/:/bin/false\n")
    accounts.unseed(tree, seeded)
    text = (tree / "passwd").read_text()
    assert "\nbob:" not in text  # the admin's stays local
    assert "\nold:" in text and "\nnewsvc:" in text and "\nsvc:" in text


def test_dpkg_failure_names_package_and_script_output() -> None:
    stderr = """Setting up failpost (1.0) ...
failpost: refusing to configure
dpkg: error processing package failpost (--install):
 installed failpost package post-installation script subprocess returned error exit status 3
Errors were encountered while processing:
 failpost
"""
    assert dpkgrun.dpkg_failure(stderr) == (
        "failpost: installed failpost package post-installation script subprocess returned "
        "error exit status 3 (it said: failpost: refusing to configure)"
    )
    assert dpkgrun.dpkg_failure("E: something else\n") is None


def test_dpkg_script_batches_and_quoting() -> None:
    script = dpkgrun.dpkg_script(["nano"], [[Path("/c/a b.deb")], [Path("/c/c.deb")]])
    lines = script.splitlines()
    assert lines[:2] == ["set -e", "exec 1>&2"]
    assert lines[2] == f"dpkg {' '.join(dpkgrun.DPKG_OPTS)} --purge nano"
    assert lines[3].endswith("--install '/run/retrofit/debs/a b.deb'")
    assert lines[4].endswith("--install /run/retrofit/debs/c.deb")
    assert "--no-download" in dpkgrun.apt_upgrade_script()


def test_archive_names_match_apt() -> None:
    assert archive_name("less", "590-2.1~deb12u2", "amd64", "p/l/x.deb") == (
        "less_590-2.1~deb12u2_amd64.deb"
    )
    assert archive_name("dmsetup", "2:1.02.185-2", "amd64", "x.deb") == (
        "dmsetup_2%3a1.02.185-2_amd64.deb"
    )


def test_kernel_packages_held_for_upgrade_planning() -> None:
    status = (
        b"Package: linux-image-amd64\nStatus: install ok installed\nVersion: 1\n\n"
        b"Package: less\nStatus: install ok installed\nVersion: 2\n"
    )
    out = engine.hold_kernel_packages(status).decode()
    assert "Package: linux-image-amd64\nStatus: hold ok installed" in out
    assert "Package: less\nStatus: install ok installed" in out


def test_projected_and_diff() -> None:
    res = Resolution(
        items=[Item("htop", "amd64", "3", 1, "h.deb")],
        removals=[Change("nano", "7", None)],
        base_changes=[Change("less", "1", "2")],
    )
    target = engine.projected({"nano": "7", "less": "1", "bash": "5"}, res)
    assert target == {"less": "2", "bash": "5", "htop": "3"}
    changes = engine.diff_versions({"nano": "7", "less": "1", "bash": "5"}, target)
    assert [c.render() for c in changes] == ["+ htop 3", "~ less 1 -> 2", "- nano 7"]


def test_guard_files() -> None:
    files = {f.dest: f for f in guard.guard_files()}
    assert set(files) == {guard.SCRIPT, guard.APT_CONF, guard.DPKG_CFG}
    assert files[guard.SCRIPT].mode == 0o755
    apt = (files[guard.APT_CONF].data or b"").decode()
    assert (
        'DPkg::Pre-Invoke { "[ ! -e /run/ostree-booted ] || [ -n \\"$RETROFIT_LAYERING\\" ]' in apt
    )
    dpkg = (files[guard.DPKG_CFG].data or b"").decode()
    assert "\npre-invoke=[ ! -e /run/ostree-booted ] || " in dpkg


def _parser() -> argparse.ArgumentParser:
    from retrofit import cli, layer_cmd

    p = cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    if "install" not in sub.choices:
        layer_cmd.register(sub, sub.add_parser)
    return p


def test_command_line() -> None:
    p = _parser()
    a = p.parse_args(["install", "htop", "./x.deb", "--dry-run", "--sysroot", "/t"])
    assert (a.packages, a.dry_run, a.sysroot) == (["htop", "./x.deb"], True, "/t")
    a = p.parse_args(["override", "remove", "nano", "--sysroot", "/t"])
    assert (a.override_action, a.packages, a.sysroot) == ("remove", ["nano"], "/t")
    a = p.parse_args(["override", "reset"])
    assert (a.override_action, a.packages) == ("reset", [])
    a = p.parse_args(["db", "diff", "1", "0"])
    assert (a.db_action, a.revs) == ("diff", ["1", "0"])
    a = p.parse_args(["upgrade", "--check"])
    assert a.check and not a.preview
    for verb in ("rollback", "cleanup", "rebase", "uninstall"):
        assert verb in p.format_help()


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from retrofit import cli

    p = _parser()
    orig = cli.build_parser
    cli.build_parser = lambda: p  # type: ignore[assignment]
    try:
        assert cli.main(["db", "diff", "1"]) == 2
        assert "give both FROM and TO" in capsys.readouterr().err
        assert cli.main(["install", "Not_A_Name", "--sysroot", "/nonexistent"]) == 2
        assert cli.main(["install", "htop", "--sysroot", "/nonexistent"]) == 1
        err = capsys.readouterr().err
        assert "retrofit: install: /nonexistent is not a converted system" in err
    finally:
        cli.build_parser = orig  # type: ignore[assignment]


def _dep(index: int, booted: bool = False) -> ot.Deployment:
    return ot.Deployment(index, "debian", f"{index:064x}", 0, booted, False, False,
                         None, {}, "", f"/d/{index}")  # fmt: skip


def test_rollback_and_cleanup_choices() -> None:
    # not booted (a --sysroot tree) or booted into the default: the second one
    deps = [_dep(0), _dep(1), _dep(2)]
    assert admin.rollback_target(deps) == deps[1]
    assert admin.keep_set(deps) == {0, 1}
    deps = [_dep(0, booted=True), _dep(1), _dep(2)]
    assert admin.rollback_target(deps) == deps[1] and admin.keep_set(deps) == {0, 1}
    # a pending deployment: back to the booted one, which is kept whatever its index
    deps = [_dep(0), _dep(1), _dep(2, booted=True)]
    assert admin.rollback_target(deps) == deps[2] and admin.keep_set(deps) == {0, 2}
    assert admin.rollback_target([_dep(0)]) is None and admin.keep_set([_dep(0)]) == {0}


def test_db_diff_rendering() -> None:
    a = dbdiff.Side("1", "a" * 64, "deployment 1")
    b = dbdiff.Side("0", "b" * 64, "deployment 0")
    text = dbdiff.render(a, b, [Change("htop", None, "3"), Change("less", "1", "2")])
    assert text.splitlines() == [
        "ostree diff commit from: deployment 1",
        "ostree diff commit to:   deployment 0",
        "Added:",
        "  + htop 3",
        "Changed:",
        "  ~ less 1 -> 2",
    ]
    assert dbdiff.render(a, b, []).endswith("No package changes.")
