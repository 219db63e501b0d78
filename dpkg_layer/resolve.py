"""Dependency resolution with apt's own solver (python-apt), against the dpkg
database of the commit being layered.

The layer may add packages and purge the base packages the admin asked to remove;
it never changes another base package. A request that would (a conflict with a base
package, a newer version of a base library) is refused with the package named.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import apt_pkg

from dpkg_layer import aptcfg, localdeb
from dpkg_layer.origin import Requests
from retrofit.errors import RetrofitError

NEGATIVE = ("Conflicts", "Breaks")
_INSTALLED: int = getattr(apt_pkg, "CURSTATE_INSTALLED", 6)
POSITIVE = ("PreDepends", "Depends")


@dataclass(frozen=True)
class Item:
    """One package to install: from the archive (``uri``) or a local file."""

    name: str
    arch: str
    version: str
    size: int
    filename: str  # file name in the download cache
    uri: str | None = None
    sha256: str | None = None
    local: Path | None = None
    batch: int = 0

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class Change:
    name: str
    old: str | None
    new: str | None

    def render(self) -> str:
        if self.old is None:
            return f"+ {self.name} {self.new}"
        if self.new is None:
            return f"- {self.name} {self.old}"
        return f"~ {self.name} {self.old} -> {self.new}"


@dataclass
class Resolution:
    items: list[Item] = field(default_factory=list)
    removals: list[Change] = field(default_factory=list)
    satisfied: list[str] = field(default_factory=list)  # requests the base already meets
    moot_removals: list[str] = field(default_factory=list)  # not in this base
    base_changes: list[Change] = field(default_factory=list)  # upgrade only
    base_items: list[Item] = field(default_factory=list)  # their downloads

    @property
    def batches(self) -> list[list[Item]]:
        out: dict[int, list[Item]] = {}
        for it in self.items:
            out.setdefault(it.batch, []).append(it)
        return [out[k] for k in sorted(out)]

    def changes(self) -> list[Change]:
        return sorted(
            [
                *self.base_changes,
                *self.removals,
                *(Change(i.name, None, i.version) for i in self.items),
            ],
            key=lambda c: c.name,
        )


def _quote(text: str, bad: str) -> str:
    """apt's QuoteString: what apt-get expects in Dir::Cache::Archives file names."""
    return "".join(
        f"%{ord(c):02x}" if c in bad or c == "%" or ord(c) <= 0x20 or ord(c) >= 0x7F else c
        for c in text
    )


def archive_name(name: str, version: str, arch: str, pool_filename: str) -> str:
    """The file name apt-get gives a downloaded package (so that an offline
    ``apt-get --no-download`` in the sandbox finds what we fetched)."""
    ext = pool_filename.rsplit(".", 1)[-1] if "." in pool_filename else "deb"
    return f"{_quote(name, '_:')}_{_quote(version, '_:')}_{_quote(arch, '_:.')}.{ext}"


