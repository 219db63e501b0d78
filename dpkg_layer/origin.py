"""Requests, not results: what a deployment asked for, kept in its origin file.

The origin is a GLib key file (what ``ostree admin deploy --origin-file`` takes):

    [origin]
    refspec=retrofit/debian/bookworm/amd64/layered

    [retrofit]
    version=1
    base-refspec=retrofit/debian/bookworm/amd64/base
    requested-packages=htop jq
    requested-local-packages=<sha256>:mytool
    removed-base-packages=nano

Lists are space-separated (``retrofit.status`` also accepts ``;``). When nothing is
layered the deployment's refspec is the base refspec itself, as rpm-ostree does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from retrofit.errors import RetrofitError, UsageError

ORIGIN_VERSION = 1
GROUP = "retrofit"

# Debian policy 5.6.1 (names), with an optional ":arch" qualifier.
_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def check_names(names: Iterable[str], verb: str) -> None:
    bad = [n for n in names if not valid_name(n)]
    if bad:
        raise UsageError(
            f"{verb}: not a package name: {', '.join(bad)}",
            hint="package names are lower case letters, digits and + - . "
            "(a .deb file is given by its path, e.g. ./tool_1.0_all.deb)",
        )


@dataclass(frozen=True, order=True)
class LocalPackage:
    """A local .deb requested by content: its sha256 and its package name."""

    sha256: str
    name: str

    @property
    def spec(self) -> str:
        return f"{self.sha256}:{self.name}"

    @classmethod
    def parse(cls, spec: str) -> LocalPackage:
        sha, sep, name = spec.partition(":")
        if not sep or not _SHA256.match(sha) or not valid_name(name):
            raise ValueError(f"not a local package request (<sha256>:<name>): {spec!r}")
        return cls(sha, name)


def _sorted_unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(items)))


@dataclass(frozen=True)
class Requests:
    """The layering state of one deployment."""

    base_refspec: str
    packages: tuple[str, ...] = ()
    local_packages: tuple[LocalPackage, ...] = ()
    removed_base_packages: tuple[str, ...] = ()
    # Keys of the [retrofit] group this version does not know, kept on rewrite.
    extra: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "packages", _sorted_unique(self.packages))
        object.__setattr__(self, "local_packages", tuple(sorted(set(self.local_packages))))
        object.__setattr__(
            self, "removed_base_packages", _sorted_unique(self.removed_base_packages)
        )

    @property
    def layered(self) -> bool:
        """True when the deployment differs from its base."""
        return bool(self.packages or self.local_packages or self.removed_base_packages)

    @property
    def local_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.local_packages)

    def all_names(self) -> tuple[str, ...]:
        """Every package name the layer installs on purpose."""
        return tuple(sorted(set(self.packages) | set(self.local_names)))

    def refspec(self, layered_ref: str) -> str:
        return layered_ref if self.layered else self.base_refspec

    def with_packages(self, names: Iterable[str]) -> Requests:
        return replace(self, packages=tuple(self.packages) + tuple(names))

    def with_local(self, pkgs: Iterable[LocalPackage]) -> Requests:
        names = {p.name for p in pkgs}
        kept = tuple(p for p in self.local_packages if p.name not in names)
        return replace(self, local_packages=kept + tuple(pkgs))

    def without(self, names: Iterable[str]) -> Requests:
        drop = set(names)
        return replace(
            self,
            packages=tuple(p for p in self.packages if p not in drop),
            local_packages=tuple(p for p in self.local_packages if p.name not in drop),
        )

    def with_removals(self, names: Iterable[str]) -> Requests:
        return replace(self, removed_base_packages=self.removed_base_packages + tuple(names))

    def reset_removals(self, names: Iterable[str] | None = None) -> Requests:
        if names is None:
            return replace(self, removed_base_packages=())
        drop = set(names)
        return replace(
            self,
            removed_base_packages=tuple(p for p in self.removed_base_packages if p not in drop),
        )

    def rebased(self, base_refspec: str) -> Requests:
        return replace(self, base_refspec=base_refspec)

    def summary(self) -> str:
        parts = []
        if self.packages:
            parts.append("packages: " + " ".join(self.packages))
        if self.local_packages:
            parts.append("local: " + " ".join(self.local_names))
        if self.removed_base_packages:
            parts.append("removed: " + " ".join(self.removed_base_packages))
        return "; ".join(parts) or "nothing layered"


def _split(value: str) -> list[str]:
    return [v for v in value.replace(";", " ").split() if v]


KNOWN_KEYS = {
    "version",
    "base-refspec",
    "requested-packages",
    "requested-local-packages",
    "removed-base-packages",
}


def from_origin(origin: Mapping[str, Mapping[str, str]]) -> Requests:
    """Requests from an origin already parsed into groups (``Deployment.origin``).

    An origin without a ``[retrofit]`` group (a deployment made by plain
    ``ostree admin deploy``) has its refspec as base and nothing layered."""
    refspec = origin.get("origin", {}).get("refspec", "")
    rf = origin.get(GROUP)
    if rf is None:
        if not refspec:
            raise RetrofitError(
                "origin: the deployment has no refspec",
                hint="redeploy it with 'ostree admin deploy REF'",
            )
        return Requests(base_refspec=refspec)
    try:
        version = int(rf.get("version", "1"))
    except ValueError:
        version = 0
    if version != ORIGIN_VERSION:
        raise RetrofitError(
            f"origin: [retrofit] version={rf.get('version')} is not supported "
            f"(this retrofit reads version {ORIGIN_VERSION})",
            hint="use the retrofit that wrote this deployment",
        )
    try:
        local = tuple(LocalPackage.parse(s) for s in _split(rf.get("requested-local-packages", "")))
    except ValueError as exc:
        raise RetrofitError(f"origin: {exc}", hint="the origin file was edited by hand?") from None
    return Requests(
        base_refspec=rf.get("base-refspec") or refspec,
        packages=tuple(_split(rf.get("requested-packages", ""))),
        local_packages=local,
        removed_base_packages=tuple(_split(rf.get("removed-base-packages", ""))),
        extra=tuple(sorted((k, v) for k, v in rf.items() if k not in KNOWN_KEYS)),
    )


def parse_keyfile(text: str) -> dict[str, dict[str, str]]:
    """Groups of a key file, for origins read from disk (GLib's own parser)."""
    import gi

    gi.require_version("GLib", "2.0")
    from gi.repository import GLib

    kf = GLib.KeyFile.new()
    try:
        kf.load_from_data(text, len(text.encode()), GLib.KeyFileFlags.KEEP_COMMENTS)
    except GLib.Error as exc:
        raise RetrofitError(f"origin: not a key file: {exc.message}") from None
    out: dict[str, dict[str, str]] = {}
    groups, _ = kf.get_groups()
    for g in groups:
        keys, _ = kf.get_keys(g)
        out[g] = {k: kf.get_value(g, k) for k in keys}
    return out


def render_keyfile(groups: Mapping[str, Mapping[str, str]]) -> str:
    """The inverse of :func:`parse_keyfile` (values as GLib stores them, escaped)."""
    lines: list[str] = []
    for group, keys in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{k}={v}" for k, v in keys.items()]
        lines.append("")
    return "\n".join(lines)


def parse(text: str) -> Requests:
    return from_origin(parse_keyfile(text))


def render(req: Requests, layered_ref: str) -> str:
    """The origin file for a deployment of ``req``."""
    lines = [
        "[origin]",
        f"refspec={req.refspec(layered_ref)}",
        "",
        f"[{GROUP}]",
        f"version={ORIGIN_VERSION}",
        f"base-refspec={req.base_refspec}",
        "requested-packages=" + " ".join(req.packages),
        "requested-local-packages=" + " ".join(p.spec for p in req.local_packages),
        "removed-base-packages=" + " ".join(req.removed_base_packages),
    ]
    lines += [f"{k}={v}" for k, v in req.extra]
    return "\n".join(lines) + "\n"
