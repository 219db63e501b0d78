"""Local .deb files: checked, identified by sha256, and offered to apt's resolver as
a flat repository of their own so they resolve together with the archive."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import apt_pkg

from dpkg_layer import origin
from retrofit.errors import CommandError, RetrofitError
from retrofit.run import run

LOCAL_SOURCE = "retrofit-local.list"


@dataclass(frozen=True)
class LocalDeb:
    path: Path
    sha256: str
    name: str
    version: str
    arch: str
    control: str  # the control stanza as dpkg-deb prints it

    @property
    def request(self) -> origin.LocalPackage:
        return origin.LocalPackage(self.sha256, self.name)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def looks_like_file(arg: str) -> bool:
    """A command-line argument naming a file rather than a package."""
    return "/" in arg or arg.endswith(".deb")


def inspect(path: Path, verb: str) -> LocalDeb:
    if not path.exists():
        raise RetrofitError(f"{verb}: {path}: no such file", hint="give the path of a .deb file")
    if not path.is_file():
        raise RetrofitError(f"{verb}: {path} is not a regular file", hint="give a .deb file")
    try:
        control = run(["dpkg-deb", "--field", str(path)]).stdout
    except CommandError as exc:
        raise RetrofitError(
            f"{verb}: {path} is not a Debian package ({exc.message.split(': ', 1)[-1]})",
            hint="give a .deb file built by dpkg-deb",
        ) from None
    fields = {}
    for line in control.splitlines():
        if line and not line[0].isspace() and ":" in line:
            k, _, v = line.partition(":")
            fields[k.strip()] = v.strip()
    name, version, arch = fields.get("Package"), fields.get("Version"), fields.get("Architecture")
    if not name or not version or not arch or not origin.valid_name(name):
        raise RetrofitError(
            f"{verb}: {path} has no valid Package/Version/Architecture fields",
            hint="check it with dpkg-deb --info",
        )
    return LocalDeb(path.resolve(), sha256_file(path), name, version, arch, control)


def index_stanza(deb: LocalDeb, filename: str) -> str:
    text = deb.control.rstrip("\n")
    return (
        f"{text}\nFilename: ./{filename}\nSize: {deb.path.stat().st_size}\nSHA256: {deb.sha256}\n\n"
    )


def flat_index(debs: list[LocalDeb], repo_dir: Path, lists: Path, parts: Path) -> str:
    """Make ``debs`` visible to apt: a Packages file in ``lists`` under the name apt
    gives a flat ``file:`` repository at ``repo_dir``, and its sources line in
    ``parts``. Returns the Packages file's path (to recognise its versions)."""
    repo_dir.mkdir(parents=True, exist_ok=True)
    body = ""
    for deb in debs:
        filename = f"{deb.sha256}.deb"
        body += index_stanza(deb, filename)
    uri = f"file:{repo_dir}/"
    packages = lists / apt_pkg.uri_to_filename(f"{uri}./Packages")
    packages.write_text(body)
    (parts / LOCAL_SOURCE).write_text(f"deb [trusted=yes] {uri} ./\n")
    return str(packages)


def store(deb: LocalDeb, dest: Path) -> None:
    """Keep a requested local .deb (by sha256) so upgrades can apply it again."""
    if dest.is_file() and sha256_file(dest) == deb.sha256:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(deb.path, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.rename(tmp, dest)