class Universe:
    """apt_pkg's cache over one tree's dpkg database, plus local .deb files."""

    def __init__(
        self,
        *,
        work: Path,
        etc_apt: Path,
        status: Path,
        paths: aptcfg.AptPaths,
        arch: str,
        foreign_archs: tuple[str, ...] = (),
        local_debs: Sequence[localdeb.LocalDeb] = (),
    ) -> None:
        self.local_by_name = {d.name: d for d in local_debs}
        self.local_index: str | None = None
        lists = paths.lists
        cache: Path | None = paths.apt_cache
        parts = etc_apt / "sources.list.d"
        if local_debs:
            # a private lists directory (links to the cached lists + the local index)
            # and sources.list.d (the deployment's + the local source); no binary
            # cache, whose validity is keyed on paths
            lists = work / "apt-lists"
            parts = work / "apt-sources"
            for d in (lists, parts):
                d.mkdir(parents=True, exist_ok=True)
            for f in paths.lists.iterdir():
                if f.is_file():
                    os.symlink(f, lists / f.name)
            if (etc_apt / "sources.list.d").is_dir():
                for f in (etc_apt / "sources.list.d").iterdir():
                    os.symlink(f, parts / f.name)
            cache = None
        state = work / "apt-state"
        (state / "log").mkdir(parents=True, exist_ok=True)
        aptcfg.configure(
            etc_apt=etc_apt,
            status=status,
            lists=lists,
            state=state,
            cache=cache,
            archives=paths.archives,
            arch=arch,
            foreign_archs=foreign_archs,
        )
        apt_pkg.config.set("Dir::Etc::sourceparts", f"{parts}/")
        if local_debs:
            self.local_index = localdeb.flat_index(
                list(local_debs), work / "local-repo", lists, parts
            )
        self.cache = aptcfg.open_cache()
        self.depcache = apt_pkg.DepCache(self.cache)
        self.records = apt_pkg.PackageRecords(self.cache)
        self.sources = apt_pkg.SourceList()
        self.sources.read_main_list()
        self.have_lists = any(
            not pf.not_source and pf.filename != self.local_index
            for pf in self.cache.file_list  # type: ignore[attr-defined]
        )

    # -- lookups ------------------------------------------------------------------
    def cand(self, pkg: Any) -> Any:
        """The version the depcache would install (None if none)."""
        return self.depcache.get_candidate_ver(pkg)

    def find(self, name: str) -> Any | None:
        try:
            return self.cache[name]
        except KeyError:
            return None

    def installed(self, pkg: Any) -> bool:
        return pkg.current_ver is not None and pkg.current_state == _INSTALLED

    def installed_version(self, name: str) -> str | None:
        pkg = self.find(name)
        return pkg.current_ver.ver_str if pkg is not None and self.installed(pkg) else None

    def local_version(self, pkg: Any) -> Any | None:
        for ver in pkg.version_list:
            for pf, _i in ver.file_list:
                if pf.filename == self.local_index:
                    return ver
        return None

    def item(self, pkg: Any, ver: Any) -> Item:
        local = self.local_by_name.get(pkg.name)
        if (
            local is not None
            and self.local_version(pkg) is not None
            and local.version == ver.ver_str
        ):
            return Item(pkg.name, ver.arch, ver.ver_str, ver.size, local.path.name,
                        sha256=local.sha256, local=local.path)  # fmt: skip
        for pf, idx in ver.file_list:
            if pf.not_source or pf.filename == self.local_index:
                continue
            self.records.lookup((pf, idx))
            filename = self.records.filename
            hs = self.records.hashes.find("SHA256")
            index = self.sources.find_index(pf)
            if index is None:
                continue
            return Item(pkg.name, ver.arch, ver.ver_str, ver.size,
                        archive_name(pkg.name, ver.ver_str, ver.arch, filename),
                        uri=index.archive_uri(filename),
                        sha256=hs.hashvalue if hs else None)  # fmt: skip
        raise RetrofitError(
            f"resolve: {pkg.name} {ver.ver_str} cannot be downloaded from any source",
            hint="refresh the package lists (retrofit install --refresh ...)",
        )

    # -- explanations -------------------------------------------------------------
    def _satisfied(self, group: Sequence[Any]) -> bool:
        dc = self.depcache
        for dep in group:
            for tv in dep.all_targets():
                tp = tv.parent_pkg
                if dc.marked_install(tp) or dc.marked_upgrade(tp) or dc.marked_downgrade(tp):
                    if self.cand(tp).id == tv.id:
                        return True
                elif tp.current_ver is not None and not dc.marked_delete(tp):
                    if tp.current_ver.id == tv.id:
                        return True
        return False

    @staticmethod
    def _dep_text(group: Sequence[Any]) -> str:
        alts = []
        for d in group:
            s = d.target_pkg.name
            if d.target_ver:
                s += f" ({d.comp_type} {d.target_ver})"
            alts.append(s)
        return " | ".join(alts)

    def why_broken(self, pkg: Any) -> str:
        ver = self.cand(pkg)
        if ver is None:
            return f"{pkg.name} has no installable version"
        for kind in POSITIVE:
            for group in ver.depends_list.get(kind, []):
                if not self._satisfied(group):
                    return (
                        f"{pkg.name} depends on {self._dep_text(group)}, which cannot be installed"
                    )
        for kind in NEGATIVE:
            for group in ver.depends_list.get(kind, []):
                for dep in group:
                    for tv in dep.all_targets():
                        tp = tv.parent_pkg
                        if tp.current_ver is not None and tp.current_ver.id == tv.id:
                            return f"{pkg.name} {kind.lower()} {tp.name} {tv.ver_str}"
        return f"{pkg.name} cannot be installed"

    def needed_by(self, pkg: Any, candidates: Iterable[Any]) -> str | None:
        """Which of ``candidates`` (being installed) depends on ``pkg``."""
        for cand in candidates:
            ver = self.cand(cand)
            for kind in POSITIVE:
                for group in ver.depends_list.get(kind, []):
                    for dep in group:
                        if any(tv.parent_pkg.id == pkg.id for tv in dep.all_targets()):
                            return str(cand.name)
        return None

    def culprit(self, removed: Any, candidates: Iterable[Any]) -> str | None:
        """Which package being installed forces ``removed`` out."""
        for pkg in candidates:
            ver = self.cand(pkg)
            for kind in NEGATIVE:
                for group in ver.depends_list.get(kind, []):
                    for dep in group:
                        if any(tv.parent_pkg.id == removed.id for tv in dep.all_targets()):
                            return f"{pkg.name} {kind.lower()} with base package {removed.name}"
            cur = removed.current_ver
            for kind in NEGATIVE:
                for group in cur.depends_list.get(kind, []) if cur else []:
                    for dep in group:
                        if any(tv.parent_pkg.id == pkg.id for tv in dep.all_targets()):
                            return f"{pkg.name} conflicts with base package {removed.name}"
        return None


