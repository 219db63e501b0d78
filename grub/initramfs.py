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
import os
import shutil
from pathlib import Path

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


def cache_key(root: Path, kver: str, gen: str) -> str:
    h = hashlib.sha256()
    h.update(HOOK.encode() + SCRIPT.encode() + gen.encode() + kver.encode())
    for rel in (f"boot/vmlinuz-{kver}", PREPARE_ROOT.lstrip("/")):
        p = root / rel
        if p.exists():
            st = p.stat()
            h.update(f"{rel}:{st.st_size}:{int(st.st_mtime)}".encode())
    conf = root / ("etc/initramfs-tools" if gen == "initramfs-tools" else "etc/dracut.conf.d")
    for dirpath, _dirs, files in sorted(os.walk(conf)):
        for f in sorted(files):
            p = Path(dirpath) / f
            if p.is_file():
                h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()[:24]


def build(root: Path, kver: str, out: Path, work: Path) -> str:
    """Build an initramfs for ``kver`` from the tree at ``root`` into ``out``, with
    OSTree support, using the tree's own generator inside a read-only sandbox."""
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
    key = cache_key(root, kver, gen)
    if cache_dir and (Path(cache_dir) / key).is_file():
        shutil.copyfile(Path(cache_dir) / key, out)
        log.info("initramfs: %s for %s from the cache", gen, kver)
        return gen
    if work.exists():
        shutil.rmtree(work)
    (work / "out").mkdir(parents=True)
    # reproducible: the same tree gives the same image (initramfs-tools honours it)
    epoch = (
        int((root / f"boot/vmlinuz-{kver}").stat().st_mtime)
        if (root / f"boot/vmlinuz-{kver}").exists()
        else 0
    )
    env = {"TMPDIR": "/tmp", "SOURCE_DATE_EPOCH": str(epoch)}
    if gen == "initramfs-tools":
        conf = work / "conf"
        shutil.copytree(root / "etc/initramfs-tools", conf, symlinks=True)
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
    run_in(root, argv, root_readonly=True, binds=binds, env=env)
    shutil.move(str(work / "out/initramfs.img"), out)
    shutil.rmtree(work)
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, Path(cache_dir) / key)
    return gen
