"""``retrofit db diff [FROM TO]``: packages added, removed and changed between two
deployments (or commits), read from the dpkg database each commit carries."""

from __future__ import annotations

from dataclasses import dataclass

from dpkg_layer import engine
from dpkg_layer.resolve import Change
from dpkg_layer.system import System
from retrofit import ostree as ot
from retrofit.errors import RetrofitError, UsageError


@dataclass(frozen=True)
class Side:
    spec: str
    checksum: str
    label: str


def _resolve(system: System, spec: str) -> Side:
    deps = list(ot.Sysroot(system.sysroot).deployments())
    named = {
        "default": deps[0] if deps else None,
        "booted": next((d for d in deps if d.booted), None),
        "rollback": deps[1] if len(deps) > 1 else None,
    }
    if spec in named:
        d = named[spec]
        if d is None:
            raise RetrofitError(f"db diff: there is no {spec} deployment")
        return Side(spec, d.checksum, f"{spec} deployment {d.name}")
    if spec.isdigit():
        i = int(spec)
        if i >= len(deps):
            raise RetrofitError(
                f"db diff: no deployment {i} (there are {len(deps)})",
                hint="retrofit status lists them; 0 is the default",
            )
        return Side(spec, deps[i].checksum, f"deployment {i} ({deps[i].name})")
    matches = [d for d in deps if d.checksum.startswith(spec) and len(spec) >= 6]
    if len({d.checksum for d in matches}) == 1:
        return Side(spec, matches[0].checksum, f"deployment {matches[0].name}")
    rev = system.repo().resolve(spec)
    if rev is None:
        raise RetrofitError(
            f"db diff: {spec!r} is neither a deployment nor a ref or commit",
            hint="use a deployment index (0, 1), default/booted/rollback, a ref or a checksum",
        )
    return Side(spec, rev, f"{spec} ({rev[:12]})")


def default_pair(system: System) -> tuple[str, str]:
    """Booted -> pending when a pending deployment exists; otherwise rollback -> default."""
    deps = list(ot.Sysroot(system.sysroot).deployments())
    if len(deps) < 2:
        raise UsageError(
            "db diff: there is only one deployment",
            hint="give two refs or commits: retrofit db diff FROM TO",
        )
    booted = next((d for d in deps if d.booted), None)
    if booted is not None and booted.index != 0:
        return str(booted.index), "0"
    return "1", "0"


def diff(system: System, frm: str | None, to: str | None) -> tuple[Side, Side, list[Change]]:
    if (frm is None) != (to is None):
        raise UsageError("db diff: give both FROM and TO, or neither")
    if frm is None or to is None:
        frm, to = default_pair(system)
    a, b = _resolve(system, frm), _resolve(system, to)
    repo = system.repo()
    changes = engine.diff_versions(
        engine.status_of_commit(repo, a.checksum), engine.status_of_commit(repo, b.checksum)
    )
    return a, b, changes


def render(a: Side, b: Side, changes: list[Change]) -> str:
    lines = [f"ostree diff commit from: {a.label}", f"ostree diff commit to:   {b.label}"]
    groups = (
        ("Added:", [c for c in changes if c.old is None]),
        ("Removed:", [c for c in changes if c.new is None]),
        ("Changed:", [c for c in changes if c.old is not None and c.new is not None]),
    )
    for title, items in groups:
        if items:
            lines.append(title)
            lines += [f"  {c.render()}" for c in items]
    if not changes:
        lines.append("No package changes.")
    return "\n".join(lines)
