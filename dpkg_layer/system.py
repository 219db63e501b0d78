"""Facts about a converted system, gathered before anything changes.

Every verb starts from :func:`load`: the sysroot, its stateroot, the default
deployment (the pending one if there is one, else the booted one — the deployment
the next change builds on), its requests, and the base commit under it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dpkg_layer import origin as originmod
from retrofit import dpkgdb, layout
from retrofit import ostree as ot
from retrofit.errors import RetrofitError

# Where downloads and package lists are kept (default: the stateroot's
# /var/cache/retrofit). Tests and benchmarks share one cache across throwaway trees.
CACHE_ENV = "RETROFIT_LAYER_CACHE"
LOCK_NAME = "layer.lock"
WORK_PREFIX = "layer-work."
DATABASE = "usr/share/dpkg/database"

# Commit metadata keys written by layering.
META_BASE = "retrofit.base-commit"
META_SOURCE = "retrofit.source"


@dataclass(frozen=True)
class System:
    sysroot: Path
    stateroot: str
    deployments: tuple[ot.Deployment, ...]  # of this stateroot, default first
    default: ot.Deployment
    booted: ot.Deployment | None
    requests: originmod.Requests
    base_checksum: str  # the base commit the default deployment is built on
    os_id: str
    codename: str
    arch: str

    @property
    def repo_path(self) -> Path:
        return self.sysroot / layout.REPO

    def repo(self) -> ot.Repo:
        return ot.Repo(self.repo_path)

    @property
    def var(self) -> Path:
        """The stateroot's persistent /var."""
        return self.sysroot / layout.stateroot_dir(self.stateroot) / "var"

    @property
    def state_dir(self) -> Path:
        return self.sysroot / layout.STATE_DIR

    @property
    def cache(self) -> Path:
        env = os.environ.get(CACHE_ENV)
        return Path(env) if env else self.var / "cache/retrofit"

    @property
    def local_store(self) -> Path:
        """Local .deb files requested by sha256, kept so upgrades can re-apply them."""
        return self.var / "lib/retrofit/local-debs"

    @property
    def layered_ref(self) -> str:
        return layout.layered_ref(self.os_id, self.codename, self.arch)

    @property
    def default_root(self) -> Path:
        return Path(self.default.path)

    def local_deb(self, pkg: originmod.LocalPackage) -> Path:
        return self.local_store / f"{pkg.sha256}.deb"


def _os_release(root: Path) -> dict[str, str]:
    for rel in ("usr/lib/os-release", "usr/etc/os-release", "etc/os-release"):
        p = root / rel
        if p.is_file():
            out = {}
            for line in p.read_text(errors="replace").splitlines():
                k, sep, v = line.partition("=")
                if sep:
                    out[k.strip()] = v.strip().strip('"')
            return out
    return {}


def base_of(repo: ot.Repo, checksum: str) -> str:
    """The base commit under a deployment's commit: recorded by layering, else itself."""
    meta = repo.commit_metadata(checksum)
    base = meta.get(META_BASE)
    return str(base) if base else checksum


def load(sysroot: Path, verb: str) -> System:
    sysroot = Path(os.path.abspath(sysroot))
    if not (sysroot / layout.REPO / "config").is_file():
        raise RetrofitError(
            f"{verb}: {sysroot} is not a converted system (no {layout.REPO})",
            hint="convert it first: retrofit convert (see retrofit preflight)",
        )
    sr = ot.Sysroot(sysroot)
    deps = sr.deployments()
    if not deps:
        raise RetrofitError(
            f"{verb}: {sysroot} has no deployment",
            hint="finish the conversion: retrofit convert (retrofit status shows where it is)",
        )
    default = deps[0]
    mine = tuple(d for d in deps if d.stateroot == default.stateroot)
    booted = next((d for d in mine if d.booted), None)
    requests = originmod.from_origin(default.origin)
    repo = sr.repo()
    root = Path(default.path)
    rel = _os_release(root)
    arch = dpkgdb.native_arch(root / DATABASE) or "amd64"
    codename = rel.get("VERSION_CODENAME") or "unknown"
    m = re.match(r"^(?:[^:]+:)?retrofit/([^/]+)/([^/]+)/([^/]+)/base$", requests.base_refspec)
    if m:
        os_id, codename, arch = m.group(1), m.group(2), m.group(3)
    else:
        os_id = rel.get("ID") or default.stateroot
    return System(
        sysroot=sysroot,
        stateroot=default.stateroot,
        deployments=mine,
        default=default,
        booted=booted,
        requests=requests,
        base_checksum=base_of(repo, default.checksum),
        os_id=os_id,
        codename=codename,
        arch=arch,
    )


@contextmanager
def locked(system: System, verb: str) -> Iterator[None]:
    """One layering operation at a time on a sysroot."""
    with sysroot_lock(system.sysroot, verb):
        yield


@contextmanager
def sysroot_lock(sysroot: Path, verb: str, wait: float = 0.0) -> Iterator[bool]:
    """The sysroot's operation lock (layering, rollback, kargs, and the health unit's
    trial settling). ``wait`` > 0: wait that many seconds for it, then go on without
    it (yields False) rather than fail; 0: fail at once when it is held."""
    state_dir = sysroot / layout.STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    deadline = time.monotonic() + wait
    with open(path, "w") as f:
        while not _try_lock(f):
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        else:
            yield True
            return
        if wait > 0:
            yield False
            return
        raise RetrofitError(
            f"{verb}: another retrofit operation is running on {sysroot}",
            hint=f"wait for it to finish (lock: {path})",
        )


def _try_lock(f: IO[str]) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def workdir(system: System) -> Iterator[Path]:
    """A scratch directory on the repository's filesystem (hardlink checkouts need
    it), removed afterwards whatever happens."""
    system.state_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=system.state_dir))
    try:
        yield path
    finally:
        remove_tree(path)


def remove_tree(path: Path) -> None:
    """Remove a scratch tree, unmounting anything left mounted inside it first (never
    recurse into a mount: it could be a view of something else)."""
    from dpkg_layer import rofiles

    for mnt in rofiles.mounts_under(path):
        rofiles.unmount(mnt)
    if rofiles.mounts_under(path):
        raise RetrofitError(f"layer: cannot remove {path}: something is still mounted in it")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def stale_workdirs(system: System) -> list[Path]:
    if not system.state_dir.is_dir():
        return []
    return sorted(p for p in system.state_dir.iterdir() if p.name.startswith(WORK_PREFIX))
