"""Facts about the system to convert, gathered before anything changes.

:func:`gather` only reads. The result is frozen; preflight checks and the plan are
pure functions of it (bootc's ``prepare_install`` discipline).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from retrofit import dpkgdb, layout, rootpath
from retrofit.run import output, run, which

SUPPORTED = {
    "debian": {"11", "12", "13"},
    "ubuntu": {"20.04", "22.04", "24.04"},
}
CODENAMES = {
    ("debian", "11"): "bullseye",
    ("debian", "12"): "bookworm",
    ("debian", "13"): "trixie",
    ("ubuntu", "20.04"): "focal",
    ("ubuntu", "22.04"): "jammy",
    ("ubuntu", "24.04"): "noble",
}
SUPPORTED_FS = ("ext4", "xfs", "btrfs")
# Top-level entries the conversion knows how to carry over (or that are mount points,
# kernel symlinks and the like that need nothing).
KNOWN_TOP_LEVEL = frozenset(
    {
        "bin",
        "boot",
        "dev",
        "etc",
        "home",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "media",
        "mnt",
        "opt",
        "proc",
        "root",
        "run",
        "sbin",
        "srv",
        "sys",
        "tmp",
        "usr",
        "var",
        "ostree",
        "sysroot",
        "lost+found",
        "initrd.img",
        "initrd.img.old",
        "vmlinuz",
        "vmlinuz.old",
        "swapfile",
        "swap.img",
        "snap",
        "cdrom",
    }
)


@dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: str  # relative to the root
    initrd: str | None


@dataclass(frozen=True)
class DataDir:
    path: str  # relative to the root
    exists: bool
    is_symlink: bool
    is_mount: bool
    size: int


@dataclass(frozen=True)
class HostFacts:
    root: str
    live: bool
    os_id: str
    version_id: str
    codename: str
    pretty_name: str
    arch: str | None
    euid: int
    container: str | None
    broken_packages: tuple[str, ...]
    dpkg_audit: str
    fstype: str
    root_mount: str
    usr_is_mount: bool
    boot_is_mount: bool
    boot_fstype: str
    free_bytes: int
    usr_bytes: int
    etc_bytes: int
    kernels: tuple[Kernel, ...]
    grub_packages: tuple[str, ...]
    firmware: str  # "uefi" | "bios"
    initramfs_generators: tuple[str, ...]
    installed: frozenset[str]
    already_converted: str | None
    data_dirs: tuple[DataDir, ...]
    kargs: tuple[str, ...]
    ostree_dir_exists: bool
    package_state_dirs: tuple[str, ...] = field(default=())
    split_usr_dirs: tuple[str, ...] = field(default=())
    unknown_top_level: tuple[str, ...] = field(default=())

    @property
    def supported_release(self) -> bool:
        return self.version_id in SUPPORTED.get(self.os_id, set())

    @property
    def needed_bytes(self) -> int:
        """Extra space the conversion needs: one copy of /usr and /etc in the repository,
        the kernels copied to /boot by the deployment, plus 5 % slack for metadata."""
        kern = self.kernel_bytes
        return int((self.usr_bytes + self.etc_bytes) * 1.05) + kern

    @property
    def kernel_bytes(self) -> int:
        total = 0
        for k in self.kernels:
            for rel in (k.vmlinuz, k.initrd):
                if rel:
                    try:
                        total += os.stat(Path(self.root) / rel).st_size
                    except OSError:
                        pass
        return total

    def to_dict(self) -> dict[str, object]:
        d = dict(self.__dict__)
        d["kernels"] = [k.__dict__ for k in self.kernels]
        d["data_dirs"] = [x.__dict__ for x in self.data_dirs]
        d["installed"] = len(self.installed)
        d["needed_bytes"] = self.needed_bytes
        return d


def parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            parts = [value.strip("\"'")]
        out[key] = parts[0] if parts else ""
    return out


def read_os_release(root: Path) -> dict[str, str]:
    for rel in ("etc/os-release", "usr/lib/os-release"):
        p = rootpath.resolve(root, rel)
        try:
            return parse_os_release(p.read_text())
        except OSError:
            continue
    return {}


def tree_bytes(path: Path) -> int:
    """Disk usage of a tree (st_blocks), counting hardlinked inodes once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [str(path)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                total += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return total


def findmnt(path: Path) -> dict[str, str]:
    """The mount containing ``path`` (target, source, fstype, options)."""
    if which("findmnt") is None:
        return {"target": "/", "source": "", "fstype": "unknown", "options": ""}
    out = output(["findmnt", "-J", "-T", str(path), "-o", "TARGET,SOURCE,FSTYPE,OPTIONS"])
    fs = json.loads(out)["filesystems"][0]
    return {k: str(v or "") for k, v in fs.items()}


def is_mount(path: Path) -> bool:
    try:
        return (
            path.exists()
            and not path.is_symlink()
            and findmnt(path)["target"] == str(path.resolve())
        )
    except Exception:
        return os.path.ismount(path)


def find_kernels(root: Path) -> tuple[Kernel, ...]:
    kernels = []
    boot = root / "boot"
    for mod in (
        sorted((root / "usr/lib/modules").glob("*")) if (root / "usr/lib/modules").is_dir() else []
    ):
        kver = mod.name
        vmlinuz = boot / f"vmlinuz-{kver}"
        if not vmlinuz.exists():
            continue
        initrd = None
        for name in (f"initrd.img-{kver}", f"initramfs-{kver}.img"):
            if (boot / name).exists():
                initrd = f"boot/{name}"
                break
        kernels.append(Kernel(kver, f"boot/vmlinuz-{kver}", initrd))
    return tuple(kernels)


def detect_container(live: bool) -> str | None:
    if not live:
        return None
    if os.path.exists("/run/.containerenv"):
        return "podman"
    if os.path.exists("/.dockerenv"):
        return "docker"
    try:
        env = Path("/proc/1/environ").read_bytes().split(b"\0")
        for item in env:
            if item.startswith(b"container="):
                return item.split(b"=", 1)[1].decode() or "container"
    except OSError:
        pass
    if which("systemd-detect-virt"):
        r = run(["systemd-detect-virt", "--container"], ok=(0, 1))
        if r.returncode == 0 and r.stdout.strip() not in ("", "none"):
            return r.stdout.strip()
    return None


def grub_kargs(root: Path) -> list[str]:
    """GRUB_CMDLINE_LINUX and GRUB_CMDLINE_LINUX_DEFAULT from /etc/default/grub."""
    values: dict[str, str] = {}
    files = [root / "etc/default/grub"] + sorted((root / "etc/default/grub.d").glob("*.cfg"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            m = re.match(r"\s*(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=(.*)$", line)
            if m:
                try:
                    parts = shlex.split(m.group(2))
                    values[m.group(1)] = parts[0] if parts else ""
                except ValueError:
                    continue
    return (
        values.get("GRUB_CMDLINE_LINUX", "") + " " + values.get("GRUB_CMDLINE_LINUX_DEFAULT", "")
    ).split()


def fstab_root(root: Path) -> str | None:
    try:
        text = (root / "etc/fstab").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and fields[1] == "/":
            return fields[0]
    return None


# A trial boot that panics (kernel or initramfs) must reboot by itself so GRUB's
# one-shot entry is spent and the previous system comes back (grub/trial.py);
# an operator's own panic= wins.
PANIC_KARG = "panic=30"


def inherited_kargs(root: Path, live: bool) -> tuple[str, ...]:
    """The kernel command line the new deployment inherits from the host, plus
    ``panic=30`` when the host sets no ``panic=``."""
    args: list[str] = []
    if live:
        try:
            cmdline = Path("/proc/cmdline").read_text().split()
        except OSError:
            cmdline = []
        drop = ("BOOT_IMAGE=", "ostree=", "initrd=")
        args = [a for a in cmdline if not a.startswith(drop)]
    else:
        spec = fstab_root(root)
        if spec:
            args.append(f"root={spec}")
        args.append("ro")
        for a in grub_kargs(root):
            if a not in args:
                args.append(a)
    if not any(a.startswith("panic=") for a in args):
        args.append(PANIC_KARG)
    return tuple(args)


def already_converted(root: Path, live: bool) -> str | None:
    if live and os.path.exists("/run/ostree-booted"):
        return "the running system is already booted from an OSTree deployment"
    deploy = root / "ostree/deploy"
    if deploy.is_dir():
        for sr in deploy.iterdir():
            if (sr / "deploy").is_dir() and any((sr / "deploy").iterdir()):
                return f"{root} already has OSTree deployments in {deploy}"
    return None


def gather(root: Path) -> HostFacts:
    root = root.resolve()
    live = root == Path("/")
    osr = read_os_release(root)
    os_id = osr.get("ID", "unknown")
    version_id = osr.get("VERSION_ID", "")
    codename = osr.get("VERSION_CODENAME") or CODENAMES.get((os_id, version_id), "")
    admindir = rootpath.resolve(root, "var/lib/dpkg")
    try:
        pkgs = dpkgdb.read_status(admindir)
    except OSError:
        pkgs = []
    installed = frozenset(p.name for p in pkgs if p.installed)
    broken = tuple(sorted(f"{p.name} ({p.state})" for p in pkgs if p.state in dpkgdb.BROKEN_STATES))
    audit = ""
    if which("dpkg") and admindir.is_dir():
        r = run(["dpkg", f"--admindir={admindir}", "--audit"], ok=(0, 1))
        audit = r.stdout.strip()
    arch = dpkgdb.native_arch(admindir) if admindir.is_dir() else None
    mnt = findmnt(root)
    boot_mnt = findmnt(root / "boot") if (root / "boot").exists() else mnt
    st = os.statvfs(root)
    data_dirs = []
    for mv in (layout.DataMove("var", "", "ostree"),) + layout.DATA_MOVES:
        p = root / mv.source
        exists = p.exists() or p.is_symlink()
        sym = p.is_symlink()
        data_dirs.append(
            DataDir(
                mv.source,
                exists,
                sym,
                is_mount(p) if exists and not sym else False,
                tree_bytes(p) if exists and not sym and mv.source != "var" else 0,
            )
        )
    generators = tuple(g for g in ("initramfs-tools", "dracut") if g in installed)
    grub = tuple(
        sorted(
            p
            for p in installed
            if p.startswith("grub-pc") or p.startswith("grub-efi") or p == "grub2-common"
        )
    )
    if live:
        firmware = "uefi" if os.path.isdir("/sys/firmware/efi") else "bios"
    else:
        firmware = (
            "uefi"
            if any(p.startswith("grub-efi") for p in grub)
            and not any(p.startswith("grub-pc") for p in grub)
            else "bios"
        )
    state_dirs = tuple(
        m.var_path
        for m in layout.STATE_MOVES
        if rootpath.resolve(root, "var/" + m.var_path).is_dir()
    )
    return HostFacts(
        root=str(root),
        live=live,
        os_id=os_id,
        version_id=version_id,
        codename=codename,
        pretty_name=osr.get("PRETTY_NAME", f"{os_id} {version_id}"),
        arch=arch,
        euid=os.geteuid(),
        container=detect_container(live),
        broken_packages=broken,
        dpkg_audit=audit,
        fstype=mnt["fstype"],
        root_mount=mnt["target"],
        usr_is_mount=is_mount(root / "usr"),
        boot_is_mount=boot_mnt["target"] != mnt["target"],
        boot_fstype=boot_mnt["fstype"],
        free_bytes=st.f_bavail * st.f_frsize,
        usr_bytes=tree_bytes(root / "usr"),
        etc_bytes=tree_bytes(root / "etc"),
        kernels=find_kernels(root),
        grub_packages=grub,
        firmware=firmware,
        initramfs_generators=generators,
        installed=installed,
        already_converted=already_converted(root, live),
        data_dirs=tuple(data_dirs),
        kargs=inherited_kargs(root, live),
        ostree_dir_exists=(root / "ostree").exists(),
        package_state_dirs=state_dirs,
        split_usr_dirs=tuple(
            f"/{n}"
            for n in ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
            if (root / n).is_dir() and not (root / n).is_symlink()
        ),
        unknown_top_level=tuple(
            sorted(
                e.name
                for e in os.scandir(root)
                if e.name not in KNOWN_TOP_LEVEL and not e.name.startswith(".retrofit")
            )
        ),
    )
