"""GRUB menu of a converted live host (BIOS or EFI with GRUB's own grub-mkconfig).

ostree-boot's ``/etc/grub.d/15_ostree`` (``ostree admin instutil grub2-generate``)
writes one ``menuentry`` per deployment, newest first, each with the id
``ostree-<index>-<uuid>`` (an argument, not a GRUB id); Debian's ``10_linux`` still writes the
old system's entries, and it runs first. Two things make the deployment the default
and keep the menu current:

* a ``/etc/default/grub.d/retrofit-ostree.cfg`` drop-in (sourced by grub-mkconfig)
  sets ``GRUB_DEFAULT`` to the title of the newest deployment's entry, read from its
  BLS file (``title ... (ostree:0)``). The entry's ``'ostree-0-<uuid>'`` is a
  positional argument of ``menuentry``, not an ``--id``, so GRUB cannot select it by
  that. With no deployment the drop-in leaves GRUB_DEFAULT alone (the old system). The
  drop-in goes into the host's ``/etc`` (the old system) and into each deployment's
  ``/etc`` (which was copied before this phase), so every later grub-mkconfig —
  Debian's ``update-grub`` in the old system, or libostree's own in a deployment —
  keeps it.
* ``/boot/grub/grub.cfg`` becomes a symlink to ``../loader/grub.cfg`` (the layout
  libostree expects on BIOS GRUB hosts): on every ``ostree admin deploy`` libostree
  runs ``grub-mkconfig`` into the new ``/boot/loader.N/grub.cfg`` and swaps the
  ``/boot/loader`` symlink, so the menu follows each new deployment and rollback
  atomically. The original file is kept as ``grub.cfg.retrofit-orig`` for revert.
"""

from __future__ import annotations

import os
from pathlib import Path

from retrofit.log import log
from retrofit.run import run

DROPIN = "etc/default/grub.d/retrofit-ostree.cfg"
GRUBD_OSTREE = "etc/grub.d/15_ostree"
OSTREE_GENERATOR = "/usr/libexec/libostree/grub2-15_ostree"

# libostree 2022.7's grub2-generate writes kernel/initrd paths relative to the /boot
# filesystem (/ostree/<os>-<csum>/vmlinuz...) and has no "bootprefix" option: when
# /boot is on the root filesystem GRUB cannot find them. This wrapper replaces the
# /etc/grub.d/15_ostree symlink and adds the /boot prefix in that case.
GRUBD_WRAPPER = """#!/bin/sh
# retrofit: ostree-boot's 15_ostree with kernel/initrd paths prefixed by /boot when
# /boot is on the root filesystem (libostree 2022.7 writes them relative to /boot).
set -e
[ -x @GEN@ ] || exit 0
out=$(@GEN@)
prefix=
if [ "${GRUB_DEVICE_BOOT}" = "${GRUB_DEVICE}" ]; then
    prefix=/boot
fi
c='linux|linuxefi|linux16|initrd|initrdefi|initrd16|devicetree'
printf '%s\\n' "$out" | sed -E "/^[[:space:]]*(${c})[[:space:]]/ s# /ostree/# ${prefix}/ostree/#g"
""".replace("@GEN@", OSTREE_GENERATOR)
GRUB_CFG = "boot/grub/grub.cfg"
LOADER_CFG = "boot/loader/grub.cfg"
ORIG_SUFFIX = ".retrofit-orig"