def _lookup(u: Universe, name: str, verb: str, unknown: list[str], notes: list[str]) -> Any | None:
    pkg = u.find(name)
    if pkg is None or (not pkg.has_versions and not pkg.has_provides):
        unknown.append(name)
        return None
    if pkg.has_versions:
        return pkg
    providers = sorted({v.parent_pkg.name for _n, _pv, v in pkg.provides_list})
    installed = [p for p in providers if u.installed_version(p)]
    if installed:
        notes.append(f"{name} is a virtual package provided by {installed[0]} in the base")
        return u.find(installed[0])
    if len(providers) == 1:
        notes.append(f"{name} is a virtual package: installing {providers[0]}")
        return u.find(providers[0])
    raise RetrofitError(
        f"{verb}: {name} is a virtual package provided by {', '.join(providers)}",
        hint="request one of them by name",
    )


def resolve(
    u: Universe,
    req: Requests,
    verb: str,
    *,
    upgrade_base: bool = False,
    notes: list[str] | None = None,
) -> Resolution:
    """What to purge and install so the tree has ``req``'s packages.

    ``upgrade_base``: first mark a dist-upgrade of the base (``retrofit upgrade
    --preview``); base changes are then expected and listed."""
    notes = notes if notes is not None else []
    dc = u.depcache
    res = Resolution()
    unknown: list[str] = []
    if upgrade_base:
        try:
            dc.upgrade(True)
        except SystemError as exc:
            raise RetrofitError(f"{verb}: apt cannot compute the upgrade: {exc}") from None
    removing = set()
    for name in req.removed_base_packages:
        pkg = u.find(name)
        if pkg is None or not u.installed(pkg):
            res.moot_removals.append(name)
            continue
        if pkg.essential:
            raise RetrofitError(
                f"{verb}: {name} is an essential package and cannot be removed",
                hint=f"retrofit override reset {name}",
            )
        removing.add(pkg.id)
        res.removals.append(Change(name, pkg.current_ver.ver_str, None))
        dc.mark_delete(pkg, True)
    wanted = []
    for deb in u.local_by_name.values():
        pkg = u.find(deb.name)
        ver = u.local_version(pkg) if pkg is not None else None
        if pkg is None or ver is None:
            raise RetrofitError(f"{verb}: cannot read {deb.path} as a package index entry")
        if u.installed(pkg) and pkg.id not in removing:
            if pkg.current_ver.ver_str == deb.version:
                res.satisfied.append(deb.name)
                continue
            raise RetrofitError(
                f"{verb}: {deb.name} is a base package ({pkg.current_ver.ver_str}); "
                f"the file would replace it with {deb.version}",
                hint=f"remove the base one first: retrofit override remove {deb.name}, "
                "then install the file",
            )
        dc.set_candidate_ver(pkg, ver)
        wanted.append(pkg)
    for name in req.packages:
        pkg = _lookup(u, name, verb, unknown, notes)
        if pkg is None:
            continue
        if u.installed(pkg) and pkg.id not in removing:
            res.satisfied.append(name)
            continue
        wanted.append(pkg)
    if unknown:
        hint = "check the names; 'apt-cache policy NAME' in the deployment shows its sources' offer"
        if not u.have_lists:
            hint = "no package lists yet: run with --refresh (needs the network)"
        raise RetrofitError(
            f"{verb}: unknown package{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
            hint=hint,
        )
    for pkg in wanted:
        dc.mark_install(pkg, False, True)
    for pkg in wanted:
        dc.mark_install(pkg, True, True)
    if dc.broken_count:
        fixer = apt_pkg.ProblemResolver(dc)
        for pkg in wanted:
            fixer.protect(pkg)
        for pkg in u.cache.packages:
            if pkg.id in removing:
                fixer.protect(pkg)
        try:
            fixer.resolve(True)
        except SystemError:
            pass
    for change in res.removals:
        pkg = u.find(change.name)
        if pkg is not None and not dc.marked_delete(pkg):
            needs = u.needed_by(pkg, [p for p in u.cache.packages if dc.marked_install(p)])
            raise RetrofitError(
                f"{verb}: {change.name} cannot be removed: "
                + (f"layered package {needs} needs it" if needs else "something needs it"),
                hint=f"retrofit uninstall {needs}" if needs else "keep it",
            )
    if dc.broken_count:
        broken = [p for p in u.cache.packages if dc.is_inst_broken(p)]
        if removing and all(u.installed(p) for p in broken):
            _refuse_removal(verb, res, broken)
        why = "; ".join(u.why_broken(p) for p in broken[:3]) or "unmet dependencies"
        raise RetrofitError(f"{verb}: cannot resolve: {why}", hint="nothing was changed")
    also_removed = []
    for pkg in u.cache.packages:
        if u.installed(pkg):
            if dc.marked_delete(pkg) and pkg.id not in removing:
                if upgrade_base:
                    res.base_changes.append(Change(pkg.name, pkg.current_ver.ver_str, None))
                else:
                    also_removed.append(pkg)
                continue
            if dc.marked_upgrade(pkg) or dc.marked_downgrade(pkg):
                new = u.cand(pkg).ver_str
                if upgrade_base:
                    res.base_changes.append(Change(pkg.name, pkg.current_ver.ver_str, new))
                    res.base_items.append(u.item(pkg, u.cand(pkg)))
                    continue
                raise RetrofitError(
                    f"{verb}: the request needs {pkg.name} {new}, but the base has "
                    f"{pkg.current_ver.ver_str} (layering never changes base packages)",
                    hint="upgrade the base first: retrofit upgrade",
                )
        elif dc.marked_install(pkg):
            ver = u.cand(pkg)
            res.items.append(u.item(pkg, ver))
    if also_removed:
        for pkg in also_removed:
            culprit = u.culprit(pkg, wanted)
            if culprit:
                raise RetrofitError(
                    f"{verb}: {culprit}",
                    hint=f"to replace it, remove it from the layer first: "
                    f"retrofit override remove {pkg.name}",
                )
        if removing:
            _refuse_removal(verb, res, also_removed)
        names = sorted(p.name for p in also_removed)
        raise RetrofitError(f"{verb}: the request would remove base packages: {', '.join(names)}",
                            hint="layering never removes base packages by itself")  # fmt: skip
    res.items = _batches(u, res.items)
    return res


