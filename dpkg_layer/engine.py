"""Requests in, a deployment out: the layered tree is rebuilt from its base plus the
requests every time (never patched), committed as a child of the base, and deployed
as the new default with /etc carried forward by retrofit's merge. The previous
default stays as the rollback.

Order of work (bootc's rule: gather, then mutate): read the system, resolve, download
(into the cache), build the commit beside everything (a scratch checkout), and only
then point refs and deploy. A failure anywhere before the deploy leaves the system as
it was; a failed deploy restores the refs and removes a half-made deployment.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gi.repository import GLib

from dpkg_layer import aptcfg, compose, dpkgrun, fetch, localdeb, ostreeops, varstate
from dpkg_layer import origin as originmod
from dpkg_layer.origin import Requests
from dpkg_layer.resolve import Change, Resolution, Universe, resolve
from dpkg_layer.system import DATABASE, META_BASE, META_SOURCE, System, workdir
from grub import initramfs
from retrofit import dpkgdb
from retrofit import ostree as ot
from retrofit.deploy import deploy_with_merge
from retrofit.errors import NothingToDo, RetrofitError
from retrofit.log import log
from retrofit.run import run

BASE_PIN_PREFIX = "retrofit/bases/"


@dataclass
class Outcome:
    requests: Requests
    changes: list[Change] = field(default_factory=list)  # against the current default
    notes: list[str] = field(default_factory=list)
    deployed: str | None = None
    dry_run: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    objects_written: int = 0
    new_base: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "requests": {
                "base-refspec": self.requests.base_refspec,
                "packages": list(self.requests.packages),
                "local-packages": [p.spec for p in self.requests.local_packages],
                "removed-base-packages": list(self.requests.removed_base_packages),
            },
            "changes": [{"name": c.name, "old": c.old, "new": c.new} for c in self.changes],
            "notes": self.notes,
            "deployed": self.deployed,
            "new_base": self.new_base,
            "dry_run": self.dry_run,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "objects_written": self.objects_written,
        }


@dataclass(frozen=True)
class ListsMode:
    refresh: bool = False  # always apt-get update first
    cache_only: bool = False  # never


def installed_versions(db: dict[str, dpkgdb.Package]) -> dict[str, str]:
    return {n: p.version for n, p in db.items()}


def status_of_commit(repo: ot.Repo, rev: str) -> dict[str, str]:
    data = ostreeops.read_file(repo, rev, f"{DATABASE}/status")
    if data is None:
        raise RetrofitError(
            f"commit {rev[:12]} has no dpkg database ({DATABASE}/status)",
            hint="it was not made by retrofit convert",
        )
    out = {}
    for st in dpkgdb.parse_stanzas(data.decode(errors="replace")):
        status = st.get("Status", "").split()
        if "Package" in st and status and status[-1] not in ("not-installed", "config-files"):
            out[st["Package"]] = st.get("Version", "")
    return out


def diff_versions(old: dict[str, str], new: dict[str, str]) -> list[Change]:
    out = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            out.append(Change(name, old.get(name), new.get(name)))
    return out


def current_versions(system: System) -> dict[str, str]:
    return installed_versions(dpkgdb.installed(system.default_root / DATABASE))


# -- inputs ------------------------------------------------------------------------
def local_debs(
    system: System, req: Requests, new: Sequence[localdeb.LocalDeb], verb: str
) -> list[localdeb.LocalDeb]:
    """The .deb file of every local request: given now, or kept from before."""
    by_sha = {d.sha256: d for d in new}
    out = []
    for pkg in req.local_packages:
        if pkg.sha256 in by_sha:
            out.append(by_sha[pkg.sha256])
            continue
        path = system.local_deb(pkg)
        if not path.is_file():
            raise RetrofitError(
                f"{verb}: the local package {pkg.name} (sha256 {pkg.sha256[:12]}) is missing "
                f"from {system.local_store}",
                hint=f"install the file again, or drop it: retrofit uninstall {pkg.name}",
            )
        deb = localdeb.inspect(path, verb)
        if deb.sha256 != pkg.sha256:
            raise RetrofitError(
                f"{verb}: {path} does not match its sha256 {pkg.sha256[:12]}",
                hint=f"install the file again: retrofit install ./{pkg.name}.deb",
            )
        out.append(deb)
    return out


def ensure_lists(system: System, paths: aptcfg.AptPaths, mode: ListsMode, verb: str) -> None:
    etc_apt = system.default_root / "etc/apt"
    if mode.cache_only:
        if not any(paths.lists.glob("*Packages*")):
            raise RetrofitError(
                f"{verb}: no package lists in {paths.lists} and --cache-only was given",
                hint="run once without --cache-only (needs the network)",
            )
        return
    if mode.refresh or not aptcfg.lists_fresh(paths, etc_apt):
        aptcfg.update_lists(system.default_root, paths, verb)


def universe(
    system: System,
    repo: ot.Repo,
    base: str,
    work: Path,
    paths: aptcfg.AptPaths,
    debs: Sequence[localdeb.LocalDeb],
    hold_kernel: bool = False,
) -> Universe:
    status = work / "base-status"
    data = ostreeops.read_file(repo, base, f"{DATABASE}/status")
    if data is None:
        raise RetrofitError(f"base commit {base[:12]} has no dpkg database")
    status.write_bytes(hold_kernel_packages(data) if hold_kernel else data)
    archs = ostreeops.read_file(repo, base, f"{DATABASE}/arch") or b""
    foreign = tuple(a for a in archs.decode().split() if a and a != system.arch)
    return Universe(
        work=work,
        etc_apt=system.default_root / "etc/apt",
        status=status,
        paths=paths,
        arch=system.arch,
        foreign_archs=foreign,
        local_debs=debs,
    )


def hold_kernel_packages(status: bytes) -> bytes:
    """The status file with kernel packages on hold (as the upgrade sandbox does):
    a new kernel needs a new initramfs and boot entries, the boot chain's work."""
    out = []
    for stanza in status.decode(errors="surrogateescape").split("\n\n"):
        first = stanza.lstrip("\n").split("\n", 1)[0]
        if first.startswith(f"Package: {dpkgrun.KERNEL_PREFIX}"):
            stanza = stanza.replace("\nStatus: install ok ", "\nStatus: hold ok ")
        out.append(stanza)
    return "\n\n".join(out).encode(errors="surrogateescape")


