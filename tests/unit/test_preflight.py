from __future__ import annotations

import dataclasses

import pytest

from convert import preflight
from convert.plan import PHASES, Plan, make_plan
from retrofit.hostfacts import DataDir, HostFacts, Kernel

GOOD = HostFacts(
    root="/srv/tree",
    live=False,
    os_id="debian",
    version_id="12",
    codename="bookworm",
    pretty_name="Debian GNU/Linux 12 (bookworm)",
    arch="amd64",
    euid=0,
    container=None,
    broken_packages=(),
    dpkg_audit="",
    fstype="ext4",
    root_mount="/",
    usr_is_mount=False,
    boot_is_mount=False,
    boot_fstype="ext4",
    free_bytes=10 << 30,
    usr_bytes=700 << 20,
    etc_bytes=2 << 20,
    kernels=(
        Kernel("6.1.0-50-amd64", "boot/vmlinuz-6.1.0-50-amd64", "boot/initrd.img-6.1.0-50-amd64"),
    ),
    grub_packages=("grub-pc",),
    firmware="bios",
    initramfs_generators=("initramfs-tools",),
    installed=frozenset({"ostree"}),
    already_converted=None,
    data_dirs=(
        DataDir("var", True, False, False, 0),
        DataDir("home", True, False, False, 10),
        DataDir("opt", False, False, False, 0),
    ),
    kargs=("root=UUID=abcd", "ro", "console=ttyS0"),
    ostree_dir_exists=False,
    package_state_dirs=("lib/dpkg", "cache/debconf"),
)


def by_name(checks: list[preflight.Check]) -> dict[str, preflight.Check]:
    return {c.name: c for c in checks}


def test_good_host_passes() -> None:
    checks = preflight.run_checks(GOOD)
    assert not preflight.blocking(checks), preflight.render(checks)
    assert by_name(checks)["container"].status == preflight.SKIP


@pytest.mark.parametrize(
    "change, name, text",
    [
        ({"euid": 1000}, "root", "running as uid 1000, not root"),
        ({"os_id": "fedora", "version_id": "40"}, "distro", "unsupported distribution fedora 40"),
        ({"os_id": "debian", "version_id": "10"}, "distro", "unsupported distribution debian 10"),
        ({"os_id": "ubuntu", "version_id": "23.10"}, "distro", "unsupported"),
        ({"arch": "mips"}, "architecture", "architecture mips is not supported"),
        ({"live": True, "container": "docker"}, "container", "inside a container (docker)"),
        ({"broken_packages": ("less (half-configured)",)}, "dpkg-state", "less (half-configured)"),
        (
            {"dpkg_audit": "The following packages are only half configured"},
            "dpkg-state",
            "not clean",
        ),
        ({"fstype": "vfat"}, "filesystem", "is vfat, which is not supported"),
        ({"usr_is_mount": True}, "usr-mount", "/usr is a separate mount"),
        ({"free_bytes": 100 << 20}, "free-space", "not enough space"),
        ({"already_converted": "x has deployments"}, "already-converted", "x has deployments"),
        ({"grub_packages": ()}, "bootloader", "no GRUB installation found"),
        ({"initramfs_generators": ()}, "initramfs", "no initramfs generator"),
        ({"kernels": ()}, "kernel", "no kernel found"),
        ({"split_usr_dirs": ("/bin",)}, "merged-usr", "/bin not merged into /usr"),
        (
            {"data_dirs": (DataDir("home", True, False, True, 0),)},
            "mount-home",
            "/home is a separate mount",
        ),
    ],
)
def test_each_refusal(change: dict[str, object], name: str, text: str) -> None:
    facts = dataclasses.replace(GOOD, **change)  # type: ignore[arg-type]
    checks = by_name(preflight.run_checks(facts))
    assert checks[name].status == preflight.FAIL
    assert text in checks[name].reason
    assert checks[name].hint


@pytest.mark.parametrize(
    "os_id, version", [("debian", "11"), ("debian", "13"), ("ubuntu", "20.04"), ("ubuntu", "24.04")]
)
def test_supported_releases(os_id: str, version: str) -> None:
    facts = dataclasses.replace(GOOD, os_id=os_id, version_id=version)
    assert by_name(preflight.run_checks(facts))["distro"].status == preflight.PASS


def test_needed_space_is_computed_from_usr_and_etc() -> None:
    assert GOOD.needed_bytes == int((700 << 20) * 1.05 + (2 << 20) * 1.05)
    tight = dataclasses.replace(GOOD, free_bytes=GOOD.needed_bytes - 1)
    assert by_name(preflight.run_checks(tight))["free-space"].status == preflight.FAIL
    exact = dataclasses.replace(GOOD, free_bytes=GOOD.needed_bytes)
    assert by_name(preflight.run_checks(exact))["free-space"].status == preflight.PASS


def test_unknown_top_level_warns() -> None:
    facts = dataclasses.replace(GOOD, unknown_top_level=("data",))
    c = by_name(preflight.run_checks(facts))["top-level"]
    assert c.status == preflight.WARN and "/data" in c.reason


def test_json_schema() -> None:
    out = preflight.to_json(preflight.run_checks(GOOD))
    assert out["apiVersion"] == 1 and out["ok"] is True
    assert all(set(c) == {"name", "status", "reason", "hint"} for c in out["checks"])


def test_plan_is_pure_and_round_trips() -> None:
    plan = make_plan(GOOD)
    assert plan == make_plan(GOOD).__class__(
        **{
            **plan.to_dict(),
            "created": plan.created,
            "kargs": plan.kargs,
            "kernels": plan.kernels,
            "missing_packages": plan.missing_packages,
            "data_moves": plan.data_moves,
            "state_moves": plan.state_moves,
        }
    )
    assert Plan.from_dict(plan.to_dict()) == plan
    assert plan.ref == "retrofit/debian/bookworm/amd64/base"
    assert plan.missing_packages == ("ostree-boot", "bubblewrap")
    sources = [m.source for m in plan.data_moves]
    assert sources == ["var", "home"]  # /opt does not exist: not moved
    assert plan.data_moves[1].target == "ostree/deploy/debian/var/home"
    assert [m.link for m in plan.state_moves] == [
        "/usr/share/dpkg/database",
        "/usr/share/debconf/database",
    ]
    text = plan.render()
    for name in PHASES:
        assert name in text
    assert "/home -> /ostree/deploy/debian/var/home" in text
