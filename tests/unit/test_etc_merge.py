"""The /etc three-way merge: every rule, libostree's corner cases, dpkg-style cases.

Tests run as root, so owners, xattrs and security.capability are real.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import struct
from pathlib import Path

import pytest

from retrofit import etc_cmd
from retrofit.errors import RetrofitError, UsageError
from retrofit.etc_merge import (
    CONFLICT_RECORD,
    MergeReport,
    etc_diff,
    is_binary,
    merge_etc,
    merge_text,
    read_conflict_record,
    split_lines,
    write_conflict_record,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, xattrs)")

CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


class Trees:
    """BASE, LOCAL, NEW and OUT under one tmp dir, with helpers to fill them."""

    def __init__(self, root: Path) -> None:
        self.b = root / "base"
        self.l = root / "local"
        self.n = root / "new"
        self.o = root / "out"
        for d in (self.b, self.l, self.n):
            d.mkdir()
            os.chmod(d, 0o755)

    def put(self, rel: str, content: bytes | str, *, sides: str = "bln", mode: int = 0o644) -> None:
        data = content.encode() if isinstance(content, str) else content
        for s in sides:
            p = self.side(s) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            os.chmod(p, mode)
            os.utime(p, ns=(0, 0))

    def side(self, s: str) -> Path:
        return {"b": self.b, "l": self.l, "n": self.n, "o": self.o}[s]

    def merge(self) -> MergeReport:
        return merge_etc(self.b, self.l, self.n, self.o)

    def out(self, rel: str) -> bytes:
        return (self.o / rel).read_bytes()


@pytest.fixture
def t(tmp_path: Path) -> Trees:
    return Trees(tmp_path)


def paths(report_list: list) -> list[str]:  # type: ignore[type-arg]
    return [i.path for i in report_list]


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


# ------------------------------------------------ libostree's etcmerge corner cases


def test_ostree_modified_config_file_is_kept(t: Trees) -> None:
    t.put("NetworkManager/nm.conf", "a default daemon file\n")
    t.put("NetworkManager/nm.conf", "a modified config file\n", sides="l")
    r = t.merge()
    assert t.out("NetworkManager/nm.conf") == b"a modified config file\n"
    assert paths(r.kept_local) == ["NetworkManager/nm.conf"]


def test_ostree_long_directory_chain_keeps_modes(t: Trees) -> None:
    (t.l / "a/long/dir/chain").mkdir(parents=True)
    (t.l / "a/long/dir/forking").mkdir(parents=True)
    modes = {"a": 0o700, "a/long": 0o770, "a/long/dir": 0o777}
    modes.update({"a/long/dir/chain": 0o707, "a/long/dir/forking": 0o700})
    for rel, m in modes.items():
        os.chmod(t.l / rel, m)
    t.merge()
    for rel, m in modes.items():
        assert mode(t.o / rel) == m, rel


def test_ostree_dangling_symlink_is_kept_not_followed(t: Trees) -> None:
    (t.l / "a").mkdir()
    os.symlink("no-such-file", t.l / "a/link-to-no-such-file")
    t.merge()
    assert os.readlink(t.o / "a/link-to-no-such-file") == "no-such-file"


def test_ostree_directory_removed_locally_stays_removed(t: Trees) -> None:
    t.put("testdirectory/test", "x\n", sides="bn")
    r = t.merge()
    assert not os.path.lexists(t.o / "testdirectory")
    assert paths(r.deleted) == ["testdirectory"]


def test_ostree_new_empty_directory_appears(t: Trees) -> None:
    (t.n / "initially-empty").mkdir()
    r = t.merge()
    assert (t.o / "initially-empty").is_dir()
    assert paths(r.taken_new) == ["initially-empty"]


def test_ostree_new_files_in_existing_directory_appear(t: Trees) -> None:
    for s in "bl":
        (t.side(s) / "initially-empty").mkdir()
    t.put("initially-empty/afile", "", sides="n")
    t.put("initially-empty/bfile", "", sides="n")
    t.merge()
    assert (t.o / "initially-empty/afile").is_file()
    assert (t.o / "initially-empty/bfile").is_file()


def test_ostree_modified_file_newly_defaults_to_directory(t: Trees) -> None:
    (t.n / "somenewdir").mkdir()
    t.put("somenewdir/shipped", "new\n", sides="n")
    t.put("somenewdir", "some content blah\n", sides="l")
    r = t.merge()  # libostree fails the deployment here; we report and go on
    assert t.out("somenewdir") == b"some content blah\n"
    assert (t.o / "somenewdir.retrofit-new/shipped").read_bytes() == b"new\n"
    assert paths(r.type_conflict) == ["somenewdir"]
    assert r.type_conflict[0].detail == (
        "added locally as a regular file, but the new version ships a directory: kept the "
        "local regular file; the new directory is at somenewdir.retrofit-new"
    )
    assert r.type_conflict[0].new_copy == "somenewdir.retrofit-new"
    assert not r.clean and r.conflicts == r.type_conflict


def test_ostree_parent_of_local_file_removed_upstream_is_recreated(t: Trees) -> None:
    t.put("initially-empty/afile", "", sides="bl")
    t.put("initially-empty/mynewfile", "mine\n", sides="l")
    os.chmod(t.l / "initially-empty", 0o750)
    os.chown(t.l / "initially-empty", 1234, 5678)
    r = t.merge()
    assert t.out("initially-empty/mynewfile") == b"mine\n"
    assert not os.path.lexists(t.o / "initially-empty/afile")
    st = os.lstat(t.o / "initially-empty")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1234, 5678)
    assert "initially-empty/afile" in paths(r.removed)


# ------------------------------------------------------------------- basic rules


def test_unchanged_locally_takes_new(t: Trees) -> None:
    t.put("f", "old\n", sides="bl")
    t.put("f", "new\n", sides="n", mode=0o640)
    r = t.merge()
    assert t.out("f") == b"new\n" and mode(t.o / "f") == 0o640
    assert paths(r.taken_new) == ["f"]


def test_identical_everywhere_is_counted_unchanged(t: Trees) -> None:
    t.put("same", "x\n")
    r = t.merge()
    assert r.unchanged == 1 and not r.actions() and r.clean


def test_mtime_only_difference_counts_as_unchanged(t: Trees) -> None:
    t.put("f", "old\n", sides="bl")
    os.utime(t.l / "f", ns=(10**18, 10**18))
    t.put("f", "new\n", sides="n")
    r = t.merge()
    assert t.out("f") == b"new\n"
    assert paths(r.taken_new) == ["f"] and not r.kept_local


def test_added_locally_is_kept(t: Trees) -> None:
    t.put("mine.conf", "x\n", sides="l", mode=0o600)
    r = t.merge()
    assert t.out("mine.conf") == b"x\n" and mode(t.o / "mine.conf") == 0o600
    assert paths(r.kept_local) == ["mine.conf"]


def test_added_identically_on_both_sides_is_unchanged(t: Trees) -> None:
    t.put("f", "same\n", sides="ln")
    r = t.merge()
    assert t.out("f") == b"same\n" and r.clean and r.unchanged == 1


def test_added_differently_on_both_sides_conflicts(t: Trees) -> None:
    t.put("f", "mine\n", sides="l")
    t.put("f", "theirs\n", sides="n")
    r = t.merge()
    assert t.out("f") == b"mine\n" and t.out("f.retrofit-new") == b"theirs\n"
    assert paths(r.conflict) == ["f"]
    assert r.conflict[0].detail.startswith("added locally and upstream with different content")


def test_empty_file_added_locally_is_not_lost_to_an_upstream_addition(t: Trees) -> None:
    t.put("f", "", sides="l")  # no BASE: an empty diff3 base would let NEW win
    t.put("f", "x=1\n", sides="n")
    r = t.merge()
    assert t.out("f") == b"" and t.out("f.retrofit-new") == b"x=1\n"
    assert paths(r.conflict) == ["f"]


def test_removed_upstream_unchanged_locally_is_removed(t: Trees) -> None:
    t.put("gone", "x\n", sides="bl")
    r = t.merge()
    assert not os.path.lexists(t.o / "gone") and paths(r.removed) == ["gone"]


def test_removed_upstream_but_modified_locally_is_kept(t: Trees) -> None:
    t.put("gone", "x\n", sides="b")
    t.put("gone", "edited\n", sides="l")
    r = t.merge()
    assert t.out("gone") == b"edited\n"
    assert paths(r.kept_local) == ["gone"] and paths(r.warnings) == ["gone"]


def test_directory_removed_upstream_and_unchanged_is_removed(t: Trees) -> None:
    t.put("d/sub/f", "x\n", sides="bl")
    r = t.merge()
    assert not os.path.lexists(t.o / "d")
    assert set(paths(r.removed)) == {"d", "d/sub", "d/sub/f"}


def test_no_temporary_files_are_left(t: Trees) -> None:
    for i in range(20):
        t.put(f"d/f{i}", f"{i}\n", sides="bl")
        t.put(f"d/f{i}", f"new {i}\n", sides="n")
    t.merge()
    assert sorted(os.listdir(t.o / "d")) == sorted(f"f{i}" for i in range(20))


# ---------------------------------------------------------------- dpkg-style cases


def test_local_edit_and_upstream_edit_merge_cleanly(t: Trees) -> None:
    t.put("app.conf", "a=1\nb=2\nc=3\nd=4\n", sides="b")
    t.put("app.conf", "a=LOCAL\nb=2\nc=3\nd=4\n", sides="l")
    t.put("app.conf", "a=1\nb=2\nc=3\nd=NEW\n", sides="n")
    r = t.merge()
    assert t.out("app.conf") == b"a=LOCAL\nb=2\nc=3\nd=NEW\n"
    assert paths(r.merged) == ["app.conf"] and r.clean


def test_overlapping_edits_conflict_keep_local_and_write_new_beside(t: Trees) -> None:
    t.put("app.conf", "a=1\n", sides="b")
    t.put("app.conf", "a=LOCAL\n", sides="l", mode=0o600)
    t.put("app.conf", "a=NEW\n", sides="n", mode=0o644)
    r = t.merge()
    assert t.out("app.conf") == b"a=LOCAL\n" and mode(t.o / "app.conf") == 0o600
    assert t.out("app.conf.retrofit-new") == b"a=NEW\n"
    assert paths(r.conflicts) == ["app.conf"]
    assert r.conflicts[0].new_copy == "app.conf.retrofit-new"
    assert "app.conf.retrofit-new" in r.conflicts[0].detail


def test_local_delete_and_upstream_edit_stays_deleted(t: Trees) -> None:
    t.put("old.conf", "v1\n", sides="b")
    t.put("old.conf", "v2\n", sides="n")
    r = t.merge()
    assert not os.path.lexists(t.o / "old.conf")
    assert r.deleted[0].detail == "deleted locally; stays deleted (it changed upstream)"


def test_permission_only_local_change_survives_new_content(t: Trees) -> None:
    t.put("secret.conf", "k=1\n", sides="b", mode=0o644)
    t.put("secret.conf", "k=1\n", sides="l", mode=0o600)
    t.put("secret.conf", "k=1\nj=2\n", sides="n", mode=0o644)
    os.chown(t.l / "secret.conf", 0, 4242)
    r = t.merge()
    st = os.lstat(t.o / "secret.conf")
    assert t.out("secret.conf") == b"k=1\nj=2\n"
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o600, 4242)
    assert paths(r.merged) == ["secret.conf"]


def test_owner_only_local_change_is_kept(t: Trees) -> None:
    t.put("f", "x\n")
    os.chown(t.l / "f", 1000, 1000)
    r = t.merge()
    st = os.lstat(t.o / "f")
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert r.kept_local[0].detail == "metadata changed locally"


def test_xattr_only_local_change_survives_new_content(t: Trees) -> None:
    t.put("f", "x\n", sides="bl")
    t.put("f", "y\n", sides="n")
    os.setxattr(t.l / "f", "user.local", b"1")
    os.setxattr(t.n / "f", "user.upstream", b"2")
    t.merge()
    assert t.out("f") == b"y\n"
    assert os.getxattr(t.o / "f", "user.local") == b"1"
    assert os.getxattr(t.o / "f", "user.upstream") == b"2"


def test_security_capability_and_setuid_are_preserved(t: Trees) -> None:
    t.put("helper", b"\x7fELF\0\0", sides="bl", mode=0o4755)
    t.put("helper", b"\x7fELF\0\1", sides="n", mode=0o4755)
    t.put("kept", b"\x7fELF\0\0", mode=0o755)
    for s in "bln":
        os.setxattr(t.side(s) / "kept", "security.capability", CAP_NET_RAW)
    os.setxattr(t.n / "helper", "security.capability", CAP_NET_RAW)
    os.chown(t.n / "helper", 0, 50)
    os.chmod(t.n / "helper", 0o4755)  # chown dropped the setuid bit
    os.setxattr(t.n / "helper", "security.capability", CAP_NET_RAW)
    t.merge()
    assert mode(t.o / "helper") == 0o4755 and os.lstat(t.o / "helper").st_gid == 50
    assert os.getxattr(t.o / "helper", "security.capability") == CAP_NET_RAW
    assert os.getxattr(t.o / "kept", "security.capability") == CAP_NET_RAW


def test_mtime_of_copied_files_is_kept(t: Trees) -> None:
    t.put("f", "x\n", sides="l")
    os.utime(t.l / "f", ns=(1_000_000_000, 1_234_000_000_000))
    t.merge()
    assert os.lstat(t.o / "f").st_mtime_ns == 1_234_000_000_000


def test_file_becomes_directory_upstream(t: Trees) -> None:
    t.put("x.d", "flat file\n", sides="bl")
    t.put("x.d/part", "p\n", sides="n")
    r = t.merge()
    assert t.out("x.d/part") == b"p\n"
    assert r.taken_new[0].detail == "became a directory upstream"


def test_directory_becomes_file_upstream_with_local_file_inside_conflicts(t: Trees) -> None:
    t.put("x.d/part", "p\n", sides="bl")
    t.put("x.d/mine", "m\n", sides="l")
    t.put("x.d", "flat file\n", sides="n")
    r = t.merge()
    assert t.out("x.d/mine") == b"m\n" and t.out("x.d/part") == b"p\n"
    assert t.out("x.d.retrofit-new") == b"flat file\n"
    assert paths(r.type_conflict) == ["x.d"]
    assert "the new regular file is at x.d.retrofit-new" in r.type_conflict[0].detail


def test_local_type_change_wins_when_upstream_unchanged(t: Trees) -> None:
    t.put("resolv.conf", "nameserver 1.1.1.1\n", sides="bn")
    os.symlink("/run/resolvconf/resolv.conf", t.l / "resolv.conf")
    r = t.merge()
    assert os.readlink(t.o / "resolv.conf") == "/run/resolvconf/resolv.conf"
    assert r.kept_local[0].detail == "became a symlink locally"


def test_symlinks_compared_by_target(t: Trees) -> None:
    for s, target in (("b", "a"), ("l", "a"), ("n", "b")):
        os.symlink(target, t.side(s) / "up")
    for s, target in (("b", "a"), ("l", "mine"), ("n", "a")):
        os.symlink(target, t.side(s) / "loc")
    for s, target in (("b", "a"), ("l", "mine"), ("n", "theirs")):
        os.symlink(target, t.side(s) / "both")
    r = t.merge()
    assert os.readlink(t.o / "up") == "b"
    assert os.readlink(t.o / "loc") == "mine"
    assert os.readlink(t.o / "both") == "mine"
    assert os.readlink(t.o / "both.retrofit-new") == "theirs"
    assert paths(r.conflict) == ["both"]


def test_symlink_owner_is_preserved(t: Trees) -> None:
    os.symlink("target", t.l / "lnk")
    os.chown(t.l / "lnk", 1001, 1002, follow_symlinks=False)
    t.merge()
    st = os.lstat(t.o / "lnk")
    assert (st.st_uid, st.st_gid) == (1001, 1002)


def test_fifo_socket_and_device_are_skipped_with_a_warning(
    t: Trees, caplog: pytest.LogCaptureFixture
) -> None:
    os.mkfifo(t.l / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(t.l / "sock"))
    s.close()
    os.mknod(t.l / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    t.put("fifo2", "was a file\n", sides="bn")
    os.mkfifo(t.l / "fifo2")
    r = t.merge()
    for name in ("fifo", "sock", "null", "fifo2"):
        assert not os.path.lexists(t.o / name), name
    assert sorted(paths(r.skipped_special)) == ["fifo", "fifo2", "null", "sock"]
    assert "FIFO in local /etc not copied" in caplog.text


def test_non_utf8_text_is_merged_on_bytes(t: Trees) -> None:
    t.put("latin1", "caf\xe9=1\nx=1\nna\xefve=1\n".encode("latin-1"), sides="b")
    t.put("latin1", "caf\xe9=2\nx=1\nna\xefve=1\n".encode("latin-1"), sides="l")
    t.put("latin1", "caf\xe9=1\nx=1\nna\xefve=3\n".encode("latin-1"), sides="n")
    r = t.merge()
    assert t.out("latin1") == "caf\xe9=2\nx=1\nna\xefve=3\n".encode("latin-1")
    assert paths(r.merged) == ["latin1"]


def test_binary_files_changed_on_both_sides_conflict(t: Trees) -> None:
    t.put("blob", b"\0\1\2\n\3\n\4\n", sides="b")
    t.put("blob", b"\0\1\2\n\3\nL\n", sides="l")
    t.put("blob", b"N\1\2\n\3\n\4\n", sides="n")
    r = t.merge()  # a line merge would succeed; binaries are never line-merged
    assert t.out("blob") == b"\0\1\2\n\3\nL\n"
    assert t.out("blob.retrofit-new") == b"N\1\2\n\3\n\4\n"
    assert r.conflict[0].detail.startswith("binary file changed locally and upstream")


def test_binary_file_changed_on_one_side_is_taken(t: Trees) -> None:
    t.put("blob", b"\0old", sides="bn")
    t.put("blob", b"\0local", sides="l")
    t.merge()
    assert t.out("blob") == b"\0local"


def test_crlf_files_merge_and_keep_crlf(t: Trees) -> None:
    t.put("win.ini", b"[a]\r\nx=1\r\ny=1\r\nz=1\r\n", sides="b")
    t.put("win.ini", b"[a]\r\nx=2\r\ny=1\r\nz=1\r\n", sides="l")
    t.put("win.ini", b"[a]\r\nx=1\r\ny=1\r\nz=3\r\n", sides="n")
    t.merge()
    assert t.out("win.ini") == b"[a]\r\nx=2\r\ny=1\r\nz=3\r\n"


def test_empty_files(t: Trees) -> None:
    t.put("e1", "", sides="bn")
    t.put("e1", "local\n", sides="l")
    t.put("e2", "", sides="b")
    t.put("e2", "l\n", sides="l")
    t.put("e2", "n\n", sides="n")
    t.put("e3", "a\nb\n", sides="b")
    t.put("e3", "", sides="l")
    t.put("e3", "a\nB\n", sides="n")
    t.put("e4", "x\n", sides="bl")
    t.put("e4", "", sides="n")
    r = t.merge()
    assert t.out("e1") == b"local\n"
    assert t.out("e2") == b"l\n" and t.out("e2.retrofit-new") == b"n\n"
    assert t.out("e3") == b"" and t.out("e3.retrofit-new") == b"a\nB\n"
    assert t.out("e4") == b""
    assert paths(r.conflicts) == ["e2", "e3"]


def test_very_long_lines_merge(t: Trees) -> None:
    long = b"k=" + b"v" * 2_000_000 + b"\n"
    t.put("big", b"a\n" + long + b"z\n", sides="b")
    t.put("big", b"A\n" + long + b"z\n", sides="l")
    t.put("big", b"a\n" + long + b"Z\n", sides="n")
    t.merge()
    assert t.out("big") == b"A\n" + long + b"Z\n"


def test_missing_final_newline(t: Trees) -> None:
    t.put("f", "a\nb\nc", sides="b")
    t.put("f", "A\nb\nc", sides="l")
    t.put("f", "a\nb\nC", sides="n")
    t.merge()
    assert t.out("f") == b"A\nb\nC"


# ------------------------------------------------------------ metadata and secrets


def test_mode_never_looser_than_stricter_side_when_both_changed(t: Trees) -> None:
    t.put("db.conf", "password=base\n", sides="b", mode=0o600)
    t.put("db.conf", "password=hunter2\n", sides="l", mode=0o600)
    t.put("db.conf", "password=base\n", sides="n", mode=0o644)
    r = t.merge()
    assert t.out("db.conf") == b"password=hunter2\n"
    assert mode(t.o / "db.conf") == 0o600
    assert "limited to 0600" in r.merged[0].detail


def test_local_tightening_survives_upstream_content_change(t: Trees) -> None:
    t.put("f", "a\n", sides="b", mode=0o640)
    t.put("f", "a\n", sides="l", mode=0o600)
    t.put("f", "a\nb\n", sides="n", mode=0o644)
    t.merge()
    assert mode(t.o / "f") == 0o600


def test_upstream_mode_change_taken_when_local_unchanged(t: Trees) -> None:
    t.put("f", "a\n", sides="bl", mode=0o600)
    t.put("f", "a\n", sides="n", mode=0o644)
    t.merge()
    assert mode(t.o / "f") == 0o644


def test_directory_metadata_three_way(t: Trees) -> None:
    for s in "bln":
        for d in ("loc", "up", "both"):
            (t.side(s) / d).mkdir()
            os.chmod(t.side(s) / d, 0o755)
    os.chmod(t.l / "loc", 0o700)
    os.chown(t.n / "up", 0, 7)
    os.chmod(t.l / "both", 0o750)
    os.chown(t.n / "both", 0, 8)
    os.chmod(t.n / "both", 0o755)
    r = t.merge()
    assert mode(t.o / "loc") == 0o700
    assert os.lstat(t.o / "up").st_gid == 7
    st = os.lstat(t.o / "both")
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o750, 8)
    assert paths(r.merged) == ["both"]


# ----------------------------------------------------------------- conflict copies


def test_stale_conflict_copy_is_replaced(t: Trees) -> None:
    t.put("f", "a=1\n", sides="b")
    t.put("f", "a=2\n", sides="l")
    t.put("f", "a=3\n", sides="n")
    t.put("f.retrofit-new", "from an earlier merge\n", sides="l")
    r = t.merge()
    assert t.out("f.retrofit-new") == b"a=3\n"
    assert "f.retrofit-new" in paths(r.warnings)


def test_conflict_copy_never_overwrites_a_shipped_file(t: Trees) -> None:
    t.put("f", "a=1\n", sides="b")
    t.put("f", "a=2\n", sides="l")
    t.put("f", "a=3\n", sides="n")
    t.put("f.retrofit-new", "shipped\n", sides="bln")
    r = t.merge()
    assert t.out("f.retrofit-new") == b"shipped\n"
    assert t.out("f.retrofit-new.1") == b"a=3\n"
    assert r.conflict[0].new_copy == "f.retrofit-new.1"


def test_conflict_record_in_local_is_not_carried(t: Trees) -> None:
    t.put(CONFLICT_RECORD, "{}", sides="l")
    t.merge()
    assert not os.path.lexists(t.o / CONFLICT_RECORD)


# ---------------------------------------------------------------------- accounts


def test_accounts_merged_by_entry_inside_etc(t: Trees) -> None:
    root = "root:x:0:0:root:/root:/bin/bash\n"
    t.put("passwd", root, sides="b")
    t.put("passwd", root + "alice:x:1000:1000::/home/alice:/bin/bash\n", sides="l")
    t.put("passwd", root + "_chrony:x:105:110::/run/chrony:/usr/sbin/nologin\n", sides="n")
    r = t.merge()
    assert t.out("passwd") == (
        root.encode()
        + b"alice:x:1000:1000::/home/alice:/bin/bash\n"
        + b"_chrony:x:105:110::/run/chrony:/usr/sbin/nologin\n"
    )
    assert r.merged[0].detail == "merged by entry"


def test_account_collision_is_a_conflict(t: Trees) -> None:
    root = "root:x:0:0:root:/root:/bin/bash\n"
    t.put("passwd", root, sides="b")
    t.put("passwd", root + "alice:x:1000:1000::/home/alice:/bin/bash\n", sides="l")
    t.put("passwd", root + "bob:x:1000:1000::/home/bob:/bin/sh\n", sides="n")
    t.put("shadow", "root:*:1::::::\n", sides="b", mode=0o640)
    t.put("shadow", "root:*:1::::::\nalice:!:1::::::\n", sides="l", mode=0o640)
    t.put("shadow", "root:*:1::::::\nbob:!:1::::::\n", sides="n", mode=0o640)
    r = t.merge()
    assert b"bob" not in t.out("passwd") and b"bob" not in t.out("shadow")
    assert b"bob" in t.out("passwd.retrofit-new")
    assert paths(r.conflicts) == ["passwd"]
    assert "uid 1000" in r.conflicts[0].detail and "'alice'" in r.conflicts[0].detail


def test_shadow_gets_root_shadow_0640_from_merged_group(t: Trees) -> None:
    t.put("group", "root:x:0:\nshadow:x:42:\n", sides="bln")
    t.put("shadow", "root:*:1::::::\n", sides="bl", mode=0o640)
    t.put("shadow", "root:*:1::::::\nsvc:!:1::::::\n", sides="n", mode=0o644)
    os.chown(t.n / "shadow", 0, 999)  # built elsewhere: another gid
    t.put("gshadow", "root:*::\n", sides="bn", mode=0o640)
    t.put("gshadow", "root:*::\n", sides="l", mode=0o600)
    os.chown(t.l / "gshadow", 0, 0)
    t.merge()
    st = os.lstat(t.o / "shadow")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, 42)
    st = os.lstat(t.o / "gshadow")  # LOCAL's own, kept whole
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o600, 0)


# ------------------------------------------------------------------------ errors


def test_out_must_be_empty(t: Trees) -> None:
    t.o.mkdir()
    (t.o / "x").write_text("")
    with pytest.raises(RetrofitError, match="is not empty"):
        t.merge()


def test_out_inside_an_input_is_refused(t: Trees) -> None:
    with pytest.raises(RetrofitError, match="is inside the input"):
        merge_etc(t.b, t.l, t.n, t.l / "sub")


def test_missing_input_is_refused(t: Trees, tmp_path: Path) -> None:
    with pytest.raises(RetrofitError, match=r"^etc merge: NEW .*nope is not a directory$"):
        merge_etc(t.b, t.l, tmp_path / "nope", t.o)


# ------------------------------------------------------------------ text helpers


def test_split_lines_round_trips() -> None:
    for data in (b"", b"a", b"a\n", b"a\r\nb", b"\n\n", b"x\ry\n"):
        assert b"".join(split_lines(data)) == data
    assert split_lines(b"a\r\nb") == [b"a\r\n", b"b"]


def test_is_binary() -> None:
    assert is_binary(b"a\0b")
    assert not is_binary("caf\xe9\n".encode("latin-1"))
    assert not is_binary("caf\xe9\n".encode())
    assert is_binary(bytes(range(1, 32)) * 4 + b"\xff")


def test_merge_text_conflict_returns_none() -> None:
    assert merge_text(b"a\n", b"b\n", b"c\n") is None
    assert merge_text(b"a\nb\n", b"a\nb\nc\n", b"z\na\nb\n") == b"z\na\nb\nc\n"


# ----------------------------------------------------------------- report, record


def test_report_to_dict_is_json(t: Trees) -> None:
    t.put("f", "a\n", sides="b")
    t.put("f", "l\n", sides="l")
    t.put("f", "n\n", sides="n")
    d = json.loads(json.dumps(t.merge().to_dict()))
    assert d["apiVersion"] == 1 and d["clean"] is False
    assert d["conflicts"] == [
        {
            "action": "conflict",
            "path": "f",
            "detail": "changed locally and upstream; the changes overlap: kept the local "
            "version; the new one is at f.retrofit-new",
            "newCopy": "f.retrofit-new",
        }
    ]
    assert d["counts"]["conflict"] == 1


def test_conflict_record_round_trip(t: Trees, tmp_path: Path) -> None:
    t.put("f", "a\n", sides="b")
    t.put("f", "l\n", sides="l")
    t.put("f", "n\n", sides="n")
    report = t.merge()
    rec = tmp_path / "rec.json"
    write_conflict_record(report, rec)
    assert read_conflict_record(rec) == report.conflicts
    assert read_conflict_record(tmp_path / "absent.json") == []
    rec.write_text("{not json")
    with pytest.raises(RetrofitError, match="cannot read the conflict record"):
        read_conflict_record(rec)
    rec.write_text('{"apiVersion": 99, "conflicts": []}')
    with pytest.raises(RetrofitError, match="malformed: unknown apiVersion 99"):
        read_conflict_record(rec)


# -------------------------------------------------------------------------- diff


def test_etc_diff(t: Trees) -> None:
    usr, etc = t.b, t.l
    t.put("same", "x\n", sides="bl")
    t.put("content", "x\n", sides="b")
    t.put("content", "y\n", sides="l")
    t.put("perm", "x\n", sides="b", mode=0o644)
    t.put("perm", "x\n", sides="l", mode=0o600)
    t.put("gone/f", "x\n", sides="b")
    t.put("new/f", "x\n", sides="l")
    os.mkfifo(etc / "fifo")
    (etc / CONFLICT_RECORD).write_text("{}")
    os.utime(etc / "same", ns=(5, 5))
    d = etc_diff(usr, etc)
    assert d.added == ["new", "new/f"]
    assert d.modified == ["content"]
    assert d.metadata == ["perm"]
    assert d.deleted == ["gone"]
    assert d.special == ["fifo"]
    assert json.loads(json.dumps(d.to_dict()))["apiVersion"] == 1


# ------------------------------------------------------------------------- CLI


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sysroot", default="/")
    etc_cmd.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_merge_clean_exit_0(t: Trees, capsys: pytest.CaptureFixture[str]) -> None:
    t.put("f", "a\n", sides="bl")
    t.put("f", "b\n", sides="n")
    rc = etc_cmd.main(parse("merge", str(t.b), str(t.l), str(t.n), str(t.o)))
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[0].split() == ["ACTION", "PATH", "DETAIL"]
    assert out.splitlines()[1].split()[:2] == ["taken-new", "f"]
    assert not (t.o / CONFLICT_RECORD).exists()


def test_cli_merge_conflict_exit_1_json_and_record(
    t: Trees, capsys: pytest.CaptureFixture[str]
) -> None:
    t.put("f", "a\n", sides="b")
    t.put("f", "l\n", sides="l")
    t.put("f", "n\n", sides="n")
    rc = etc_cmd.main(parse("merge", str(t.b), str(t.l), str(t.n), str(t.o), "--json"))
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1 and doc["conflicts"][0]["path"] == "f"
    assert [i.path for i in read_conflict_record(t.o / CONFLICT_RECORD)] == ["f"]


def test_cli_merge_usage_errors(t: Trees, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="LOCAL .* is not a directory") as e:
        etc_cmd.main(parse("merge", str(t.b), str(tmp_path / "x"), str(t.n), str(t.o)))
    assert e.value.exit_code == 2
    with pytest.raises(UsageError, match="missing sub-command"):
        etc_cmd.main(parse())
    t.o.mkdir()
    (t.o / "junk").write_text("")
    with pytest.raises(UsageError, match="is not empty"):
        etc_cmd.main(parse("merge", str(t.b), str(t.l), str(t.n), str(t.o)))


def test_cli_diff_with_dirs_shows_changes_and_conflicts(
    t: Trees, capsys: pytest.CaptureFixture[str]
) -> None:
    t.put("f", "a\n", sides="b")
    t.put("f", "b\n", sides="l")
    t.put("g", "a\n", sides="l")
    (t.l / CONFLICT_RECORD).write_text(
        json.dumps(
            {
                "apiVersion": 1,
                "conflicts": [{"action": "conflict", "path": "f", "detail": "overlap"}],
            }
        )
    )
    rc = etc_cmd.main(parse("diff", "--usr-etc", str(t.b), "--etc", str(t.l)))
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[:2] == ["M    f", "A    g"]
    assert "C  f  overlap" in out
    with pytest.raises(UsageError, match="go together"):
        etc_cmd.main(parse("diff", "--usr-etc", str(t.b)))


def make_sysroot(root: Path, csum: str) -> Path:
    dep = root / "ostree/deploy/debian/deploy" / f"{csum}.0"
    (dep / "usr/etc").mkdir(parents=True)
    (dep / "etc").mkdir()
    return dep


def test_cli_diff_on_sysroot_finds_the_default_deployment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = make_sysroot(tmp_path, "aaa")
    new = make_sysroot(tmp_path, "bbb")
    (old / "etc/old-only").write_text("")
    (new / "etc/new-only").write_text("")
    os.utime(old, (4_000_000_000, 4_000_000_000))  # newest mtime, but not the default
    for serial, csum, version in ((0, "bbb", 2), (1, "aaa", 1)):
        link = tmp_path / f"ostree/boot.1.1/debian/bootcsum/{serial}"
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(f"../../../deploy/debian/deploy/{csum}.0", link)
        entries = tmp_path / "boot/loader/entries"
        entries.mkdir(parents=True, exist_ok=True)
        (entries / f"ostree-{version}-debian.conf").write_text(
            f"title Debian\nversion {version}\nlinux /x\n"
            f"options root=UUID=1 ostree=/ostree/boot.1/debian/bootcsum/{serial}\n"
        )
    os.symlink("boot.1.1", tmp_path / "ostree/boot.1")
    assert etc_cmd.find_deployment(tmp_path) == new
    rc = etc_cmd.main(parse("--sysroot", str(tmp_path), "diff", "--json"))
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["added"] == ["new-only"]


def test_find_deployment_falls_back_to_deploy_dirs(tmp_path: Path) -> None:
    dep = make_sysroot(tmp_path, "ccc")
    assert etc_cmd.find_deployment(tmp_path) == dep
    with pytest.raises(RetrofitError, match=r"^etc diff: no OSTree deployment found under"):
        etc_cmd.find_deployment(tmp_path / "ostree/deploy/debian/deploy/ccc.0/etc")
