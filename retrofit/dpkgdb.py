"""Read a tree's dpkg database (status file, file lists) without running dpkg."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Package states that mean a half-done dpkg operation.
BROKEN_STATES = {
    "half-installed",
    "half-configured",
    "unpacked",
    "triggers-awaited",
    "triggers-pending",
}


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    status: str  # e.g. "install ok installed"

    @property
    def state(self) -> str:
        return self.status.split()[-1] if self.status else ""

    @property
    def installed(self) -> bool:
        return self.state == "installed"


def parse_stanzas(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, ""
            continue
        if line[0] in " \t":
            if last:
                fields[last] += "\n" + line
            continue
        key, _, value = line.partition(":")
        last = key
        fields[key] = value.strip()
    if fields:
        yield fields


def read_status(admindir: Path) -> list[Package]:
    text = (admindir / "status").read_text(errors="replace")
    pkgs = []
    for st in parse_stanzas(text):
        if "Package" not in st:
            continue
        pkgs.append(
            Package(
                st["Package"],
                st.get("Version", ""),
                st.get("Architecture", ""),
                st.get("Status", ""),
            )
        )
    return pkgs


def installed(admindir: Path) -> dict[str, Package]:
    return {
        p.name: p for p in read_status(admindir) if p.state not in ("not-installed", "config-files")
    }


def native_arch(admindir: Path) -> str | None:
    for p in read_status(admindir):
        if p.name == "dpkg" and p.installed:
            return p.arch
    return None


def owned_paths(admindir: Path) -> Iterator[tuple[str, str]]:
    """(package, path) for every path in every package's file list."""
    info = admindir / "info"
    if not info.is_dir():
        return
    for lst in sorted(info.glob("*.list")):
        pkg = lst.name[: -len(".list")].split(":")[0]
        for line in lst.read_text(errors="surrogateescape").splitlines():
            if line and line != "/.":
                yield pkg, line
