"""The retrofit Debian package: it builds, lintian finds no errors, and it installs into
a fresh Debian bookworm tree with apt resolving its Depends from the Debian archive.

After a conversion /usr is read-only and versioned, so retrofit itself must be a
normal package in /usr (docs/packaging.md). These tests build it with ``make deb``
exactly as a developer or CI would, then install it with apt into a copy of a cached
mmdebstrap minbase tree and run the installed command there.

Cache: besides the minbase tree itself, apt's package lists and downloaded .debs are
kept under ``$RETROFIT_CACHE/apt-<tree key>/`` and bind-mounted into the copy, so a
cache hit costs one incremental ``apt-get update`` and no package downloads.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from retrofit import debtree
from retrofit.debtree import TreeSpec, cached_tree, copy_tree, remove_tree
from retrofit.run import Result, run, which

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

TREE = TreeSpec(suite="bookworm", variant="minbase")

# What the package must put where (paths as `dpkg-deb -c` prints them).
EXPECTED_FILES = (
    "./usr/bin/retrofit",
    "./usr/lib/python3/dist-packages/retrofit/__init__.py",
    "./usr/lib/python3/dist-packages/retrofit/cli.py",
    "./usr/lib/python3/dist-packages/retrofit/run.py",
    "./usr/lib/python3/dist-packages/convert/__init__.py",
    "./usr/lib/python3/dist-packages/dpkg_layer/__init__.py",
    "./usr/lib/python3/dist-packages/grub/__init__.py",
    "./usr/share/man/man1/retrofit.1.gz",
    "./usr/share/doc/retrofit/copyright",
)
EXPECTED_DEPENDS = (
    "python3",
    "python3-apt",
    "python3-parted",
    "python3-gi",
    "gir1.2-ostree-1.0",
    "ostree",
    "ostree-boot",
    "bubblewrap",
    "python3-sh",
    "python3-yaml",
    "python3-merge3",
)

ALL_EXIT_CODES = tuple(range(256))
# A throwaway tree: no fsync per file (--force-unsafe-io).
APT_INSTALL = (
    "apt-get",
    "install",
    "-y",
    "-q",
    "--no-install-recommends",
    "-o",
    "Dpkg::Options::=--force-unsafe-io",
)


class LintianWarning(UserWarning):
    """A lintian W: tag on the built package (reported, not fatal)."""


@pytest.fixture(scope="module")
def deb() -> Path:
    """Build the package with `make deb` and return the .deb in dist/."""
    if os.geteuid() != 0:
        pytest.skip("building and installing the package needs root")
    for tool in ("make", "git", "apt-get"):
        if which(tool) is None:
            pytest.skip(f"'{tool}' is not installed")
    # A no-op when the build dependencies are already there (CI installs them).
    run([REPO / "tools" / "install-build-deps"], stream=True)
    version = run(
        ["dpkg-parsechangelog", "-l", REPO / "debian" / "changelog", "-S", "Version"]
    ).stdout.strip()
    start = time.monotonic()
    run(["make", "-C", REPO, "deb"], stream=True)
    elapsed = time.monotonic() - start
    path = REPO / "dist" / f"retrofit_{version}_all.deb"
    assert path.is_file(), f"make deb did not produce {path}"
    print(f"make deb: {elapsed:.1f}s, {path.name} is {path.stat().st_size} bytes")
    return path


def test_changelog_version_matches_pyproject() -> None:
    changelog = run(
        ["dpkg-parsechangelog", "-l", REPO / "debian" / "changelog", "-S", "Version"]
    ).stdout.strip()
    match = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert match, "no version in pyproject.toml"
    # Native package: the Debian version is the upstream version.
    assert changelog == match.group(1), "debian/changelog and pyproject.toml disagree"


def test_lintian_finds_no_errors(deb: Path) -> None:
    result = run(["lintian", "--display-info", deb], ok=(0, 1, 2))
    tags = [ln for ln in result.stdout.splitlines() if ln[:3] in ("E: ", "W: ", "I: ")]
    errors = [ln for ln in tags if ln.startswith("E: ")]
    for line in tags:
        if line.startswith("W: "):
            warnings.warn(LintianWarning(line), stacklevel=1)
    assert result.returncode in (0, 1), f"lintian itself failed: {result.stderr}"
    assert errors == [], "lintian errors:\n" + "\n".join(errors)


def test_package_contents(deb: Path) -> None:
    listing = run(["dpkg-deb", "--contents", deb]).stdout
    paths = {line.split()[5] for line in listing.splitlines() if len(line.split()) >= 6}
    missing = [p for p in EXPECTED_FILES if p not in paths]
    assert missing == [], f"missing from {deb.name}: {missing}"
    # Nothing from the source tree that is not the product.
    stray = sorted(p for p in paths if "/tests/" in p or "/debian/" in p or ".pyc" in p)
    assert stray == []

    assert run(["dpkg-deb", "--field", deb, "Architecture"]).stdout.strip() == "all"
    depends = run(["dpkg-deb", "--field", deb, "Depends"]).stdout
    names = {
        alt.split()[0].split(":")[0]
        for dep in depends.split(",")
        for alt in dep.split("|")
        if alt.strip()
    }
    assert sorted(set(EXPECTED_DEPENDS) - names) == []


@pytest.fixture(scope="module")
def installed_root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of a cached minbase bookworm tree with the package installed by apt."""
    for tool in ("mmdebstrap", "bwrap"):
        if which(tool) is None:
            pytest.skip(f"'{tool}' is not installed")
    base = cached_tree(TREE)
    root = tmp_path_factory.mktemp("debroot") / "root"
    copy_tree(base, root)
    try:
        # No services start inside the tree.
        policy = root / "usr" / "sbin" / "policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        shutil.copy2(deb, root / "tmp" / deb.name)

        apt_cache = debtree.CACHE_DIR / f"apt-{TREE.key()}"
        lists, archives = apt_cache / "lists", apt_cache / "archives"
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        (archives / "partial").mkdir(parents=True, exist_ok=True)
        binds = [
            ("--bind", str(lists), "/var/lib/apt/lists"),
            ("--bind", str(archives), "/var/cache/apt/archives"),
        ]
        start = time.monotonic()
        # The apt cache is shared between test runs: one apt at a time.
        with open(apt_cache / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            in_root(root, ["apt-get", "update", "-q"], extra=binds, stream=True)
            in_root(
                root,
                [*APT_INSTALL, f"/tmp/{deb.name}"],
                extra=binds,
                stream=True,
            )
            # Drop cached .debs the archive no longer has, so the cache stays small.
            in_root(root, ["apt-get", "autoclean", "-q"], extra=binds)
        print(f"apt-get install into minbase: {time.monotonic() - start:.1f}s")
        status = in_root(root, ["dpkg-query", "-W", "-f", "${Status}", "retrofit"]).stdout
        assert status == "install ok installed"
        yield root
    finally:
        remove_tree(root)


def in_root(
    root: Path, argv: Sequence[str], *, extra: Sequence[Sequence[str]] = (), **kwargs: Any
) -> Result:
    """Run ``argv`` inside ``root`` with bubblewrap (as root, no user namespace).

    ``extra`` are further bwrap mount options, e.g. ``("--bind", SRC, DEST)``.
    """
    mounts: list[Sequence[str]] = [
        ("--bind", str(root), "/"),
        ("--dev", "/dev"),
        ("--proc", "/proc"),
        ("--ro-bind", "/sys", "/sys"),
        ("--ro-bind", str(Path("/etc/resolv.conf").resolve()), "/etc/resolv.conf"),
        *extra,
    ]
    sandbox = ["bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent"]
    for mount in mounts:
        sandbox += mount
    return run([*sandbox, "--", *argv], **kwargs)


def test_installed_command_help(installed_root: Path) -> None:
    assert (installed_root / "usr" / "bin" / "retrofit").is_file()
    result = in_root(installed_root, ["/usr/bin/retrofit", "--help"])
    assert result.stdout.startswith("usage: retrofit")
    assert "preflight" in result.stdout


def test_installed_command_version(installed_root: Path, deb: Path) -> None:
    version = deb.name.split("_")[1]
    result = in_root(installed_root, ["/usr/bin/retrofit", "--version"])
    assert version in result.stdout + result.stderr


def test_installed_modules_come_from_the_package(installed_root: Path) -> None:
    script = "import retrofit, convert, dpkg_layer, grub; print(retrofit.__file__)"
    result = in_root(installed_root, ["/usr/bin/python3", "-c", script])
    assert result.stdout.strip() == "/usr/lib/python3/dist-packages/retrofit/__init__.py"


def test_installed_preflight_json(installed_root: Path) -> None:
    # A bwrap'd tree is not a supported live system: preflight may fail (exit 1),
    # but it must say so as JSON on stdout.
    result = in_root(
        installed_root, ["/usr/bin/retrofit", "preflight", "--json"], ok=ALL_EXIT_CODES
    )
    assert result.returncode in (0, 1), (
        f"retrofit preflight --json exited {result.returncode}: {result.stderr[-2000:]}"
    )
    try:
        report = json.loads(result.stdout)
    except ValueError as exc:
        raise AssertionError(
            f"preflight --json printed no JSON ({exc}): {result.stdout[:500]!r}"
        ) from None
    assert isinstance(report.get("checks"), list) and report["checks"], report
    for check in report["checks"]:
        assert {"name", "status"} <= set(check), check


def test_package_ships_every_source_file(deb: Path) -> None:
    # Data files next to the modules (read through __file__) must be in the package,
    # which needs them declared as package data in pyproject.toml.
    listing = run(["dpkg-deb", "--contents", deb]).stdout
    shipped = {line.split()[5] for line in listing.splitlines() if len(line.split()) >= 6}
    prefix = "./usr/lib/python3/dist-packages/"
    missing = []
    for top in ("retrofit", "convert", "dpkg_layer", "grub"):
        for path in sorted((REPO / top).rglob("*")):
            rel = path.relative_to(REPO)
            if path.is_dir() or "__pycache__" in rel.parts or path.suffix == ".pyc":
                continue
            if prefix + rel.as_posix() not in shipped:
                missing.append(rel.as_posix())
    assert missing == [], f"source files not in {deb.name} (package data?): {missing}"
