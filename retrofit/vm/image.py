"""The box builder: a bootable Debian disk image made from an mmdebstrap tree.

The tree (packages and in-guest configuration) comes from :mod:`retrofit.debtree`,
cached by its inputs. This module lays it onto a partitioned raw disk (pyparted),
installs GRUB for BIOS (grub-pc) or UEFI (grub-efi-amd64, removable path so OVMF
finds it without NVRAM), writes ``root=UUID=`` into grub.cfg and fstab, and converts
the result to qcow2. The image is cached under ``/var/cache/retrofit/vm`` keyed by
every input; it is built in a temporary directory and renamed into place only when
complete. :func:`build_box` packages the same image as a vagrant-libvirt box.

Needs root (loop devices, mounts, chroot).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from retrofit.debtree import CACHE_DIR, DEFAULT_MIRROR, TreeSpec, cached_tree
from retrofit.errors import RetrofitError
from retrofit.log import log
from retrofit.run import output, require_tool, run

VM_CACHE_DIR = CACHE_DIR / "vm"
# Bump when the way images are laid out changes, so old cache entries are not reused.
IMAGE_BUILDER_VERSION = "1"

KEYS_DIR = Path(__file__).resolve().parent / "keys"
# Vagrant's well-known insecure key pair (keys/vagrant, keys/vagrant.pub), as shipped
# by Vagrant itself: boxes carrying it work with any Vagrant out of the box.
PUBLIC_KEY_FILE = KEYS_DIR / "vagrant.pub"
PRIVATE_KEY_FILE = KEYS_DIR / "vagrant"

BOX_NAME = "retrofit/debian12"
LAB_USER = "vagrant"

BASE_PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",
    "udev",
    "systemd-sysv",
    "systemd-resolved",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "sudo",
    "e2fsprogs",
    "iproute2",
    "iputils-ping",
    "procps",
    "less",
    "ca-certificates",
)
# What retrofit itself needs at run time on the converted host.
RETROFIT_RUNTIME_PACKAGES: tuple[str, ...] = (
    "python3",
    "python3-apt",
    "python3-gi",
    "gir1.2-ostree-1.0",
    "ostree",
    "ostree-boot",
    "bubblewrap",
    "python3-parted",
    "python3-sh",
    "python3-yaml",
    "python3-merge3",
    "rsync",
)
# The initramfs generator is part of the spec: Debian's default or dracut (which
# conflicts with it), so the boot chain is proven with both.
INITRAMFS_GENERATORS = ("initramfs-tools", "dracut")
FIRMWARE_PACKAGES = {
    "bios": ("grub-pc",),
    "uefi": ("grub-efi-amd64", "dosfstools", "mtools"),
}

MIB = 1024 * 1024
BOOT_SIZE = 512 * MIB
ESP_SIZE = 256 * MIB
BIOS_GRUB_SIZE = 1 * MIB


@dataclass(frozen=True)
class ImageSpec:
    """Everything that determines an image; its hash (with the tree's) is the cache key.

    ``firmware`` is ``bios`` (grub-pc) or ``uefi`` (ESP + grub-efi, boot with OVMF).
    ``table`` is ``msdos`` or ``gpt``; empty means msdos for BIOS, gpt for UEFI
    (GPT with BIOS gets a 1 MiB bios_grub partition). ``separate_boot`` puts /boot
    on its own ext4 partition, as many servers have. ``initramfs_modules`` is
    ``list`` (a small initramfs for the lab's virtio hardware: faster boots) or
    ``most`` (Debian's default, as on a real server). ``initramfs`` is the generator:
    ``initramfs-tools`` (Debian's default) or ``dracut``.
    """

    suite: str = "bookworm"
    firmware: str = "bios"
    table: str = ""
    separate_boot: bool = False
    size_gib: int = 10
    initramfs_modules: str = "list"
    initramfs: str = "initramfs-tools"
    extra_packages: tuple[str, ...] = ()
    hostname: str = "retrofit-lab"
    mirror: str = DEFAULT_MIRROR

    def __post_init__(self) -> None:
        if self.firmware not in FIRMWARE_PACKAGES:
            raise RetrofitError(
                f"vm image: unknown firmware {self.firmware!r}", hint="use 'bios' or 'uefi'"
            )
        if self.table not in ("", "msdos", "gpt"):
            raise RetrofitError(
                f"vm image: unknown partition table {self.table!r}", hint="use 'msdos' or 'gpt'"
            )
        if self.initramfs_modules not in ("list", "most"):
            raise RetrofitError(
                f"vm image: unknown initramfs_modules {self.initramfs_modules!r}",
                hint="use 'list' or 'most'",
            )
        if self.initramfs not in INITRAMFS_GENERATORS:
            raise RetrofitError(
                f"vm image: unknown initramfs generator {self.initramfs!r}",
                hint="use 'initramfs-tools' or 'dracut'",
            )
        if self.firmware == "uefi" and self.table == "msdos":
            raise RetrofitError(
                "vm image: a UEFI image needs a GPT partition table", hint="use table='gpt'"
            )

    @property
    def partition_table(self) -> str:
        return self.table or ("gpt" if self.firmware == "uefi" else "msdos")

    @property
    def name(self) -> str:
        parts = ["debian", self.suite, self.firmware, self.partition_table]
        if self.separate_boot:
            parts.append("boot")
        if self.initramfs != "initramfs-tools":
            parts.append(self.initramfs)
        return "-".join(parts)

    def tree(self) -> TreeSpec:
        packages = (
            BASE_PACKAGES
            + (self.initramfs,)
            + RETROFIT_RUNTIME_PACKAGES
            + FIRMWARE_PACKAGES[self.firmware]
            + tuple(self.extra_packages)
        )
        return TreeSpec(
            suite=self.suite,
            variant="minbase",
            packages=tuple(sorted(set(packages))),
            mirror=self.mirror,
            customize=customize_hooks(self),
        )

    def key(self) -> str:
        spec = asdict(self)
        if spec["initramfs"] == "initramfs-tools":
            del spec["initramfs"]  # added later: the default keeps the older cache keys
        blob = json.dumps(
            {
                "v": IMAGE_BUILDER_VERSION,
                "tree": self.tree().key(),
                "spec": spec,
                "table": self.partition_table,
            },
            sort_keys=True,
            default=list,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def uuid(self, role: str) -> str:
        """Filesystem UUIDs derived from the cache key: the same inputs, the same disk."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"retrofit-vm:{self.key()}:{role}"))


# --- the tree: packages and in-guest configuration -------------------------------------


def _write_hook(path: str, content: str, mode: str = "0644") -> str:
    """A customize hook writing ``content`` to ``path`` inside the tree ($1)."""
    return (
        f'mkdir -p "$1{os.path.dirname(path)}" && '
        f'printf %s {shlex.quote(content)} > "$1{path}" && chmod {mode} "$1{path}"'
    )


NETWORK_UNIT = """\
[Match]
Name=en* eth*

[Network]
DHCP=yes

[DHCPv4]
ClientIdentifier=mac
"""

# Only an ed25519 host key: an RSA key takes some 20 s to generate under TCG.
SSH_HOST_KEYS_UNIT = """\
[Unit]
Description=Generate the SSH host key on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""

SSHD_CONFIG = "HostKey /etc/ssh/ssh_host_ed25519_key\n"

# MODULES=list: the initramfs holds what the lab's virtual hardware needs (about a
# quarter of MODULES=most's size; GRUB reads the initrd through the BIOS, which under
# TCG is slow enough to matter on every boot).
INITRAMFS_CONF = "MODULES=list\n"
INITRAMFS_MODULES = """\
virtio_pci
virtio_blk
virtio_scsi
virtio_net
sd_mod
ahci
ata_piix
ext4
crc32c_generic
vfat
nls_cp437
nls_ascii
"""

# dracut in a chroot must not look at the build host: a generic image, and for the
# lab's MODULES=list equivalent only the drivers its virtual hardware needs.
DRACUT_CONF = 'hostonly="no"\n'
DRACUT_LIST_CONF = (
    DRACUT_CONF
    + 'drivers=" '
    + " ".join(INITRAMFS_MODULES.split())
    + ' "\n'
    + 'filesystems=" ext4 vfat "\n'
)

GRUB_DEFAULTS = """\
# retrofit VM lab: boot messages and a login on the serial console.
GRUB_TIMEOUT=1
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
"""


def customize_hooks(spec: ImageSpec) -> tuple[str, ...]:
    """mmdebstrap --customize-hook snippets that make the tree a Vagrant-style box."""
    pubkey = PUBLIC_KEY_FILE.read_text().strip() + "\n"
    user = LAB_USER
    home = f"/home/{user}"
    hooks = [
        _write_hook("/etc/hostname", f"{spec.hostname}\n"),
        _write_hook(
            "/etc/hosts",
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{spec.hostname}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n",
        ),
        # DHCP on the first NIC, whatever it is called.
        _write_hook("/etc/systemd/network/80-retrofit-lab-dhcp.network", NETWORK_UNIT),
        'chroot "$1" systemctl enable systemd-networkd.service systemd-resolved.service',
        'ln -sf ../run/systemd/resolve/stub-resolv.conf "$1/etc/resolv.conf"',
        'chroot "$1" systemctl enable serial-getty@ttyS0.service',
        # The Vagrant conventions: user vagrant (password vagrant), passwordless sudo,
        # the insecure public key; root's password is vagrant for the serial console.
        f'chroot "$1" useradd --create-home --user-group --groups sudo --shell /bin/bash {user}',
        f'echo {user}:vagrant | chroot "$1" chpasswd',
        'echo root:vagrant | chroot "$1" chpasswd',
        _write_hook(f"/etc/sudoers.d/{user}", f"{user} ALL=(ALL) NOPASSWD: ALL\n", mode="0440"),
        _write_hook(f"{home}/.ssh/authorized_keys", pubkey, mode="0600"),
        f'chmod 0700 "$1{home}/.ssh" && chroot "$1" chown -R {user}:{user} {home}/.ssh',
        # Every VM made from the image gets its own host keys and machine id.
        'rm -f "$1"/etc/ssh/ssh_host_*',
        _write_hook("/etc/systemd/system/ssh-host-keys.service", SSH_HOST_KEYS_UNIT),
        _write_hook("/etc/ssh/sshd_config.d/50-retrofit-lab.conf", SSHD_CONFIG),
        'chroot "$1" systemctl enable ssh-host-keys.service',
        ': > "$1/etc/machine-id" && rm -f "$1/var/lib/dbus/machine-id"',
        # No background apt runs fighting the tests for the dpkg lock.
        'chroot "$1" systemctl disable apt-daily.timer apt-daily-upgrade.timer',
        # It only reaps LVM snapshots, and costs half a minute of CPU under TCG.
        'chroot "$1" systemctl disable e2scrub_reap.service',
        _write_hook("/etc/default/grub.d/50-retrofit-lab.cfg", GRUB_DEFAULTS),
    ]
    if spec.initramfs == "dracut":
        conf = DRACUT_LIST_CONF if spec.initramfs_modules != "most" else DRACUT_CONF
        hooks += [
            _write_hook("/etc/dracut.conf.d/50-retrofit-lab.conf", conf),
            'chroot "$1" dracut --force --regenerate-all',
        ]
    elif spec.initramfs_modules != "most":
        hooks += [
            _write_hook("/etc/initramfs-tools/conf.d/50-retrofit-lab.conf", INITRAMFS_CONF),
            _write_hook("/etc/initramfs-tools/modules", INITRAMFS_MODULES),
            'chroot "$1" update-initramfs -u -k all',
        ]
    if spec.firmware == "bios":
        hooks.append(
            'echo "grub-pc grub-pc/install_devices multiselect /dev/vda"'
            ' | chroot "$1" debconf-set-selections'
        )
    else:
        hooks.append(
            'echo "grub-efi-amd64 grub2/force_efi_extra_removable boolean true"'
            ' | chroot "$1" debconf-set-selections'
        )
    return tuple(hooks)


# --- the disk ------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    role: str  # "bios_grub", "esp", "boot" or "root"
    size: int  # bytes; 0 means the rest of the disk


def layout(spec: ImageSpec) -> list[Partition]:
    parts: list[Partition] = []
    if spec.firmware == "bios" and spec.partition_table == "gpt":
        parts.append(Partition("bios_grub", BIOS_GRUB_SIZE))
    if spec.firmware == "uefi":
        parts.append(Partition("esp", ESP_SIZE))
    if spec.separate_boot:
        parts.append(Partition("boot", BOOT_SIZE))
    parts.append(Partition("root", 0))
    return parts


def partition(raw: Path, spec: ImageSpec) -> list[Partition]:
    """Write the partition table to the raw file with pyparted (aligned to 1 MiB)."""
    import parted

    parts = layout(spec)
    device = parted.getDevice(str(raw))
    disk = parted.freshDisk(device, spec.partition_table)
    mib = MIB // device.sectorSize
    start = mib
    last = (device.length // mib) * mib - mib - 1  # leave the last MiB (GPT backup)
    fs_names = {"esp": "fat32", "boot": "ext4", "root": "ext4"}
    for part in parts:
        end = last if part.size == 0 else start + part.size // device.sectorSize - 1
        geometry = parted.Geometry(device=device, start=start, end=end)
        fs = (
            parted.FileSystem(type=fs_names[part.role], geometry=geometry)
            if part.role in fs_names
            else None
        )
        new = parted.Partition(disk=disk, type=parted.PARTITION_NORMAL, fs=fs, geometry=geometry)
        disk.addPartition(new, constraint=parted.Constraint(exactGeom=geometry))
        if part.role == "bios_grub":
            new.setFlag(parted.PARTITION_BIOS_GRUB)
        elif part.role == "esp":
            # On GPT, libparted's "boot" flag is the EFI System Partition type.
            new.setFlag(parted.PARTITION_BOOT)
        elif spec.partition_table == "msdos" and part.role == (
            "boot" if spec.separate_boot else "root"
        ):
            new.setFlag(parted.PARTITION_BOOT)
        start = end + 1
    disk.commitToDevice()
    return parts


@contextlib.contextmanager
def loop_device(raw: Path) -> Iterator[str]:
    """Attach ``raw`` with partitions; partition nodes come from ``partx -a`` (no udev)."""
    require_tool("losetup", "attach the disk image", "mount")
    dev = output(["losetup", "--find", "--show", "--partscan", str(raw)]).strip()
    try:
        if not os.path.exists(f"{dev}p1"):
            run(["partx", "-a", dev], ok=(0, 1))
        for _ in range(50):
            if os.path.exists(f"{dev}p1"):
                break
            time.sleep(0.1)
        else:
            raise RetrofitError(
                f"vm image: no partition devices appeared for {dev}",
                hint="loop partitions need 'losetup -P' or 'partx -a' to work on this host",
            )
        yield dev
    finally:
        run(["partx", "-d", dev], ok=(0, 1))
        run(["losetup", "-d", dev], ok=(0, 1))


def _mknod_like(src: str, dest: Path) -> None:
    st = os.stat(src)
    os.mknod(dest, stat.S_IMODE(st.st_mode) | stat.S_IFMT(st.st_mode), st.st_rdev)


@contextlib.contextmanager
def chroot_mounts(
    root: Path, loop: str, uuids: dict[str, str], nodes: dict[str, str]
) -> Iterator[None]:
    """/proc, /sys and a private /dev for the chroot, with /dev/disk/by-uuid links.

    The host has no udev, so without our own by-uuid links grub-mkconfig would write
    ``root=/dev/loopXpY``. A tmpfs /dev keeps the links off the host's devtmpfs.
    """
    mounted: list[Path] = []
    try:
        for fstype, where in (("proc", "proc"), ("sysfs", "sys"), ("tmpfs", "dev")):
            target = root / where
            target.mkdir(exist_ok=True)
            opts = ["-o", "mode=0755,size=4m"] if fstype == "tmpfs" else []
            run(["mount", "-t", fstype, *opts, fstype, str(target)])
            mounted.append(target)
        dev = root / "dev"
        for name in ("null", "zero", "full", "random", "urandom", "tty"):
            _mknod_like(f"/dev/{name}", dev / name)
        _mknod_like(loop, dev / os.path.basename(loop))
        (dev / "disk" / "by-uuid").mkdir(parents=True)
        for role, node in nodes.items():
            _mknod_like(node, dev / os.path.basename(node))
            (dev / "disk" / "by-uuid" / uuids[role]).symlink_to(f"../../{os.path.basename(node)}")
        (dev / "fd").symlink_to("/proc/self/fd")
        for i, name in enumerate(("stdin", "stdout", "stderr")):
            (dev / name).symlink_to(f"/proc/self/fd/{i}")
        yield
    finally:
        for target in reversed(mounted):
            run(["umount", "-l", str(target)], ok=(0, 32))


def _fstab(spec: ImageSpec, uuids: dict[str, str]) -> str:
    lines = [
        "# <file system> <mount point> <type> <options> <dump> <pass>",
        f"UUID={uuids['root']} / ext4 errors=remount-ro 0 1",
    ]
    if "boot" in uuids:
        lines.append(f"UUID={uuids['boot']} /boot ext4 defaults 0 2")
    if "esp" in uuids:
        lines.append(f"UUID={uuids['esp']} /boot/efi vfat umask=0077 0 1")
    return "\n".join(lines) + "\n"


EFI_MODULES = (
    "part_gpt part_msdos fat ext2 search search_fs_uuid normal configfile linux gzio "
    "echo test all_video efi_gop serial terminal"
).split()


def _install_grub(
    root: Path, spec: ImageSpec, loop: str, uuids: dict[str, str], nodes: dict[str, str]
) -> None:
    chroot = ["chroot", str(root)]
    if spec.firmware == "bios":
        run([*chroot, "grub-install", "--target=i386-pc", loop], stream=True)
    else:
        _install_grub_efi(root, spec, uuids, nodes)
    run([*chroot, "grub-mkconfig", "-o", "/boot/grub/grub.cfg"])
    root_uuid = uuids["root"]
    cfg = root / "boot" / "grub" / "grub.cfg"
    text = cfg.read_text()
    # Belt and braces: never ship a grub.cfg naming the build host's loop device.
    if "root=/dev/loop" in text:
        cfg.write_text(re.sub(r"root=/dev/loop\S*", f"root=UUID={root_uuid}", text))
    if f"root=UUID={root_uuid}" not in cfg.read_text():
        raise RetrofitError(
            f"vm image: grub.cfg does not boot root=UUID={root_uuid}",
            hint=f"inspect {cfg} in the kept build directory",
        )


def _install_grub_efi(
    root: Path, spec: ImageSpec, uuids: dict[str, str], nodes: dict[str, str]
) -> None:
    """GRUB on the ESP's removable path, without mounting it.

    The build host's kernel may have no vfat (this one has none), and grub-install
    refuses an --efi-directory that is not FAT. So: build the EFI image with
    grub-mkimage (it finds /boot by filesystem UUID), put the modules in
    /boot/grub/x86_64-efi as grub-install would, and write the ESP with mtools.
    """
    chroot = ["chroot", str(root)]
    boot_uuid = uuids.get("boot", uuids["root"])
    prefix = "/grub" if "boot" in uuids else "/boot/grub"
    staging = root / "tmp" / "retrofit-esp"
    (staging / "EFI" / "BOOT").mkdir(parents=True)
    (staging / "early.cfg").write_text(
        f"search.fs_uuid {boot_uuid} root\nset prefix=($root){prefix}\n"
    )
    run(["cp", "-a", str(root / "usr/lib/grub/x86_64-efi"), str(root / "boot/grub/")])
    run([
        *chroot, "grub-mkimage", "-O", "x86_64-efi",
        "-o", "/tmp/retrofit-esp/EFI/BOOT/BOOTX64.EFI",
        "-c", "/tmp/retrofit-esp/early.cfg", "-p", prefix, *EFI_MODULES,
    ])  # fmt: skip
    esp = f"/dev/{os.path.basename(nodes['esp'])}"
    env = {"MTOOLS_SKIP_CHECK": "1"}
    run([*chroot, "mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"], env=env)
    run([*chroot, "mcopy", "-i", esp, "/tmp/retrofit-esp/EFI/BOOT/BOOTX64.EFI", "::/EFI/BOOT/"],
        env=env)  # fmt: skip
    shutil.rmtree(staging)


def _populate(raw: Path, spec: ImageSpec, tree: Path, mnt: Path) -> None:
    parts = partition(raw, spec)
    uuids = {p.role: spec.uuid(p.role) for p in parts if p.role != "bios_grub"}
    if "esp" in uuids:
        # A FAT volume id is 32 bits: take it from the derived UUID.
        uuids["esp"] = uuids["esp"].replace("-", "")[:8].upper()
        uuids["esp"] = f"{uuids['esp'][:4]}-{uuids['esp'][4:]}"
    with loop_device(raw) as loop:
        nodes = {p.role: f"{loop}p{i}" for i, p in enumerate(parts, 1) if p.role != "bios_grub"}
        for role, node in nodes.items():
            if role == "esp":
                run(
                    [
                        "mkfs.vfat",
                        "-F",
                        "32",
                        "-n",
                        "ESP",
                        "-i",
                        uuids["esp"].replace("-", ""),
                        node,
                    ]
                )
            else:
                run(["mkfs.ext4", "-q", "-F", "-L", role, "-U", uuids[role], node])
        mounts: list[Path] = []
        try:
            run(["mount", nodes["root"], str(mnt)])
            mounts.append(mnt)
            if "boot" in nodes:
                (mnt / "boot").mkdir()
                run(["mount", nodes["boot"], str(mnt / "boot")])
                mounts.append(mnt / "boot")
            started = time.monotonic()
            run(["cp", "-a", f"{tree}/.", str(mnt)])
            log.info("vm image: copied the tree in %.0fs", time.monotonic() - started)
            (mnt / ".retrofit-tree-complete").unlink(missing_ok=True)
            (mnt / "etc" / "fstab").write_text(_fstab(spec, uuids))
            if "esp" in nodes:
                (mnt / "boot" / "efi").mkdir(parents=True, exist_ok=True)  # the mount point
            with chroot_mounts(mnt, loop, uuids, nodes):
                _install_grub(mnt, spec, loop, uuids, nodes)
        finally:
            for target in reversed(mounts):
                run(["umount", str(target)], ok=(0, 32))


def image_path(spec: ImageSpec, cache_dir: Path = VM_CACHE_DIR) -> Path:
    return cache_dir / f"{spec.name}-{spec.key()}.qcow2"


def build_image(spec: ImageSpec | None = None, cache_dir: Path = VM_CACHE_DIR) -> Path:
    """Return the cached qcow2 image for ``spec``, building it first if needed."""
    spec = spec or ImageSpec()
    dest = image_path(spec, cache_dir)
    if dest.exists():
        return dest
    for tool, package in (
        ("qemu-img", "qemu-utils"),
        ("mkfs.ext4", "e2fsprogs"),
        ("partx", "util-linux"),
    ):
        require_tool(tool, "build the VM image", package)
    if spec.firmware == "uefi":
        require_tool("mkfs.vfat", "build the UEFI VM image", "dosfstools")
    if os.geteuid() != 0:
        raise RetrofitError(
            "vm image: building the image needs root (loop devices, mounts, chroot)",
            hint="run as root, or use an image already in " + str(cache_dir),
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.exists():
            return dest
        started = time.monotonic()
        tree = cached_tree(spec.tree())
        log.info("vm image: building %s from %s", dest.name, tree)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=cache_dir))
        try:
            raw = work / "disk.raw"
            with open(raw, "wb") as f:
                f.truncate(spec.size_gib * 1024 * MIB)
            mnt = work / "mnt"
            mnt.mkdir()
            _populate(raw, spec, tree, mnt)
            tmp = work / "disk.qcow2"
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp)])
            (work / "spec.json").write_text(json.dumps(asdict(spec), indent=2, default=list))
            os.rename(work / "spec.json", dest.with_suffix(".json"))
            os.rename(tmp, dest)
        finally:
            _remove_work(work)
        log.info("vm image: built %s in %.0fs", dest, time.monotonic() - started)
        _prune_stale(spec, cache_dir)
    return dest


def _prune_stale(spec: ImageSpec, cache_dir: Path) -> None:
    """Remove older builds of the same kind of image (their inputs changed)."""
    key = spec.key()
    for old in cache_dir.glob(f"{spec.name}-*"):
        stem = old.name[len(spec.name) + 1 :].split(".", 1)[0]
        if len(stem) == len(key) and stem != key and old.suffix in (".qcow2", ".json", ".box"):
            log.info("vm image: removing stale %s", old.name)
            old.unlink(missing_ok=True)


def _remove_work(work: Path) -> None:
    mnt = work / "mnt"
    if mnt.exists() and os.path.ismount(mnt):
        run(["umount", "-R", "-l", str(mnt)], ok=(0, 32))
    for line in output(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"]
    ).splitlines():
        name, _, backing = line.strip().partition(" ")
        if backing.strip().startswith(str(work)):
            run(["losetup", "-d", name], ok=(0, 1))
    shutil.rmtree(work, ignore_errors=True)


def virtual_size(image: Path) -> int:
    info = json.loads(output(["qemu-img", "info", "--output=json", str(image)]))
    return int(info["virtual-size"])


BOX_VAGRANTFILE = """\
# Defaults shipped inside the retrofit box (the project's Vagrantfile overrides).
Vagrant.configure("2") do |config|
  config.ssh.username = "vagrant"
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "qemu"
    libvirt.disk_bus = "virtio"
    libvirt.nic_model_type = "virtio"
    libvirt.memory = 2048
    libvirt.cpus = 2
  end
end
"""


def box_path(spec: ImageSpec, cache_dir: Path = VM_CACHE_DIR) -> Path:
    return cache_dir / f"{spec.name}-{spec.key()}.box"


def build_box(spec: ImageSpec | None = None, cache_dir: Path = VM_CACHE_DIR) -> Path:
    """The image as a vagrant-libvirt box (box.img + metadata.json + Vagrantfile, tar).

    Also points ``retrofit-<name>.box`` in the cache at it, the stable path the
    project's Vagrantfile uses.
    """
    spec = spec or ImageSpec()
    if spec.firmware != "bios":
        log.warning("vm box: the box's Vagrantfile does not set UEFI loader options")
    image = build_image(spec, cache_dir)
    dest = box_path(spec, cache_dir)
    with open(cache_dir / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not dest.exists():
            work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=cache_dir))
            try:
                os.link(image, work / "box.img")
                size_gib = -(-virtual_size(image) // (1024 * MIB))
                metadata = {"provider": "libvirt", "format": "qcow2", "virtual_size": size_gib}
                (work / "metadata.json").write_text(json.dumps(metadata) + "\n")
                (work / "Vagrantfile").write_text(BOX_VAGRANTFILE)
                tmp = work / "out.box"
                run(
                    [
                        "tar",
                        "-C",
                        str(work),
                        "-cf",
                        str(tmp),
                        "metadata.json",
                        "Vagrantfile",
                        "box.img",
                    ]
                )
                os.rename(tmp, dest)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            log.info("vm box: built %s", dest)
        link = cache_dir / f"retrofit-{spec.name}.box"
        tmp_link = cache_dir / f".{link.name}.tmp"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(dest.name)
        os.rename(tmp_link, link)
    return dest
