"""The conversion phases. Each has ``done`` (a side-effect-free check of whether its
result is already there), ``apply``, and ``undo`` (idempotent, safe after a partial
apply). Every step decides from the state of the tree, so a crash between any two
steps is resumed or undone correctly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import time
from pathlib import Path

from convert import content
from convert.journal import Journal
from convert.plan import Move, Plan
from dpkg_layer.guard import guard_files
from grub import initramfs
from retrofit import dpkgdb, layout, rootpath
from retrofit import ostree as ot
from retrofit.errors import RetrofitError
from retrofit.log import log
from retrofit.run import run
from retrofit.sandbox import PolicyRcD, run_in


class Phase:
    name = ""

    def __init__(self, plan: Plan, journal: Journal) -> None:
        self.plan = plan
        self.root = Path(plan.root)
        self.journal = journal

    @property
    def staging(self) -> Path:
        return self.root / layout.STATE_DIR / "staging"

    @property
    def repo_path(self) -> Path:
        return self.root / layout.REPO

    @property
    def stateroot(self) -> Path:
        return self.root / layout.stateroot_dir(self.plan.stateroot)

    def done(self) -> bool:
        return False

    def apply(self) -> None:
        raise NotImplementedError

    def undo(self) -> None:
        raise NotImplementedError


def installed_names(root: Path) -> set[str]:
    admindir = rootpath.resolve(root, "var/lib/dpkg")
    return set(dpkgdb.installed(admindir))


# Small state files that apt, dpkg and their triggers rewrite as a side effect of an
# install. On an offline tree they are saved before and put back by undo, so that
# --revert restores the tree exactly. (Relative to the root; /var/log is handled by
# size, below.)
SIDE_EFFECT_FILES = (
    "var/lib/apt/extended_states",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/statoverride-old",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/cache/debconf/passwords.dat-old",
    "etc/ld.so.cache",
)


class InstallPackages(Phase):
    """Install what the converted system needs (ostree, ostree-boot, bubblewrap)."""

    name = "install-packages"

    @property
    def backup(self) -> Path:
        return self.root / layout.STATE_DIR / "install-backup"

    def done(self) -> bool:
        return all(p in installed_names(self.root) for p in self.plan.missing_packages)

    def _apt(self, args: list[str]) -> None:
        opts = ["-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
                "-o", "APT::Install-Recommends=false"]  # fmt: skip
        if self.plan.live:
            run(["apt-get", *opts, *args], stream=True)
            return
        # Offline tree: apt runs inside it, sandboxed; lists, downloads and logs go to
        # the sandbox's /tmp so the tree keeps nothing but the installed packages.
        opts += ["-o", "Dir::State::Lists=/tmp/lists", "-o", "Dir::Cache::Archives=/tmp/archives",
                 "-o", "Dir::Log=/tmp/log", "-o", "DPkg::Options::=--log=/dev/null"]  # fmt: skip
        script = (
            "mkdir -p /tmp/lists/partial /tmp/archives/partial /tmp/log && "
            'apt-get "$@" update -q && apt-get "$@" ' + " ".join(args)
        )
        self._sandboxed(["/bin/sh", "-c", script, "apt", *opts], network=True)

    def _sandboxed(self, argv: list[str], network: bool = False) -> None:
        with PolicyRcD(self.root):
            run_in(self.root, argv, network=network, stream=True,
                   env={"DEBIAN_FRONTEND": "noninteractive"},
                   ro_binds=self._no_initramfs_update())  # fmt: skip

    def _no_initramfs_update(self) -> list[tuple[str, str]]:
        """Keep the tree's initramfs as it is while packages install: rebuilding it is
        the boot chain's work, and a rebuilt one could not be undone byte for byte."""
        conf = self.root / "etc/initramfs-tools/update-initramfs.conf"
        if not conf.is_file() or conf.is_symlink():
            return []
        override = self.root / layout.STATE_DIR / "update-initramfs.conf"
        override.write_text("# retrofit: no initramfs updates while packages install\n"
                            "update_initramfs=no\n")  # fmt: skip
        return [(str(override), "/etc/initramfs-tools/update-initramfs.conf")]

    def _log_sizes(self) -> dict[str, int]:
        logdir = rootpath.resolve(self.root, "var/log")
        sizes: dict[str, int] = {}
        for dirpath, _dirs, files in os.walk(logdir):
            for name in files:
                p = os.path.join(dirpath, name)
                if os.path.isfile(p) and not os.path.islink(p):
                    sizes[os.path.relpath(p, logdir)] = os.path.getsize(p)
        return sizes

    def _save_side_effects(self) -> None:
        if self.backup.exists():
            shutil.rmtree(self.backup)
        self.backup.mkdir(parents=True)
        absent = []
        for rel in SIDE_EFFECT_FILES:
            src = rootpath.resolve(self.root, rel)
            if src.is_file() and not src.is_symlink():
                dst = self.backup / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                content.copy_meta(src, dst)
            elif not src.exists():
                absent.append(rel)
        self.journal.record(self.name, "absent", absent)
        self.journal.record(self.name, "logs", self._log_sizes())

    def _restore_side_effects(self) -> None:
        for rel in SIDE_EFFECT_FILES:
            saved = self.backup / rel
            target = rootpath.resolve(self.root, rel)
            if saved.is_file():
                os.rename(saved, target)
            elif rel in self.journal.recorded(self.name, "absent", []) and target.is_file():
                target.unlink()
        # logs the package tools wrote despite the redirections (update-alternatives
        # writes /var/log/alternatives.log itself): cut back to their size before
        before = self.journal.recorded(self.name, "logs", {})
        logdir = rootpath.resolve(self.root, "var/log")
        for rel, size in self._log_sizes().items():
            if rel not in before:
                (logdir / rel).unlink()
            elif size > before[rel]:
                os.truncate(logdir / rel, before[rel])

    def _cleanup(self) -> None:
        for p in (self.backup, self.root / layout.STATE_DIR / "update-initramfs.conf"):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def apply(self) -> None:
        before = sorted(installed_names(self.root))
        if self.journal.recorded(self.name, "before") is None:
            if not self.plan.live:
                self._save_side_effects()
            self.journal.record(self.name, "before", before)
        missing = [p for p in self.plan.missing_packages if p not in before]
        if not missing:
            return
        log.info("install-packages: installing %s", ", ".join(missing))
        self._apt(["install", "-y", "-q", *missing])
        override = self.root / layout.STATE_DIR / "update-initramfs.conf"
        if override.exists():
            override.unlink()

    def undo(self) -> None:
        before = self.journal.recorded(self.name, "before")
        if before is None:
            self._cleanup()
            return
        added = sorted(installed_names(self.root) - set(before))
        if added:
            log.info("install-packages: purging %s", ", ".join(added))
            argv = ["dpkg", "--purge", "--force-depends", "--log=/dev/null", *added]
            if self.plan.live:
                run(argv, stream=True)
            else:
                self._sandboxed(argv)
        if not self.plan.live and self.backup.exists():
            self._restore_side_effects()
        self._cleanup()