DROPIN_TEXT = """\
# retrofit: which entry GRUB boots by default. ostree-boot's 15_ostree titles each
# menu entry with its BLS entry's title, "... (ostree:N)", N = 0 for the newest
# deployment (libostree sets _OSTREE_GRUB2_BOOTVERSION while it writes a new loader.N).
# - until the converted system has once proven healthy (/ostree/retrofit/boot-confirmed)
#   the old system (10_linux, first) stays the default;
# - while a new deployment waits for its trial boot (/ostree/retrofit/trial-pending
#   says "deploy"), the previous one, (ostree:1), stays the default; the trial itself
#   boots once through GRUB's next_entry (see grub/trial.py);
# - otherwise the newest deployment, (ostree:0).
if [ -d /ostree/repo ]; then
    retrofit_index=
    if [ -e /ostree/retrofit/boot-confirmed ]; then
        retrofit_index=0
        if [ "$(cat /ostree/retrofit/trial-pending 2>/dev/null)" = deploy ]; then
            retrofit_index=1
        fi
    fi
    retrofit_entries=/boot/loader/entries
    if [ -n "${_OSTREE_GRUB2_BOOTVERSION}" ]; then
        retrofit_entries=/boot/loader.${_OSTREE_GRUB2_BOOTVERSION}/entries
    fi
    retrofit_title=
    if [ -n "${retrofit_index}" ]; then
        retrofit_title=$(sed -n 's/^title[[:space:]]\\{1,\\}//p' \\
            "${retrofit_entries}"/ostree-*.conf 2>/dev/null \\
            | grep -m1 "(ostree:${retrofit_index}[):]" || true)
    fi
    if [ -n "${retrofit_title}" ]; then
        GRUB_DEFAULT="${retrofit_title}"
    fi
    # the pre-conversion system's entries (10_linux), kept until
    # `retrofit cleanup --old-system`, say what they are
    if [ -n "${grub_mkconfig_dir:-}" ]; then
        GRUB_DISTRIBUTOR="previous system (before retrofit): ${GRUB_DISTRIBUTOR:-Debian}"
    fi
    unset retrofit_entries retrofit_title retrofit_index
fi
"""


def write_dropin(etc_roots: list[Path]) -> None:
    """Write the GRUB_DEFAULT drop-in under each root (``/`` and each deployment)."""
    for root in etc_roots:
        p = root / DROPIN
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(DROPIN_TEXT)
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)


def remove_dropin(etc_roots: list[Path]) -> None:
    for root in etc_roots:
        p = root / DROPIN
        if p.exists() or p.is_symlink():
            p.unlink()
        w = root / GRUBD_OSTREE
        if w.is_file() and not w.is_symlink() and "retrofit:" in w.read_text(errors="replace"):
            w.unlink()
            os.symlink(OSTREE_GENERATOR, w)


def write_grubd_wrapper(etc_roots: list[Path]) -> None:
    """Replace ``/etc/grub.d/15_ostree`` (a symlink) by :data:`GRUBD_WRAPPER`."""
    for root in etc_roots:
        p = root / GRUBD_OSTREE
        if not p.parent.is_dir():
            continue
        tmp = p.with_name(p.name + ".retrofit-tmp")
        tmp.write_text(GRUBD_WRAPPER)
        os.chmod(tmp, 0o755)
        os.replace(tmp, p)


def mkconfig(root: Path) -> None:
    """Regenerate the menu of the running system (``root`` must be ``/``)."""
    cfg = root / GRUB_CFG
    loader = root / "boot/loader"
    if loader.is_dir() and not cfg.is_symlink():
        # libostree's layout: /boot/grub/grub.cfg -> ../loader/grub.cfg
        run(["grub-mkconfig", "-o", str(root / LOADER_CFG)], stream=True)
        orig = cfg.with_name(cfg.name + ORIG_SUFFIX)
        if cfg.exists() and not orig.exists():
            os.link(cfg, orig)
        tmp = cfg.with_name(cfg.name + ".retrofit-tmp")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink("../loader/grub.cfg", tmp)
        os.replace(tmp, cfg)
        log.info("bootloader: %s -> ../loader/grub.cfg (libostree's layout)", cfg)
    else:
        # writes through the symlink when it is already in place
        run(["grub-mkconfig", "-o", str(cfg)], stream=True)


def refresh(root: Path) -> None:
    """Regenerate the current menu in place (``/boot/loader/grub.cfg`` through the
    symlink's target, so the symlink itself stays), e.g. after a trial boot settled."""
    from grub.trial import writable_boot

    cfg = root / GRUB_CFG
    target = Path(os.path.realpath(cfg)) if cfg.is_symlink() else cfg
    with writable_boot(root):
        run(["grub-mkconfig", "-o", str(target)], stream=True)


def restore(root: Path) -> None:
    """Undo :func:`mkconfig`'s symlink: put the original grub.cfg back."""
    cfg = root / GRUB_CFG
    orig = cfg.with_name(cfg.name + ORIG_SUFFIX)
    if cfg.is_symlink() and orig.exists():
        os.replace(orig, cfg)
    elif orig.exists():
        orig.unlink()


def default_entry(root: Path) -> str | None:
    """The ``set default=`` value of the current menu (for status and tests)."""
    cfg = root / GRUB_CFG
    try:
        text = cfg.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("set default="):
            return s.split("=", 1)[1].strip('"')
    return None