def projected(base_versions: dict[str, str], res: Resolution) -> dict[str, str]:
    out = dict(base_versions)
    for c in res.base_changes + res.removals:
        if c.new is None:
            out.pop(c.name, None)
        else:
            out[c.name] = c.new
    for it in res.items:
        out[it.name] = it.version
    return out


# -- the commit and the deployment --------------------------------------------------
def layer_metadata(
    repo: ot.Repo, base: str, req: Requests, res: Resolution
) -> dict[str, GLib.Variant]:
    meta = {
        k: v
        for k, v in ostreeops.raw_metadata(repo, base).items()
        if k in ("version", "ostree.bootable", "ostree.linux", "retrofit.os")
    }
    meta.update(
        {
            META_SOURCE: ot.v_str("layer"),
            META_BASE: ot.v_str(base),
            "retrofit.base-refspec": ot.v_str(req.base_refspec),
            "retrofit.requested-packages": ot.v_strv(req.packages),
            "retrofit.requested-local-packages": ot.v_strv([p.spec for p in req.local_packages]),
            "retrofit.removed-base-packages": ot.v_strv(req.removed_base_packages),
            "retrofit.layered-packages": ot.v_strv([f"{i.name}={i.version}" for i in res.items]),
        }
    )
    return meta


def base_pins(system: System, extra: Sequence[str] = ()) -> dict[str, str | None]:
    """Refs keeping the base commit of every layered deployment (and ``extra``)
    alive: pruning would otherwise drop a base that only a rollback deployment
    sits on, and a later change on top of that deployment needs it."""
    repo = system.repo()
    want = set(extra)
    for d in ot.Sysroot(system.sysroot).deployments():
        try:
            base = str(repo.commit_metadata(d.checksum).get(META_BASE) or "")
        except Exception:
            base = ""
        if base:
            want.add(base)
    have = {r[len(BASE_PIN_PREFIX) :] for r in repo.refs() if r.startswith(BASE_PIN_PREFIX)}
    out: dict[str, str | None] = {f"{BASE_PIN_PREFIX}{c}": c for c in want - have}
    out.update({f"{BASE_PIN_PREFIX}{c}": None for c in have - want})
    return out


