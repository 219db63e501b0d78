"""The rehearsal's upgrade step: a package with a bumped version and the flat
repository apt reads it from (real dpkg-deb; apt_pkg parses the index)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import apt_pkg

from retrofit.vm import scenario


def _deb(tmp: Path) -> Path:
    root = tmp / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    tool = root / "usr/bin/probe"
    tool.write_text("#!/bin/sh\necho probe\n")
    tool.chmod(0o4755)  # a setuid bit must survive the repack
    (root / "DEBIAN/control").write_text(
        "Package: probe\nVersion: 1.2-3\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: a probe\n"
    )
    out = tmp / "probe_1.2-3_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(out)], check=True)
    return out


def test_bump_and_index(tmp_path: Path) -> None:
    deb = _deb(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    newer, version = scenario.bump_deb(deb, work)
    assert version == "1.2-3" + scenario.BUMP_SUFFIX
    assert newer.name == f"probe_{version}_all.deb"
    field = subprocess.run(
        ["dpkg-deb", "-f", str(newer), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert field == version
    apt_pkg.init_system()
    assert apt_pkg.version_compare(version, "1.2-3") > 0
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(newer)], capture_output=True, text=True, check=True
    ).stdout
    assert any(ln.startswith("-rwsr-xr-x root/root") for ln in listing.splitlines()), listing

    repo = tmp_path / "repo"
    repo.mkdir()
    newer = newer.rename(repo / newer.name)
    packages, release = scenario.repo_index([newer], repo)
    stanzas = list(apt_pkg.TagFile(str(packages)))
    assert len(stanzas) == 1
    s = stanzas[0]
    data = newer.read_bytes()
    assert (s["Package"], s["Version"]) == ("probe", version)
    assert s["Filename"] == f"./{newer.name}" and int(s["Size"]) == len(data)
    assert s["SHA256"] == hashlib.sha256(data).hexdigest()
    rel = apt_pkg.TagSection(release.read_text())
    digest, size, name = rel["SHA256"].split()
    assert name == "Packages" and int(size) == packages.stat().st_size
    assert digest == hashlib.sha256(packages.read_bytes()).hexdigest()