class PrepareRepo(Phase):
    """Create /ostree/repo (bare) and the stateroot directory."""

    name = "prepare-repo"

    def done(self) -> bool:
        return (self.repo_path / "config").exists() and self.stateroot.is_dir()

    def apply(self) -> None:
        if not (self.repo_path / "config").exists():
            if self.repo_path.exists():
                shutil.rmtree(self.repo_path)
            tmp = self.repo_path.with_name("repo.tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            ot.init_repo(tmp, "bare")
            os.rename(tmp, self.repo_path)
        self.stateroot.mkdir(parents=True, exist_ok=True)

    def undo(self) -> None:
        # The deployments were removed by deploy's undo; whatever is left under
        # /ostree except the journal's own directory was created by us.
        base = self.root / "ostree"
        if not base.exists():
            return
        for entry in base.iterdir():
            if entry.name == layout.STATE_DIR.name:
                continue
            _remove(entry)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    run(["chattr", "-R", "-i", str(path)], ok=(0, 1))
    shutil.rmtree(path)


class Commit(Phase):
    """Commit /usr, /etc (as /usr/etc), package state and kernels."""

    name = "commit"

    def done(self) -> bool:
        if not (self.repo_path / "config").exists():
            return False
        want = self.journal.recorded(self.name, "checksum")
        return bool(want) and ot.Repo(self.repo_path).resolve(self.plan.ref) == want

    def apply(self) -> None:
        root = self.root
        if self.staging.exists():
            _remove(self.staging)
        skeleton = self.staging / "skeleton"
        self.staging.mkdir(parents=True)
        content.build_skeleton(root, skeleton)

        adopt = self.plan.usr_mode == "adopt"
        sources = [
            ot.CommitSource(skeleton, ""),
            ot.CommitSource(root / "usr", "usr", frozenset({"/local"}), adopt=adopt),
            ot.CommitSource(root / "etc", "usr/etc"),
        ]
        relocated = []
        for m in layout.STATE_MOVES:
            src = rootpath.resolve(root, f"var/{m.var_path}")
            if src.is_dir():
                sources.append(ot.CommitSource(src, m.usr_path))
                relocated.append(f"/var/{m.var_path}")
        extras: list[ot.ExtraFile] = []
        for k in self.plan.kernels:
            mod = f"usr/lib/modules/{k['version']}"
            # kernel images are replaced, never written in place: link, don't copy
            extras.append(ot.ExtraFile(f"{mod}/vmlinuz", source=root / k["vmlinuz"], link=True))
            # the host's initramfs cannot boot ostree=: build one that can, with the
            # tree's own generator (the host's stays as it is, for the old system)
            initrd = self.staging / f"initramfs-{k['version']}.img"
            initramfs.build(root, k["version"], initrd, self.staging / "initramfs-work")
            initrd.chmod(0o644)
            extras.append(ot.ExtraFile(f"{mod}/initramfs.img", source=initrd, link=True))
            # the kernel's build configuration beside it, as Fedora's kernels have it:
            # initramfs-tools reads it when it rebuilds the image in a later tree
            kconfig = root / f"boot/config-{k['version']}"
            if kconfig.is_file():
                extras.append(ot.ExtraFile(f"{mod}/config", source=kconfig, link=True))
            gen = initramfs.generator(root) or ""
            stamp = initramfs.stamp_data(root, k["version"], gen)
            extras.append(ot.ExtraFile(f"{mod}/{initramfs.STAMP}", data=stamp))
        extras += [
            ot.ExtraFile(initramfs.HOOK_PATH, data=initramfs.HOOK.encode(), mode=0o755),
            ot.ExtraFile(initramfs.SCRIPT_PATH, data=initramfs.SCRIPT.encode(), mode=0o755),
        ]
        # Adopted files keep their mtime (the objects are the files), so their
        # bytecode stays valid as it is.
        pyc = [] if adopt else list(content.pyc_patches(root / "usr"))
        extras += pyc
        admindir = rootpath.resolve(root, "var/lib/dpkg")
        tmpfiles = "\n".join(content.tmpfiles_lines(root, admindir, relocated)) + "\n"
        extras.append(ot.ExtraFile(content.TMPFILES_PATH, data=tmpfiles.encode()))
        # on the converted system, apt and dpkg refuse to change /usr and name the
        # retrofit verb to use instead
        extras += guard_files()

        meta = {
            "version": ot.v_str(f"{self.plan.version_id}.{time.strftime('%Y%m%d.%H%M%S')}"),
            "ostree.bootable": ot.v_bool(True),
            "ostree.linux": ot.v_str(self.plan.kernels[0]["version"])
            if self.plan.kernels
            else ot.v_str(""),
            "retrofit.source": ot.v_str("convert"),
            "retrofit.host": ot.v_str(socket.gethostname() if self.plan.live else root.name),
            "retrofit.os": ot.v_str(f"{self.plan.os_id} {self.plan.version_id}"),
        }
        repo = ot.Repo(self.repo_path)
        checksum, stats = repo.write_tree_commit(
            sources,
            ref=self.plan.ref,
            subject=f"retrofit: converted {self.plan.os_id} {self.plan.version_id} "
            f"({self.plan.codename}) system",
            metadata=meta,
            progress_total=self.plan.commit_bytes,
            extra_files=extras,
        )
        log.info(
            "commit: %s (%d files, %d bytecode files made mtime-independent)",
            checksum[:12],
            stats.files,
            len(pyc),
        )
        self.journal.record(self.name, "checksum", checksum)
        self.journal.record(self.name, "skipped_special", stats.skipped_special)
        _remove(self.staging)

    def undo(self) -> None:
        if self.staging.exists():
            _remove(self.staging)
        if not (self.repo_path / "config").exists():
            return
        repo = ot.Repo(self.repo_path)
        if repo.resolve(self.plan.ref):
            repo.set_ref(self.plan.ref, None)
        repo.prune()


class MoveData(Phase):
    """Move /var and user data into the stateroot by rename; leave symlinks so the old
    system (still bootable) sees the same data; relocate package state into /usr."""

    name = "move-data"

    def _moves(self) -> list[Move]:
        return list(self.plan.data_moves) + list(self.plan.state_moves)

    def done(self) -> bool:
        return all(self._is_moved(m) for m in self._moves())

    def _is_moved(self, m: Move) -> bool:
        src, dst = self.root / m.source, self._target(m)
        return src.is_symlink() and os.readlink(src) == m.link and _exists(dst)

    def _target(self, m: Move) -> Path:
        # state moves name their source through the var symlink: resolve inside root
        return self.root / m.target

    def _source(self, m: Move) -> Path:
        parent = rootpath.resolve(self.root, os.path.dirname(m.source))
        return parent / os.path.basename(m.source)

    def apply(self) -> None:
        removed = self.journal.recorded(self.name, "removed_empty", {})
        for m in self._moves():
            src, dst = self._source(m), self._target(m)
            if src.is_symlink() and os.readlink(src) == m.link and _exists(dst):
                continue
            if not src.is_symlink() and src.exists():
                if _exists(dst):
                    if dst.is_dir() and not dst.is_symlink() and not any(dst.iterdir()):
                        st = dst.stat()
                        removed[m.target] = [stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
                        self.journal.record(self.name, "removed_empty", removed)
                        dst.rmdir()
                    else:
                        raise RetrofitError(
                            f"move-data: cannot move /{m.source}: /{m.target} exists and "
                            "is not empty",
                            hint="move it aside, then run convert again",
                        )
                dst.parent.mkdir(parents=True, exist_ok=True)
                log.info("move-data: /%s -> /%s", m.source, m.target)
                os.rename(src, dst)
            if not src.is_symlink() and not src.exists() and _exists(dst):
                os.symlink(m.link, src)
            _fsync_dir(src.parent)

    def undo(self) -> None:
        removed = self.journal.recorded(self.name, "removed_empty", {})
        for m in reversed(self._moves()):
            src, dst = self._source(m), self._target(m)
            if src.is_symlink() and os.readlink(src) == m.link:
                if not _exists(dst):
                    continue  # nothing was moved yet; the link is not ours to drop
                src.unlink()
            if not src.exists() and _exists(dst):
                log.info("move-data: undo /%s -> /%s", m.target, m.source)
                os.rename(dst, src)
            if m.target in removed and not _exists(dst):
                mode, uid, gid = removed[m.target]
                dst.mkdir()
                os.chown(dst, uid, gid)
                os.chmod(dst, mode)
            _fsync_dir(src.parent)


def _exists(p: Path) -> bool:
    return p.exists() or p.is_symlink()


def _fsync_dir(p: Path) -> None:
    try:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


BOOT_ENTRIES = ("boot/loader", "boot/loader.0", "boot/loader.1", "boot/ostree", "boot/boot")
SELABELED = ".ostree-selabeled"


class Deploy(Phase):
    """Deploy the commit in the stateroot with the host's kernel arguments."""

    name = "deploy"

    def _ours(self) -> list[ot.Deployment]:
        if not (self.repo_path / "config").exists():
            return []
        return [
            d for d in ot.Sysroot(self.root).deployments() if d.stateroot == self.plan.stateroot
        ]

    def done(self) -> bool:
        checksum = self.journal.recorded("commit", "checksum")
        return any(d.checksum == checksum for d in self._ours())

    def apply(self) -> None:
        if self.journal.recorded(self.name, "boot_before") is None:
            self.journal.record(
                self.name, "boot_before", [p for p in BOOT_ENTRIES if _exists(self.root / p)]
            )
            self.journal.record(
                self.name, "selabeled_before", _exists(self.stateroot / "var" / SELABELED)
            )
        origin = self.root / layout.STATE_DIR / "origin"
        origin.write_text(
            "[origin]\n"
            f"refspec={self.plan.ref}\n\n"
            "[retrofit]\n"
            "version=1\n"
            f"base-refspec={self.plan.ref}\n"
            "requested-packages=\n"
            "requested-local-packages=\n"
            "removed-base-packages=\n"
        )
        ot.deploy(self.root, self.plan.stateroot, self.plan.ref, self.plan.kargs, origin)
        origin.unlink()

    def undo(self) -> None:
        if (self.repo_path / "config").exists() and self._ours():
            ot.undeploy_all(self.root, self.plan.stateroot)
        deploy_dir = self.stateroot / "deploy"
        if deploy_dir.exists():
            _remove(deploy_dir)
        before = self.journal.recorded(self.name, "boot_before")
        if before is None:
            return
        # ostree marks the stateroot's var as labelled on first deploy
        marker = self.stateroot / "var" / SELABELED
        if not self.journal.recorded(self.name, "selabeled_before") and _exists(marker):
            marker.unlink()
        for rel in BOOT_ENTRIES:
            p = self.root / rel
            if rel not in before and _exists(p):
                _remove(p)


class Bootloader(Phase):
    """On a live host, regenerate the GRUB menu so it lists the deployment, boot it
    next once on trial (the old system stays the default until the trial proves
    healthy, and stays in the menu after that),
    and switch /boot/grub/grub.cfg to libostree's ``../loader/grub.cfg`` layout so
    later deployments update the menu (``grub/entries.py``)."""

    name = "bootloader"

    def _etc_roots(self) -> list[Path]:
        roots = [self.root]
        if (self.repo_path / "config").exists():
            roots += [
                Path(d.path)
                for d in ot.Sysroot(self.root).deployments()
                if d.stateroot == self.plan.stateroot
            ]
        return roots

    def done(self) -> bool:
        return not self.plan.update_grub

    def apply(self) -> None:
        if not self.plan.update_grub:
            return
        from grub import entries, trial

        entries.write_dropin(self._etc_roots())
        entries.write_grubd_wrapper(self._etc_roots())
        # the old system stays GRUB's default until the deployment's first boot,
        # a one-shot trial, proves healthy (retrofit-health.service)
        trial.prepare(self.root, "convert")
        entries.mkconfig(self.root)
        trial.begin(self.root, "convert", None)

    def undo(self) -> None:
        if self.plan.update_grub and self.journal.status(self.name) != "pending":
            from grub import entries, trial

            trial.reset(self.root)
            entries.remove_dropin(self._etc_roots())
            entries.restore(self.root)
            run(["grub-mkconfig", "-o", str(self.root / entries.GRUB_CFG)], stream=True)


class Finalize(Phase):
    name = "finalize"

    @property
    def record_path(self) -> Path:
        return self.root / layout.STATE_DIR / "converted.json"

    def done(self) -> bool:
        return self.record_path.exists()

    def apply(self) -> None:
        from retrofit import atomic

        atomic.write_json(
            self.record_path,
            {
                "apiVersion": 1,
                "converted_at": time.time(),
                "commit": self.journal.recorded("commit", "checksum"),
                "ref": self.plan.ref,
                "stateroot": self.plan.stateroot,
                "moves": [m.__dict__ for m in self.plan.data_moves + self.plan.state_moves],
            },
        )

    def undo(self) -> None:
        if self.record_path.exists():
            self.record_path.unlink()


PHASE_CLASSES: dict[str, type[Phase]] = {
    cls.name: cls
    for cls in (InstallPackages, PrepareRepo, Commit, MoveData, Deploy, Bootloader, Finalize)
}


def describe_journal(journal: Journal) -> dict[str, object]:
    return json.loads(json.dumps(journal.data))  # type: ignore[no-any-return]