def deploy(
    system: System,
    checksum: str,
    req: Requests,
    work: Path,
    refs: dict[str, str | None],
) -> ot.Deployment:
    """Point ``refs``, then deploy ``checksum`` as the new default with an origin
    recording ``req``. On failure the refs are put back and a deployment that was
    made is removed."""
    repo = system.repo()
    origin_file = work / "origin"
    origin_file.write_text(originmod.render(req, system.layered_ref))
    before = {(d.checksum, d.serial) for d in ot.Sysroot(system.sysroot).deployments()}
    extra = [_base_of(repo, checksum)] if req.layered else []
    pins = {k: v for k, v in base_pins(system, extra).items() if v is not None}
    old = ostreeops.set_refs(repo, {**refs, **pins})
    try:
        result = deploy_with_merge(
            system.sysroot, system.stateroot, checksum, origin_file=origin_file
        )
    except BaseException:
        ostreeops.set_refs(repo, old)
        deps = ot.Sysroot(system.sysroot).deployments()
        if deps and (deps[0].checksum, deps[0].serial) not in before:
            run(["ostree", "admin", "undeploy", f"--sysroot={system.sysroot}", "0"], ok=(0, 1))
        raise
    # drop pins of bases no deployment uses any more (deploy removed old deployments)
    ostreeops.set_refs(repo, {k: v for k, v in base_pins(system).items() if v is None})
    return result.deployment


def initramfs_stale(system: System, commit: str) -> str | None:
    """Why the initramfs in ``commit`` does not fit the running /etc any more (None:
    it does, or the commit has no record of how it was built)."""
    repo = system.repo()
    kver = repo.commit_metadata(commit).get("ostree.linux")
    if not kver:
        return None
    stamp = ostreeops.read_file(repo, commit, f"usr/lib/modules/{kver}/{initramfs.STAMP}")
    return initramfs.stale_etc(stamp, system.default_root / "etc")


def _initramfs_layer(
    system: System,
    commit: str,
    work: Path,
    metadata: dict[str, GLib.Variant],
    force: bool,
    verb: str,
) -> compose.Composed:
    """``commit`` again, only with its initramfs rebuilt (no package changes)."""
    return compose.compose(
        system.repo(),
        commit,
        work,
        compose.Job(packages=False, force_initramfs=force),
        running_etc=system.default_root / "etc",
        image_etc=system.default_root / "usr/etc",
        subject=f"retrofit initramfs rebuild on {commit[:12]}",
        metadata=metadata,
        verb=verb,
    )


def rebuild_initramfs(system: System, verb: str, force: bool = False) -> Outcome:
    """A new deployment of exactly the default deployment's tree with its initramfs
    rebuilt (when out of date, or always with ``force``): for a change to the
    initramfs configuration in /etc. Later layers and upgrades rebuild it by
    themselves when needed."""
    repo = system.repo()
    current = system.default.checksum
    req = system.requests
    stale = "asked to" if force else initramfs_stale(system, current)
    if stale is None:
        raise NothingToDo(
            f"{verb}: the initramfs is up to date with /etc",
            hint="--force rebuilds it anyway",
        )
    out = Outcome(req)
    meta = dict(ostreeops.raw_metadata(repo, current))
    meta.setdefault(META_BASE, ot.v_str(_base_of(repo, current)))
    meta[META_SOURCE] = ot.v_str("layer")
    with workdir(system) as work:
        composed = _initramfs_layer(system, current, work, meta, force, verb)
        if not composed.initramfs:
            raise RetrofitError(
                f"{verb}: the deployment has no kernel under /usr/lib/modules to build for",
                hint="retrofit status shows the deployment; nothing was changed",
            )
        out.notes += [f"initramfs rebuilt for {k}" for k in composed.initramfs]
        out.timings.update(composed.timings)
        refs: dict[str, str | None] = {system.layered_ref: composed.checksum} if req.layered else {}
        out.deployed = deploy(system, composed.checksum, req, work, refs).checksum
    return out


