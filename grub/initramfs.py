"""Initramfs that can boot ``ostree=``: dracut (ostree-boot's ``98ostree`` module)
and initramfs-tools, for which no hook exists anywhere else — this is it.

The initramfs-tools part is a hook that copies ``ostree-prepare-root`` into the image
and a ``local-bottom`` script that runs it on the mounted root (``${rootmnt}``) when
the kernel command line has ``ostree=``: the deployment becomes the root, the physical
root moves to ``/sysroot``, ``/boot`` is bind-mounted when it lives on the root
filesystem; systemd's ``ostree-system-generator`` mounts ``/var`` after switch_root.
Without ``ostree=`` the script does nothing, so the same initramfs still boots the
old system.

The host's generator is kept: initramfs-tools hosts get the hook, dracut hosts the
dracut module. The initramfs inside each commit is built by running the tree's own
generator in a sandbox on the tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from retrofit.errors import RetrofitError
from retrofit.log import log
from retrofit.sandbox import run_in

HOOK_NAME = "retrofit-ostree"
HOOK_PATH = f"usr/share/initramfs-tools/hooks/{HOOK_NAME}"
SCRIPT_PATH = f"usr/share/initramfs-tools/scripts/local-bottom/{HOOK_NAME}"
PREPARE_ROOT = "/usr/lib/ostree/ostree-prepare-root"

HOOK = """#!/bin/sh
# retrofit: put ostree-prepare-root into the initramfs (initramfs-tools hook)
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
if [ -x /usr/lib/ostree/ostree-prepare-root ]; then
    copy_exec /usr/lib/ostree/ostree-prepare-root
fi
"""

SCRIPT = """#!/bin/sh
# retrofit: with ostree= on the kernel command line, make the OSTree deployment the
# root (initramfs-tools local-bottom script; the root is mounted at ${rootmnt}).
# Shell built-ins only: an initramfs built without busybox has no grep.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /scripts/functions
read -r cmdline < /proc/cmdline
case " $cmdline " in
*" ostree="*) ;;
*) exit 0 ;;
esac
[ -x /usr/lib/ostree/ostree-prepare-root ] || \
    panic "retrofit: ostree= given but the initramfs has no ostree-prepare-root"
log_begin_msg "retrofit: preparing the OSTree deployment as the root"
/usr/lib/ostree/ostree-prepare-root "${rootmnt}" || \
    panic "retrofit: ostree-prepare-root ${rootmnt} failed"
