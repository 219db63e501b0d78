"""dpkg and apt-get inside bubblewrap, on a protected checkout.

The sandbox's ``/`` is the checkout seen through rofiles-fuse (so no repository
object is written in place), ``/etc`` its ``usr/etc``, ``/var`` a scratch directory
whose package state links into ``/usr`` as on the real system. No network; fresh
``/tmp``, ``/run``, ``/dev``, ``/proc``; private PID namespace, so nothing a script
starts outlives it; a ``policy-rc.d`` that denies every service start; initramfs
updates off (the kernel is the base's business).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from convert import content
from dpkg_layer import bwrap, varstate
from retrofit import dpkgdb
from retrofit.errors import CommandError, RetrofitError
from retrofit.log import log
from retrofit.run import run
from retrofit.sandbox import POLICY_RC_D

DATABASE = "usr/share/dpkg/database"
DEBS_IN_SANDBOX = "/run/retrofit/debs"
NO_INITRAMFS = b"# retrofit: no initramfs updates while packages install\nupdate_initramfs=no\n"
# unsafe-io: the checkout is scratch; durability comes from the commit, which fsyncs.
DPKG_OPTS = ("--force-confdef", "--force-confold", "--force-unsafe-io")
# Held while a base is upgraded here: a new kernel needs an initramfs and boot
# entries (the boot chain's work), so kernels change with centrally composed bases.
KERNEL_PREFIX = "linux-image"
ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
    "DEBIAN_PRIORITY": "critical",
}


@dataclass
class Sandbox:
    tree: Path  # the hardlinked checkout
    mnt: Path  # the same, through rofiles-fuse
    var: Path  # scratch /var
    work: Path
    created: list[Path] = field(default_factory=list)  # mount points made in the tree

    @classmethod
    def prepare(cls, tree: Path, mnt: Path, work: Path) -> Sandbox:
        """Before mounting: mount points the sandbox needs that the commit lacks."""
        sb = cls(tree=tree, mnt=mnt, var=work / "var", work=work)
        varstate.prepare(sb.var)
        for rel, is_dir in (("etc", True), ("usr/sbin/policy-rc.d", False)):
            p = tree / rel
            if not p.exists() and not p.is_symlink():
                if is_dir:
                    p.mkdir()
                else:
                    p.write_bytes(b"")
                sb.created.append(p)
        (work / "policy-rc.d").write_bytes(POLICY_RC_D)
        os.chmod(work / "policy-rc.d", 0o755)
        (work / "update-initramfs.conf").write_bytes(NO_INITRAMFS)
        return sb

    def remove_mountpoints(self) -> None:
        """After unmounting: the tree as the commit should have it."""
        for p in reversed(self.created):
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            elif p.exists() or p.is_symlink():
                p.unlink()

    def mounts(self, debs: Sequence[Path] = ()) -> list[tuple[str, str, str]]:
        m = [
            ("bind", str(self.mnt / "usr/etc"), "/etc"),
            ("bind", str(self.var), "/var"),
            ("ro-bind", str(self.work / "policy-rc.d"), "/usr/sbin/policy-rc.d"),
        ]
        if (self.tree / "usr/etc/initramfs-tools/update-initramfs.conf").is_file():
            m.append(
                (
                    "ro-bind",
                    str(self.work / "update-initramfs.conf"),
                    "/etc/initramfs-tools/update-initramfs.conf",
                )
            )
        for deb in debs:
            m.append(("ro-bind", str(deb), f"{DEBS_IN_SANDBOX}/{deb.name}"))
        return m

    def run(
        self,
        script: str,
        *,
        debs: Sequence[Path] = (),
        extra: Sequence[tuple[str, str, str]] = (),
        what: str,
        verb: str,
        ok: Sequence[int] = (0,),
    ) -> str:
        argv = bwrap.argv(
            self.mnt,
            ["/bin/sh", "-c", script],
            mounts=[*self.mounts(debs), *extra],
            setenv=ENV,
        )
        try:
            return run(argv, env=ENV, ok=ok).stderr
        except CommandError as exc:
            log.debug("%s", exc.stderr)
            detail = dpkg_failure(exc.stderr) or exc.message.split(": ", 1)[-1]
            raise RetrofitError(
                f"{verb}: {what} failed in the sandbox: {detail}",
                hint="nothing was deployed and the system is unchanged; "
                "rerun with --debug for the full output",
            ) from None

    def snapshot_var(self, verb: str) -> varstate.Snapshot:
        """Populate the scratch /var from the tree's tmpfiles.d (as boot does)."""
        if (self.tree / "usr/bin/systemd-tmpfiles").exists():
            self.run(
                "systemd-tmpfiles --create --prefix=/var >/dev/null 2>&1; exit 0",
                what="systemd-tmpfiles",
                verb=verb,
            )
        return varstate.snapshot(self.var)


_DPKG_ERROR = re.compile(r"^dpkg: error processing (?:package|archive) (\S+) \(--(\S+)\):$")


