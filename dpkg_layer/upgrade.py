"""New bases, with the layered requests re-applied on top.

``upgrade``: a base that lives on a remote (refspec ``REMOTE:REF``) is pulled; a
local base (the converted one) is composed here: its ref's tip checked out,
``apt-get dist-upgrade`` run in the sandbox against the deployment's sources (the
archives downloaded first, the sandbox offline), committed as the base ref's child.
``rebase REMOTE:REF`` switches to a centrally composed base. Either way the layer is
rebuilt from the new base plus the requests; a request the new base already meets is
dropped from the layer with a note.
"""

from __future__ import annotations

import time

from dpkg_layer import aptcfg, engine, fetch, ostreeops
from dpkg_layer.engine import ListsMode, Outcome
from dpkg_layer.system import System, workdir
from retrofit.errors import NothingToDo, RetrofitError, UsageError
from retrofit.log import log


def split_refspec(refspec: str) -> tuple[str | None, str]:
    remote, sep, ref = refspec.partition(":")
    return (remote, ref) if sep else (None, refspec)


def _pull(system: System, refspec: str, verb: str, metadata_only: bool = False) -> str:
    remote, ref = split_refspec(refspec)
    repo = system.repo()
    if remote is not None:
        if remote not in ostreeops.remotes(system.repo_path):
            raise RetrofitError(
                f"{verb}: no OSTree remote named {remote!r} in {system.repo_path}",
                hint=f"add it: ostree remote add --repo={system.repo_path} {remote} URL",
            )
        log.info("%s: pulling %s", verb, refspec)
        ostreeops.pull(system.repo_path, remote, ref, metadata_only=metadata_only)
    rev = repo.resolve(refspec)
    if rev is None:
        raise RetrofitError(
            f"{verb}: {refspec} does not exist in {system.repo_path}",
            hint="retrofit status shows the current base; ostree refs --repo=... lists refs",
        )
    return rev


def rebase(system: System, refspec: str, *, lists: ListsMode, dry_run: bool) -> Outcome:
    verb = "rebase"
    if not refspec or refspec.endswith(":") or refspec.startswith(":"):
        raise UsageError(f"{verb}: not a refspec: {refspec!r}", hint="give REMOTE:REF or REF")
    new_base = _pull(system, refspec, verb)
    if refspec == system.requests.base_refspec and new_base == system.base_checksum:
        raise NothingToDo(f"{verb}: already on {refspec} ({new_base[:12]})")
    req = system.requests.rebased(refspec)
    log.info("%s: %s -> %s (%s)", verb, system.requests.base_refspec, refspec, new_base[:12])
    out = engine.apply(system, req, verb, base=new_base, lists=lists, dry_run=dry_run)
    out.new_base = new_base
    return out


def upgrade(system: System, *, check: bool, preview: bool, lists: ListsMode) -> Outcome:
    verb = "upgrade"
    refspec = system.requests.base_refspec
    remote, ref = split_refspec(refspec)
    if remote is not None:
        return _upgrade_remote(system, refspec, check=check, preview=preview, lists=lists)
    repo = system.repo()
    tip = repo.resolve(refspec)
    if tip is None:
        raise RetrofitError(f"{verb}: the base ref {refspec} is missing from the repository")
    paths = aptcfg.AptPaths(system.cache)
    paths.ensure()
    if not lists.cache_only:
        aptcfg.update_lists(system.default_root, paths, verb)
    notes: list[str] = []
    timings: dict[str, float] = {}
    with workdir(system) as work:
        t0 = time.monotonic()
        res, notes = engine.plan_upgrade(system, tip, paths, work, verb)
        timings["resolve"] = time.monotonic() - t0
        target = engine.projected(engine.status_of_commit(repo, tip), res)
        changes = engine.diff_versions(engine.current_versions(system), target)
        out = Outcome(system.requests, changes=changes, notes=notes, dry_run=check or preview)
        if not changes and tip == system.base_checksum:
            raise NothingToDo(f"{verb}: no upgrade available", hint="the system is up to date")
        if check or preview:
            return out
        t0 = time.monotonic()
        fetch.fetch([*res.base_items, *res.items], paths.archives, verb)
        timings["download"] = time.monotonic() - t0
        new_base = tip
        if res.base_changes:
            log.info("%s: composing a new base: %d package(s) change", verb, len(res.base_changes))
            composed = engine.compose_base(system, tip, work, paths, verb)
            new_base = composed.checksum
            timings["base"] = sum(composed.timings.values())
    # the new base is a plain commit until the deployment succeeds; then the base
    # ref moves to it (engine.deploy puts the ref back if deploying fails)
    refs: dict[str, str | None] = {refspec: new_base} if new_base != tip else {}
    out = engine.apply(
        system,
        system.requests,
        verb,
        base=new_base,
        lists=ListsMode(cache_only=True),
        refs=refs,
        notes=notes,
        timings=timings,
    )
    out.new_base = new_base
    return out


def _upgrade_remote(
    system: System, refspec: str, *, check: bool, preview: bool, lists: ListsMode
) -> Outcome:
    verb = "upgrade"
    if check:
        new = _pull(system, refspec, verb, metadata_only=True)
        if new == system.base_checksum:
            raise NothingToDo(f"{verb}: no upgrade available ({refspec} is at {new[:12]})")
        note = f"{refspec}: {system.base_checksum[:12]} -> {new[:12]}"
        return Outcome(system.requests, notes=[note], dry_run=True)
    new = _pull(system, refspec, verb)
    if new == system.base_checksum and not preview:
        raise NothingToDo(f"{verb}: no upgrade available ({refspec} is at {new[:12]})")
    out = engine.apply(system, system.requests, verb, base=new, lists=lists, dry_run=preview)
    out.new_base = new
    return out