def _base_of(repo: ot.Repo, checksum: str) -> str:
    return str(repo.commit_metadata(checksum).get(META_BASE) or checksum)


# -- the one flow every verb uses ---------------------------------------------------
def apply(
    system: System,
    req: Requests,
    verb: str,
    *,
    base: str | None = None,
    new_local: Sequence[localdeb.LocalDeb] = (),
    explicit: Sequence[str] = (),
    lists: ListsMode = ListsMode(),
    dry_run: bool = False,
    download_only: bool = False,
    refs: dict[str, str | None] | None = None,
    notes: list[str] | None = None,
    timings: dict[str, float] | None = None,
    force_initramfs: bool = False,
) -> Outcome:
    """Build base + ``req`` and deploy it.

    The initramfs of the result is rebuilt when what it is made from changed (its
    configuration in the running /etc, the generator and its hooks) or when
    ``force_initramfs``; without layered packages that makes a layer of its own.

    ``base``: the base commit (default: the current deployment's). ``explicit``: names
    the user asked for in this call (asking only for what the base already has is
    "nothing to do"). Other requests the base already satisfies are dropped from the
    layer with a note."""
    repo = system.repo()
    base = base or system.base_checksum
    notes = notes if notes is not None else []
    timings = timings if timings is not None else {}
    refs = dict(refs or {})
    out = Outcome(req, notes=notes, dry_run=dry_run, timings=timings)
    current = current_versions(system)
    debs = local_debs(system, req, new_local, verb)
    with workdir(system) as work:
        if not req.layered:
            res = Resolution()
            target = status_of_commit(repo, base)
        else:
            t0 = time.monotonic()
            paths = aptcfg.AptPaths(system.cache)
            paths.ensure()
            if req.packages or debs:
                ensure_lists(system, paths, lists, verb)
            u = universe(system, repo, base, work, paths, debs)
            res = resolve(u, req, verb, notes=notes)
            base_versions = status_of_commit(repo, base)
            target = projected(base_versions, res)
            timings["resolve"] = time.monotonic() - t0
            req = _drop_satisfied(req, res, explicit, verb, notes, base_versions)
            out.requests = req
        out.changes = diff_versions(current, target)
        if dry_run:
            return out
        stale = "asked to" if force_initramfs else initramfs_stale(system, base)
        if not req.layered and stale is None:
            if base == system.default.checksum and not out.changes:
                raise NothingToDo(f"{verb}: nothing to do: the deployment is already that")
            dep = deploy(system, base, req, work, refs)
            out.deployed = dep.checksum
            return out
        if not req.layered:
            log.info("%s: the initramfs must be rebuilt (%s): building a layer for it", verb, stale)
            meta = layer_metadata(repo, base, req, Resolution())
            composed = _initramfs_layer(system, base, work, meta, force_initramfs, verb)
            timings.update(composed.timings)
            notes += [f"initramfs rebuilt for {k}" for k in composed.initramfs]
            out.objects_written = composed.commit.content_written
            dep = deploy(system, composed.checksum, req, work, refs)
            out.deployed = dep.checksum
            return out
        t0 = time.monotonic()
        files = fetch.fetch(res.items, paths.archives, verb)
        timings["download"] = time.monotonic() - t0
        if download_only:
            out.dry_run = True
            return out
        job = compose.Job(
            purge=[c.name for c in res.removals],
            batches=[[files[i.name] for i in batch] for batch in res.batches],
            force_initramfs=force_initramfs,
        )
        log.info("%s: building the layer: %s", verb, ", ".join(i.label for i in res.items) or "-")
        composed = compose.compose(
            repo,
            base,
            work,
            job,
            running_etc=system.default_root / "etc",
            image_etc=system.default_root / "usr/etc",
            subject=f"retrofit layer: {req.summary()}",
            metadata=layer_metadata(repo, base, req, res),
            verb=verb,
        )
        timings.update(composed.timings)
        notes += [f"initramfs rebuilt for {k}" for k in composed.initramfs]
        out.objects_written = composed.commit.content_written + composed.commit.metadata_written
        out.changes = diff_versions(current, installed_versions(composed.installed))
        t0 = time.monotonic()
        refs[system.layered_ref] = composed.checksum
        dep = deploy(system, composed.checksum, req, work, refs)
        timings["deploy"] = time.monotonic() - t0
        out.deployed = dep.checksum
    for deb in debs:
        localdeb.store(deb, system.local_deb(deb.request))
    return out