def dpkg_failure(stderr: str) -> str | None:
    """'PKG: <what dpkg says>' for the first package dpkg could not process, with
    the last line the package's own script printed before it."""
    lines = [ln.rstrip() for ln in stderr.splitlines()]
    for i, line in enumerate(lines):
        m = _DPKG_ERROR.match(line)
        if not m:
            continue
        reason = lines[i + 1].strip() if i + 1 < len(lines) else ""
        said = next(
            (
                ln.strip()
                for ln in reversed(lines[:i])
                if ln.strip()
                and not ln.startswith(("Setting up ", "Processing triggers", "dpkg:", "(Reading"))
            ),
            "",
        )
        out = f"{m.group(1)}: {reason}" if reason else m.group(1)
        return f"{out} (it said: {said})" if said else out
    return None


def dpkg_script(purge: Sequence[str], batches: Sequence[Sequence[Path]]) -> str:
    opts = " ".join(DPKG_OPTS)
    lines = ["set -e", "exec 1>&2"]
    if purge:
        lines.append(f"dpkg {opts} --purge {shlex.join(purge)}")
    for batch in batches:
        paths = [f"{DEBS_IN_SANDBOX}/{p.name}" for p in batch]
        lines.append(f"dpkg {opts} --install {shlex.join(paths)}")
    return "\n".join(lines) + "\n"


def apt_upgrade_script() -> str:
    opts = [
        "-y", "-q", "--no-download",
        "-o", "Debug::NoLocking=1",
        "-o", "Dir::State::Lists=/run/retrofit/lists/",
        "-o", "Dir::Cache::Archives=/run/retrofit/archives/",
        "-o", "Dir::Etc::sourcelist=/run/retrofit/etc-apt/sources.list",
        "-o", "Dir::Etc::sourceparts=/run/retrofit/etc-apt/sources.list.d/",
        "-o", "Dir::Etc::preferences=/run/retrofit/etc-apt/preferences",
        "-o", "Dir::Etc::preferencesparts=/run/retrofit/etc-apt/preferences.d/",
        "-o", "Dir::Cache::pkgcache=",
        "-o", "Dir::Cache::srcpkgcache=",
        "-o", "APT::Sandbox::User=root",
        "-o", "Acquire::Languages=none",
        "-o", "Dpkg::Use-Pty=0",
        *[a for o in DPKG_OPTS for a in ("-o", f"Dpkg::Options::={o}")],
    ]  # fmt: skip
    hold = (
        f"held=$(dpkg-query -W -f '${{Package}} ${{Status}}\\n' '{KERNEL_PREFIX}*' 2>/dev/null"
        ' | awk \'$4 == "installed" && $2 == "install" {print $1}\')\n'
    )
    sel = 'for p in $held; do echo "$p {}"; done | dpkg --set-selections\n'
    return (
        "set -e\nexec 1>&2\n"
        + hold
        + sel.format("hold")
        + f"apt-get {shlex.join(opts)} dist-upgrade\n"
        + sel.format("install")
    )


def check_database(tree: Path, verb: str) -> dict[str, dpkgdb.Package]:
    """Every package installed and configured after the run."""
    pkgs = dpkgdb.read_status(tree / DATABASE)
    half = [p.name for p in pkgs if p.state in dpkgdb.BROKEN_STATES]
    if half:
        raise RetrofitError(
            f"{verb}: packages left half-installed in the sandbox: {', '.join(half)}",
            hint="nothing was deployed; rerun with --debug to see dpkg's output",
        )
    return dpkgdb.installed(tree / DATABASE)


def fix_bytecode(tree: Path, packages: Sequence[str]) -> int:
    """Bytecode compiled by the packages' scripts, made valid for the mtime-0 sources
    a commit has (see docs/convert.md, "Python bytecode"). Only new files (one link)
    are rewritten, as new inodes."""
    info = tree / DATABASE / "info"
    n = 0
    for name in packages:
        lists = list(info.glob(f"{name}.list")) + list(info.glob(f"{name}:*.list"))
        for lst in lists:
            for line in lst.read_text(errors="surrogateescape").splitlines():
                if not line.endswith(".py"):
                    continue
                src = tree / line.lstrip("/")
                cache_dir = src.parent / "__pycache__"
                if not cache_dir.is_dir() or src.is_symlink() or not src.is_file():
                    continue
                stem = src.name[:-3]
                sst = src.stat()
                for pyc in cache_dir.glob(f"{stem}.*.pyc"):
                    st = os.lstat(pyc)
                    if st.st_nlink != 1 or pyc.is_symlink():
                        continue
                    patched = content.patch_pyc(pyc.read_bytes(), int(sst.st_mtime), sst.st_size)
                    if patched is None:
                        continue
                    tmp = pyc.with_name(pyc.name + ".retrofit-new")
                    tmp.write_bytes(patched)
                    os.chown(tmp, st.st_uid, st.st_gid)
                    os.chmod(tmp, st.st_mode & 0o7777)
                    os.rename(tmp, pyc)
                    n += 1
    if n:
        log.debug("layer: %d bytecode files made mtime-independent", n)
    return n
