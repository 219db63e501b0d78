"""Preflight: every check, each pass/fail/warn with a reason. Pure function of facts.

A check with status ``fail`` blocks ``convert``: it refuses before any change and
prints the first failure as one line with a hint.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass

from retrofit.hostfacts import SUPPORTED, SUPPORTED_FS, HostFacts
from retrofit.log import human_size

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"
SUPPORTED_ARCHES = ("amd64", "arm64")


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    reason: str
    hint: str | None = None

    @property
    def blocking(self) -> bool:
        return self.status == FAIL


def _supported_list() -> str:
    parts = []
    for os_id, versions in sorted(SUPPORTED.items()):
        parts.append(f"{os_id.capitalize()} {', '.join(sorted(versions, key=float))}")
    return "; ".join(parts)


def run_checks(f: HostFacts, usr_mode: str = "copy") -> list[Check]:
    c: list[Check] = []
    # Without root most facts are unreadable: this check comes first.
    if f.euid == 0:
        c.append(Check("root", PASS, "running as root"))
    else:
        c.append(
            Check(
                "root",
                FAIL,
                f"running as uid {f.euid}, not root",
                "run it as root: sudo retrofit ...",
            )
        )

    # The system must be something we know.
    if f.already_converted:
        c.append(
            Check(
                "already-converted",
                FAIL,
                f.already_converted,
                "use the day-two verbs instead: retrofit status, install, upgrade, rollback",
            )
        )
    else:
        c.append(Check("already-converted", PASS, "no OSTree deployments found"))

    if f.supported_release:
        c.append(Check("distro", PASS, f"{f.pretty_name} ({f.os_id} {f.version_id}, {f.codename})"))
    else:
        c.append(
            Check(
                "distro",
                FAIL,
                f"unsupported distribution {f.os_id} {f.version_id or '(no VERSION_ID)'} "
                f"in {f.root}/etc/os-release",
                f"supported: {_supported_list()}",
            )
        )

    if f.arch in SUPPORTED_ARCHES:
        c.append(Check("architecture", PASS, f"{f.arch}"))
    else:
        c.append(
            Check(
                "architecture",
                FAIL,
                f"architecture {f.arch or 'unknown'} is not supported",
                f"supported: {', '.join(SUPPORTED_ARCHES)}",
            )
        )
    if f.live and f.arch == "amd64" and platform.machine() not in ("x86_64", "amd64"):
        c.append(
            Check(
                "architecture-machine",
                FAIL,
                f"dpkg says {f.arch} but the CPU is {platform.machine()}",
            )
        )

    if not f.live:
        c.append(Check("container", SKIP, "offline tree (--sysroot): not applicable"))
    elif f.container:
        c.append(
            Check(
                "container",
                FAIL,
                f"running inside a container ({f.container})",
                "convert the host itself, or rehearse in a VM: retrofit rehearse",
            )
        )
    else:
        c.append(Check("container", PASS, "not inside a container"))

    if f.broken_packages or f.dpkg_audit:
        what = ", ".join(f.broken_packages) or f.dpkg_audit.splitlines()[0]
        c.append(
            Check(
                "dpkg-state",
                FAIL,
                f"dpkg state is not clean: {what}",
                "finish or undo the interrupted package operation: "
                "dpkg --configure -a, or apt-get -f install",
            )
        )
    else:
        c.append(
            Check(
                "dpkg-state",
                PASS,
                "no half-installed or half-configured packages (dpkg --audit is clean)",
            )
        )

    if f.fstype in SUPPORTED_FS:
        c.append(Check("filesystem", PASS, f"root filesystem is {f.fstype}"))
    else:
        c.append(
            Check(
                "filesystem",
                FAIL,
                f"root filesystem {f.root_mount} is {f.fstype or 'unknown'}, "
                "which is not supported",
                f"supported: {', '.join(SUPPORTED_FS)}",
            )
        )

    if f.usr_is_mount:
        c.append(
            Check(
                "usr-mount",
                FAIL,
                f"{f.root}/usr is a separate mount",
                "merge /usr into the root filesystem first; OSTree needs /usr "
                "on the same filesystem as /ostree",
            )
        )
    else:
        c.append(Check("usr-mount", PASS, "/usr is on the root filesystem"))

    for d in f.data_dirs:
        if d.is_mount:
            c.append(
                Check(
                    f"mount-{d.path.replace('/', '-')}",
                    FAIL,
                    f"/{d.path} is a separate mount; it cannot be moved into the "
                    "stateroot by rename",
                    f"unmount /{d.path} and merge it into the root filesystem, or "
                    "wait for separate-mount support",
                )
            )

    if f.split_usr_dirs:
        c.append(
            Check(
                "merged-usr",
                FAIL,
                f"{', '.join(f.split_usr_dirs)} not merged into /usr",
                "merge /usr first: apt-get install usrmerge",
            )
        )
    else:
        c.append(Check("merged-usr", PASS, "/bin, /sbin and /lib are symlinks into /usr"))

    if f.unknown_top_level:
        c.append(
            Check(
                "top-level",
                WARN,
                "top-level entries the new system will not "
                f"show at /: {', '.join('/' + n for n in f.unknown_top_level)} (they "
                "stay on the physical root, visible under /sysroot)",
                "move them under /var, /srv or /opt before converting",
            )
        )

    need, free = f.needed_bytes, f.free_bytes
    if usr_mode == "adopt":
        need = need // 20  # /usr is linked, not copied: directories and /etc only
    if free >= need:
        c.append(
            Check(
                "free-space",
                PASS,
                f"{human_size(free)} free on {f.root_mount}, "
                f"the plan needs {human_size(need)} (/usr {human_size(f.usr_bytes)} + "
                f"/etc {human_size(f.etc_bytes)} + kernels, +5 %)",
            )
        )
    else:
        c.append(
            Check(
                "free-space",
                FAIL,
                f"not enough space on {f.root_mount}: {human_size(free)} free, "
                f"the plan needs {human_size(need)}",
                f"free at least {human_size(need - free)} (apt-get clean, old "
                "kernels, logs) and run preflight again",
            )
        )

    if f.kernels:
        names = ", ".join(k.version for k in f.kernels)
        missing = [k.version for k in f.kernels if not k.initrd]
        if missing:
            c.append(
                Check(
                    "kernel",
                    WARN,
                    f"kernels {names}; no initramfs for {', '.join(missing)}",
                    "update-initramfs -c -k KVER",
                )
            )
        else:
            c.append(Check("kernel", PASS, f"kernel(s) {names} with initramfs"))
    else:
        c.append(
            Check(
                "kernel",
                FAIL,
                "no kernel found (no /boot/vmlinuz-KVER with /usr/lib/modules/KVER)",
                "install a kernel: apt-get install linux-image-amd64",
            )
        )

    where = f"a separate {f.boot_fstype} partition" if f.boot_is_mount else "the root filesystem"
    boot = f"/boot on {where}"
    if f.grub_packages:
        c.append(
            Check(
                "bootloader",
                PASS,
                f"GRUB ({', '.join(f.grub_packages)}), {f.firmware.upper()}; {boot}",
            )
        )
    else:
        c.append(
            Check(
                "bootloader",
                FAIL,
                f"no GRUB installation found; {boot}",
                "retrofit supports GRUB (BIOS or UEFI); install grub-pc or grub-efi-amd64",
            )
        )

    if f.initramfs_generators:
        c.append(
            Check("initramfs", PASS, f"initramfs generator: {', '.join(f.initramfs_generators)}")
        )
    else:
        c.append(
            Check(
                "initramfs",
                FAIL,
                "no initramfs generator (initramfs-tools or dracut) installed",
                "apt-get install initramfs-tools",
            )
        )

    if f.ostree_dir_exists and not f.already_converted:
        c.append(
            Check(
                "ostree-dir",
                WARN,
                f"{f.root}/ostree exists without deployments (an interrupted conversion?)",
                "retrofit convert resumes it; retrofit convert --revert undoes it",
            )
        )
    return c


def blocking(checks: list[Check]) -> list[Check]:
    return [ch for ch in checks if ch.blocking]


def to_json(checks: list[Check]) -> dict[str, object]:
    return {
        "apiVersion": 1,
        "ok": not blocking(checks),
        "checks": [asdict(ch) for ch in checks],
    }


def render(checks: list[Check]) -> str:
    width = max(len(ch.name) for ch in checks)
    lines = []
    for ch in checks:
        lines.append(f"{ch.status.upper():4}  {ch.name:<{width}}  {ch.reason}")
        if ch.hint and ch.status in (FAIL, WARN):
            lines.append(f"{'':4}  {'':<{width}}  hint: {ch.hint}")
    return "\n".join(lines)
