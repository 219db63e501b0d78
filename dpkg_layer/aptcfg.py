"""apt, pointed at a deployment instead of the running system.

Package lists are fetched by the deployment's own ``apt-get update``, run read-only
in a sandbox with the network: its sources, its keyrings, its apt, so signatures are
checked exactly as apt on that system would. python-apt (``apt_pkg``) then resolves in
this process with the deployment's apt configuration and sources, those lists, and
the dpkg database of the commit being layered — never the host's.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import apt_pkg

from dpkg_layer import bwrap
from retrofit.errors import CommandError, RetrofitError
from retrofit.log import log
from retrofit.run import run

# Lists younger than this are used as they are by install/uninstall (upgrade always
# refreshes unless --cache-only).
LISTS_MAX_AGE = 3600.0


@dataclass(frozen=True)
class AptPaths:
    cache: Path

    @property
    def lists(self) -> Path:
        return self.cache / "lists"

    @property
    def archives(self) -> Path:
        return self.cache / "debs"

    @property
    def apt_cache(self) -> Path:
        return self.cache / "apt"

    @property
    def stamp(self) -> Path:
        return self.cache / "lists.stamp"

    def ensure(self) -> None:
        for d in (self.lists / "partial", self.archives / "partial", self.apt_cache):
            d.mkdir(parents=True, exist_ok=True)


def sources_digest(etc_apt: Path) -> str:
    """What the lists depend on: the deployment's sources and keyrings."""
    h = hashlib.sha256()
    files = [etc_apt / "sources.list"]
    for sub in ("sources.list.d", "trusted.gpg.d"):
        d = etc_apt / sub
        if d.is_dir():
            files += sorted(d.iterdir())
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(etc_apt)).encode() + b"\0")
            h.update(f.read_bytes())
    return h.hexdigest()


def lists_fresh(paths: AptPaths, etc_apt: Path, max_age: float = LISTS_MAX_AGE) -> bool:
    try:
        st = paths.stamp.stat()
        digest = paths.stamp.read_text().strip()
    except OSError:
        return False
    return digest == sources_digest(etc_apt) and time.time() - st.st_mtime < max_age


def update_lists(root: Path, paths: AptPaths, verb: str) -> None:
    """``apt-get update`` of deployment ``root`` (read-only, with the network) into the
    cache's lists directory."""
    paths.ensure()
    etc_apt = root / "etc/apt"
    log.info("%s: updating package lists (the deployment's sources and keys)", verb)
    mounts = [
        ("tmpfs", "", "/var"),
        ("bind", str(paths.lists), "/var/lib/apt/lists"),
        *bwrap.resolv_conf_mounts(root),
    ]
    opts = [
        "-q",
        "-o", "APT::Sandbox::User=root",  # the lists directory belongs to the host
        "-o", "Acquire::Languages=none",
        "-o", "Dir::Cache::pkgcache=",
        "-o", "Dir::Cache::srcpkgcache=",
        "-o", "APT::Update::Error-Mode=any",
    ]  # fmt: skip
    argv = bwrap.argv(
        root, ["apt-get", *opts, "update"], mounts=mounts, network=True, root_readonly=True
    )
    try:
        run(argv)
    except CommandError as exc:
        raise RetrofitError(
            f"{verb}: apt-get update failed: {exc.message.split(': ', 1)[-1]}",
            hint=f"check the sources in {etc_apt} and the network; nothing was changed",
        ) from None
    paths.stamp.write_text(sources_digest(etc_apt) + "\n")
    os.utime(paths.stamp)


def configure(
    *,
    etc_apt: Path,
    status: Path,
    lists: Path,
    state: Path,
    cache: Path | None,
    archives: Path,
    arch: str,
    foreign_archs: tuple[str, ...] = (),
) -> None:
    """Point apt_pkg's (process-global) configuration at a deployment."""
    settings = {
        "Dir": "/",
        "Dir::Etc": f"{etc_apt}/",
        "Dir::State": f"{state}/",
        "Dir::State::Lists": f"{lists}/",
        "Dir::State::status": str(status),
        "Dir::State::extended_states": str(state / "extended_states"),
        "Dir::Cache": f"{cache or state}/",
        "Dir::Cache::Archives": f"{archives}/",
        "Dir::Log": f"{state}/log/",
        "APT::Architecture": arch,
        "Debug::NoLocking": "1",
        # downloads land in a root-owned cache (the tree's _apt may not exist here)
        "APT::Sandbox::User": "root",
    }
    if cache is None:
        settings["Dir::Cache::pkgcache"] = ""
        settings["Dir::Cache::srcpkgcache"] = ""
    apt_pkg.config.clear("")
    for k, v in settings.items():
        apt_pkg.config.set(k, v)
    apt_pkg.init_config()  # reads the deployment's apt.conf and apt.conf.d
    for k, v in settings.items():  # which must not move our paths
        apt_pkg.config.set(k, v)
    apt_pkg.config.clear("APT::Architectures")
    for a in (arch, *foreign_archs):
        apt_pkg.config.set("APT::Architectures::", a)
    apt_pkg.init_system()


def open_cache() -> apt_pkg.Cache:
    try:
        return apt_pkg.Cache(None)
    except SystemError as exc:
        raise RetrofitError(
            f"apt: cannot read the package lists: {str(exc).strip()}",
            hint="refresh them: retrofit install --refresh ... (or retrofit upgrade)",
        ) from None