def _refuse_removal(verb: str, res: Resolution, dependents: Sequence[Any]) -> None:
    names = sorted(p.name for p in dependents)
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    gone = " ".join(c.name for c in res.removals)
    raise RetrofitError(
        f"{verb}: removing {gone} would break base packages that need it: {shown}",
        hint=f"remove them too (retrofit override remove {gone} {' '.join(names[:8])}) or keep it",
    )


def _batches(u: Universe, items: list[Item]) -> list[Item]:
    """Order installs into dpkg runs: a package whose Pre-Depends is being installed
    too goes in a later run than it (dpkg -i unpacks everything before configuring);
    plain Depends stay in the same run."""
    names = {i.name for i in items}
    edges: dict[str, tuple[set[str], set[str]]] = {}
    for it in items:
        pkg = u.find(it.name)
        ver = u.cand(pkg)
        pre: set[str] = set()
        dep: set[str] = set()
        for kind, into in (("PreDepends", pre), ("Depends", dep)):
            for group in ver.depends_list.get(kind, []):
                targets = set()
                met = False
                for d in group:
                    for tv in d.all_targets():
                        tp = tv.parent_pkg
                        if tp.name in names:
                            targets.add(tp.name)
                        elif tp.current_ver is not None and tp.current_ver.id == tv.id:
                            met = True
                if not met:
                    into |= targets - {it.name}
        edges[it.name] = (pre, dep)
    batch = dict.fromkeys(names, 0)
    for _ in range(len(names) + 1):
        changed = False
        for n, (pre, dep) in edges.items():
            want = max([batch[p] + 1 for p in pre] + [batch[d] for d in dep] + [0])
            if want > batch[n]:
                batch[n] = want
                changed = True
        if not changed:
            break
    else:  # a Pre-Depends cycle: let dpkg sort it out in one run
        batch = dict.fromkeys(names, 0)
    return sorted(
        (replace(i, batch=batch[i.name]) for i in items),
        key=lambda i: (i.batch, i.name),
    )