def _drop_satisfied(
    req: Requests,
    res: Resolution,
    explicit: Sequence[str],
    verb: str,
    notes: list[str],
    base_versions: dict[str, str],
) -> Requests:
    sat = set(res.satisfied)
    asked = [n for n in explicit if n in sat]
    if asked and len(asked) == len(explicit):
        pretty = ", ".join(f"{n} ({base_versions.get(n, 'provided')})" for n in asked)
        raise NothingToDo(
            f"{verb}: already in the base: {pretty}",
            hint="nothing to do; retrofit status lists what is layered",
        )
    for n in sorted(sat):
        notes.append(f"{n} is already in the base: dropped from the layered requests")
    for n in res.moot_removals:
        notes.append(f"{n} is not in the base any more: dropped from the removals")
    req = req.without(sat)
    return req.reset_removals(res.moot_removals) if res.moot_removals else req


# -- base upgrades ------------------------------------------------------------------
def compose_base(
    system: System,
    base: str,
    work: Path,
    paths: aptcfg.AptPaths,
    verb: str,
) -> compose.Composed:
    """A new base: ``base`` checked out, dist-upgraded by apt-get in the sandbox
    (offline: the archives are downloaded already), committed as its child."""
    repo = system.repo()
    meta = {
        k: v
        for k, v in ostreeops.raw_metadata(repo, base).items()
        if k in ("ostree.bootable", "ostree.linux", "retrofit.os", "retrofit.host")
    }
    old_version = str(repo.commit_metadata(base).get("version", "")) or "base"
    version = f"{old_version.split('.u')[0]}.u{time.strftime('%Y%m%d.%H%M%S')}"
    meta.update(
        {
            "version": ot.v_str(version),
            META_SOURCE: ot.v_str("upgrade"),
            "retrofit.upgraded-from": ot.v_str(base),
        }
    )
    job = compose.Job(
        apt_upgrade=(paths.lists, paths.archives, system.default_root / "etc/apt"),
        tmpfiles=varstate.UPGRADE_TMPFILES,
        keep_tmpfiles=True,
    )
    composed = compose.compose(
        repo,
        base,
        work,
        job,
        running_etc=system.default_root / "etc",
        image_etc=system.default_root / "usr/etc",
        subject=f"retrofit upgrade of {base[:12]}",
        metadata=meta,
        verb=verb,
    )
    return composed


def plan_upgrade(
    system: System, base: str, paths: aptcfg.AptPaths, work: Path, verb: str
) -> tuple[Resolution, list[str]]:
    """What a dist-upgrade of ``base`` plus the requests gives (for --check/--preview
    and for the downloads)."""
    repo = system.repo()
    notes: list[str] = []
    debs = local_debs(system, system.requests, (), verb)
    u = universe(system, repo, base, work, paths, debs, hold_kernel=True)
    res = resolve(u, system.requests, verb, upgrade_base=True, notes=notes)
    return res, notes
