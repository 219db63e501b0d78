from __future__ import annotations

import os
from pathlib import Path

from convert.content import patch_pyc, pyc_patches, tmpfiles_lines
from retrofit import rootpath
from retrofit.hostfacts import grub_kargs, inherited_kargs, parse_os_release

HEADER_MAGIC = b"\xa7\r\r\n"


def pyc(flags: int, mtime: int, size: int, body: bytes = b"code") -> bytes:
    return (
        HEADER_MAGIC
        + flags.to_bytes(4, "little")
        + mtime.to_bytes(4, "little")
        + size.to_bytes(4, "little")
        + body
    )


def test_patch_pyc_valid_timestamp_pyc() -> None:
    out = patch_pyc(pyc(0, 1700000000, 42), 1700000000, 42)
    assert out == pyc(0, 0, 42)


def test_patch_pyc_leaves_stale_and_hash_based_alone() -> None:
    assert patch_pyc(pyc(0, 1700000000, 42), 1700000001, 42) is None  # stale mtime
    assert patch_pyc(pyc(0, 1700000000, 42), 1700000000, 43) is None  # stale size
    assert patch_pyc(pyc(1, 0, 0), 5, 0) is None  # hash-based
    assert patch_pyc(b"short", 0, 0) is None


def test_patch_pyc_large_mtime_wraps_like_python() -> None:
    big = (1 << 32) + 5
    assert patch_pyc(pyc(0, 5, 1), big, 1) == pyc(0, 0, 1)


def test_pyc_patches_walks_pycache(tmp_path: Path) -> None:
    pkg = tmp_path / "lib/python3/dist-packages/mod"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    st = (pkg / "a.py").stat()
    (pkg / "__pycache__/a.cpython-311.pyc").write_bytes(pyc(0, int(st.st_mtime), st.st_size))
    (pkg / "__pycache__/b.cpython-311.pyc").write_bytes(pyc(0, 1, 1))  # no source
    out = list(pyc_patches(tmp_path))
    assert [e.dest for e in out] == [
        "usr/lib/python3/dist-packages/mod/__pycache__/a.cpython-311.pyc"
    ]
    assert out[0].data == pyc(0, 0, st.st_size)


def test_rootpath_resolves_absolute_links_inside_root(tmp_path: Path) -> None:
    (tmp_path / "usr/share/dpkg/database").mkdir(parents=True)
    (tmp_path / "ostree/deploy/debian/var/lib").mkdir(parents=True)
    os.symlink("ostree/deploy/debian/var", tmp_path / "var")
    os.symlink("/usr/share/dpkg/database", tmp_path / "ostree/deploy/debian/var/lib/dpkg")
    assert rootpath.resolve(tmp_path, "var/lib/dpkg") == tmp_path / "usr/share/dpkg/database"
    os.symlink("../../..", tmp_path / "usr/share/dpkg/up")
    assert rootpath.resolve(tmp_path, "usr/share/dpkg/up/etc") == tmp_path / "etc"


def test_parse_os_release() -> None:
    text = 'NAME="Ubuntu"\nVERSION_ID="24.04"\n# c\nID=ubuntu\nVERSION_CODENAME=noble\nBAD\n'
    assert parse_os_release(text) == {
        "NAME": "Ubuntu",
        "VERSION_ID": "24.04",
        "ID": "ubuntu",
        "VERSION_CODENAME": "noble",
    }


def test_kargs_inherited_from_fstab_and_grub(tmp_path: Path) -> None:
    (tmp_path / "etc/default/grub.d").mkdir(parents=True)
    (tmp_path / "etc/fstab").write_text(
        "# x\nUUID=1234 / ext4 defaults 0 1\nUUID=99 /boot ext4 defaults 0 2\n"
    )
    (tmp_path / "etc/default/grub").write_text(
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
        'GRUB_CMDLINE_LINUX="console=ttyS0,115200 net.ifnames=0"\n'
    )
    (tmp_path / "etc/default/grub.d/x.cfg").write_text(
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet splash"\n'
    )
    assert grub_kargs(tmp_path) == ["console=ttyS0,115200", "net.ifnames=0", "quiet", "splash"]
    assert inherited_kargs(tmp_path, live=False) == (
        "root=UUID=1234",
        "ro",
        "console=ttyS0,115200",
        "net.ifnames=0",
        "quiet",
        "splash",
        "panic=30",
    )
    (tmp_path / "etc/default/grub.d/y.cfg").write_text('GRUB_CMDLINE_LINUX="panic=5"\n')
    kargs = inherited_kargs(tmp_path, live=False)
    assert "panic=5" in kargs and "panic=30" not in kargs


def test_tmpfiles_lines(tmp_path: Path) -> None:
    info = tmp_path / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (info / "nginx-common.list").write_text("/.\n/var\n/var/lib\n/var/lib/nginx\n/usr/bin/x\n")
    (info / "dpkg.list").write_text("/var/lib/dpkg\n/var/lib/dpkg/alternatives\n")
    (tmp_path / "var/lib/nginx").mkdir(parents=True)
    os.chmod(tmp_path / "var/lib/nginx", 0o750)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\n")
    os.symlink("/run", tmp_path / "var/run")
    (info / "base-files.list").write_text("/var/run\n")
    lines = tmpfiles_lines(tmp_path, tmp_path / "var/lib/dpkg", ["/var/lib/dpkg"])
    assert "L /var/lib/dpkg - - - - /usr/share/dpkg/database" in lines
    assert "d /var/lib/nginx 0750 root root -" in lines
    assert "L /var/run - - - - /run" in lines
    assert not any("alternatives" in ln for ln in lines)