log_end_msg
"""


def generator(root: Path) -> str | None:
    """Which initramfs generator the tree uses."""
    if (root / "usr/sbin/mkinitramfs").exists():
        return "initramfs-tools"
    if (root / "usr/bin/dracut").exists():
        return "dracut"
    return None


# What each deployment's initramfs was built from: written beside it in the commit,
# so a later layer or ``retrofit initramfs`` sees when it must be rebuilt.
STAMP = "retrofit-initramfs.json"
# The parts of /etc an initramfs is made from, per generator (besides modprobe.d).
ETC_INPUTS = {
    "initramfs-tools": ("etc/initramfs-tools", "etc/modprobe.d"),
    "dracut": ("etc/dracut.conf", "etc/dracut.conf.d", "etc/modprobe.d"),
}
# ... and the parts of /usr: the generator with its hooks and modules (a layered
# package that ships a hook, such as lvm2 or cryptsetup-initramfs, changes them).
USR_INPUTS = {
    "initramfs-tools": ("usr/sbin/mkinitramfs", "usr/share/initramfs-tools"),
    "dracut": ("usr/bin/dracut", "usr/lib/dracut"),
}


def _hash_paths(h: Any, base: Path, rels: tuple[str, ...], prefix: str = "") -> None:
    """Names, modes and contents (symlink targets) of everything under ``rels``."""
    for rel in rels:
        top = base / rel
        if top.is_symlink() or top.is_file():
            paths = [top]
        elif top.is_dir():
            paths = sorted(Path(d) / f for d, _dirs, files in os.walk(top) for f in files)
        else:
            h.update(f"{prefix}{rel}:absent\n".encode())
            continue
        for path in paths:
            if path.name == HOOK_NAME:
                continue  # retrofit's own hook: HOOK and SCRIPT stand for it
            name = prefix + str(path.relative_to(base))
            if path.is_symlink():
                h.update(f"{name}->{os.readlink(path)}\n".encode())
            elif path.is_file():
                h.update(f"{name}:{path.stat().st_mode & 0o7777:o}:".encode())
                with open(path, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())


def inputs(root: Path, kver: str, gen: str, etc: Path | None = None) -> dict[str, str]:
    """Digests of what an initramfs for ``kver`` is built from: ``usr`` (the kernel's
    modules list, ostree-prepare-root, the generator and its hooks, retrofit's hook)
    and ``etc`` (the generator's configuration in ``etc``, default the tree's)."""
    etc = etc if etc is not None else root / "etc"
    usr = hashlib.sha256()
    usr.update(HOOK.encode() + SCRIPT.encode() + gen.encode() + kver.encode())
    mod = f"usr/lib/modules/{kver}"
    _hash_paths(usr, root, (f"{mod}/modules.dep", PREPARE_ROOT.lstrip("/"), *USR_INPUTS[gen]))
    return {"generator": gen, "usr": usr.hexdigest()[:24], "etc": etc_digest(etc, gen)}


def etc_digest(etc: Path, gen: str) -> str:
    """Digest of the generator's configuration under ``etc``."""
    conf = hashlib.sha256()
    _hash_paths(conf, etc, tuple(r[4:] for r in ETC_INPUTS[gen]), prefix="etc/")
    return conf.hexdigest()[:24]


def stale_etc(stamp: bytes | None, etc: Path) -> str | None:
    """Why an initramfs recorded by ``stamp`` is out of date for the configuration
    in ``etc`` (None: it is not, or it has no record: only a forced rebuild then)."""
    try:
        was = json.loads(stamp or b"")
        gen = was["generator"]
        if gen not in ETC_INPUTS:
            return None
    except (ValueError, KeyError, TypeError):
        return None
    if was.get("etc") != etc_digest(etc, gen):
        return "its configuration in /etc changed"
    return None


def stamp_data(root: Path, kver: str, gen: str, etc: Path | None = None) -> bytes:
    return (json.dumps(inputs(root, kver, gen, etc), sort_keys=True) + "\n").encode()


def stale(stamp: bytes | None, now: dict[str, str]) -> str | None:
    """Why an initramfs with ``stamp`` must be rebuilt for inputs ``now`` (None: it
    need not)."""
    if stamp is None:
        return "it has no record of what it was built from"
    try:
        was = json.loads(stamp)
    except ValueError:
        return "its record is unreadable"
    if not isinstance(was, dict):
        return "its record is unreadable"
    if was.get("generator") != now["generator"]:
        return f"the generator changed ({was.get('generator')} -> {now['generator']})"
    if was.get("usr") != now["usr"]:
        return "the kernel modules, the generator or its hooks changed"
    if was.get("etc") != now["etc"]:
        return "its configuration in /etc changed"
    return None


def cache_key(root: Path, kver: str, gen: str, etc: Path | None = None) -> str:
    d = inputs(root, kver, gen, etc)
    return hashlib.sha256(f"{d['usr']}:{d['etc']}".encode()).hexdigest()[:24]


def kernels(tree: Path) -> list[str]:
    """Kernel versions with a ``vmlinuz`` in the tree's ``/usr/lib/modules``."""
    mods = tree / "usr/lib/modules"
    if not mods.is_dir():
        return []
    return sorted(d.name for d in mods.iterdir() if (d / "vmlinuz").is_file())


def refresh(tree: Path, etc: Path, work: Path, verb: str, force: bool = False) -> list[str]:
    """Rebuild the initramfs of each kernel in a composed ``tree`` (a hardlinked
    checkout: files are replaced, never written in place) whose inputs changed, with
    the configuration in ``etc`` (the running /etc); returns what was rebuilt, with
    the reason."""
    gen = generator(tree)
    done: list[str] = []
    if gen is None:
        return done
    for kver in kernels(tree):
        mod = tree / "usr/lib/modules" / kver
        stamp = mod / STAMP
        now = inputs(tree, kver, gen, etc)
        why = "asked to" if force else stale(stamp.read_bytes() if stamp.is_file() else None, now)
        if why is None and (mod / "initramfs.img").is_file():
            continue
        why = why or "it is missing"
        log.info("%s: rebuilding the initramfs for %s: %s", verb, kver, why)
        out = work / f"initramfs-{kver}.img"
        build(tree, kver, out, work / "initramfs-work", etc=etc)
        out.chmod(0o644)
        for name, src in (("initramfs.img", out), (STAMP, None)):
            dest = mod / name
            if dest.exists() or dest.is_symlink():
                dest.unlink()  # a hardlink into the repository: replace, never write
            if src is not None:
                os.rename(src, dest)
            else:
                dest.write_bytes(stamp_data(tree, kver, gen, etc))
        done.append(f"{kver} ({why})")
    return done


def build(root: Path, kver: str, out: Path, work: Path, etc: Path | None = None) -> str:
    """Build an initramfs for ``kver`` from the tree at ``root`` into ``out``, with
    OSTree support, using the tree's own generator inside a read-only sandbox; ``etc``
    (default the tree's) is the configuration it reads as /etc."""
    gen = generator(root)
    if gen is None:
        raise RetrofitError(
            "initramfs: the tree has neither initramfs-tools nor dracut",
            hint="apt-get install initramfs-tools",
        )
    if not (root / PREPARE_ROOT.lstrip("/")).exists():
        raise RetrofitError(
            f"initramfs: {PREPARE_ROOT} is missing from the tree",
            hint="the ostree-boot package provides it",
        )
    cache_dir = os.environ.get("RETROFIT_INITRAMFS_CACHE")
    key = cache_key(root, kver, gen, etc)
    if cache_dir and (Path(cache_dir) / key).is_file():
        shutil.copyfile(Path(cache_dir) / key, out)
        log.info("initramfs: %s for %s from the cache", gen, kver)
        return gen
    if work.exists():
        shutil.rmtree(work)
    (work / "out").mkdir(parents=True)
    # reproducible: the same inputs give the same image (both generators honour it)
    env = {"TMPDIR": "/tmp", "SOURCE_DATE_EPOCH": "0"}
    ro_binds: list[tuple[str, str]] = []
    if etc is not None and etc != root / "etc":
        ro_binds.append((str(etc), "/etc"))  # a composed tree keeps usr/etc
    # initramfs-tools checks the compressor against /boot/config-KVER; a composed
    # tree keeps the kernel's configuration beside it in /usr/lib/modules/KVER
    kconfig = root / f"usr/lib/modules/{kver}/config"
    if not (root / f"boot/config-{kver}").is_file() and kconfig.is_file():
        (work / "boot").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kconfig, work / f"boot/config-{kver}")
        ro_binds.append((str(work / "boot"), "/boot"))
    # mount points the tree lacks are made for the run and removed after it
    made = [root / dest.lstrip("/") for _src, dest in ro_binds]
    made = [m for m in made if not m.exists() and not m.is_symlink()]
    for m in made:
        m.mkdir()
    if gen == "initramfs-tools":
        conf = work / "conf"
        shutil.copytree((etc or root / "etc") / "initramfs-tools", conf, symlinks=True)
        (conf / "hooks").mkdir(exist_ok=True)
        (conf / "scripts/local-bottom").mkdir(parents=True, exist_ok=True)
        for path, text in (
            (conf / "hooks" / HOOK_NAME, HOOK),
            (conf / "scripts/local-bottom" / HOOK_NAME, SCRIPT),
        ):
            path.write_text(text)
            path.chmod(0o755)
        argv = ["mkinitramfs", "-d", "/tmp/conf", "-o", "/tmp/out/initramfs.img", kver]
        binds = [(str(conf), "/tmp/conf"), (str(work / "out"), "/tmp/out")]
    else:
        argv = [
            "dracut",
            "--force",
            "--add",
            "ostree",
            "--no-hostonly",
            "/tmp/out/initramfs.img",
            kver,
        ]
        binds = [(str(work / "out"), "/tmp/out")]
    log.info("initramfs: building with %s for %s (ostree= support)", gen, kver)
    try:
        run_in(root, argv, root_readonly=True, ro_binds=ro_binds, binds=binds, env=env)
    finally:
        for m in made:
            m.rmdir()
    shutil.move(str(work / "out/initramfs.img"), out)
    shutil.rmtree(work)
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, Path(cache_dir) / key)
    return gen
