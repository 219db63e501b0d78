"""Names and paths of a converted host (DESIGN.md, "On-disk layout")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path("ostree/repo")
STATE_DIR = Path("ostree/retrofit")  # journal, staging, records (relative to the sysroot)
JOURNAL = STATE_DIR / "journal.json"


def base_ref(os_id: str, codename: str, arch: str) -> str:
    return f"retrofit/{os_id}/{codename}/{arch}/base"


def layered_ref(os_id: str, codename: str, arch: str) -> str:
    return f"retrofit/{os_id}/{codename}/{arch}/layered"


def stateroot_dir(os_id: str) -> Path:
    return Path("ostree/deploy") / os_id


@dataclass(frozen=True)
class DataMove:
    """A directory of user data moved by rename into the stateroot's var."""

    source: str  # relative to the root, e.g. "home"
    target: str  # relative to the stateroot's var, e.g. "home"
    link: str  # the symlink left at ``source`` (relative to its parent) for the old system


# Order matters: var first (everything else lands inside it).
DATA_MOVES = (
    DataMove("home", "home", "var/home"),
    DataMove("root", "roothome", "var/roothome"),
    DataMove("opt", "opt", "var/opt"),
    DataMove("srv", "srv", "var/srv"),
    DataMove("mnt", "mnt", "var/mnt"),
    DataMove("usr/local", "usrlocal", "../var/usrlocal"),
)

# Top-level symlinks in the commit (ostree conventions).
COMMIT_SYMLINKS = {
    "home": "var/home",
    "root": "var/roothome",
    "opt": "var/opt",
    "srv": "var/srv",
    "mnt": "var/mnt",
    "media": "run/media",
    "ostree": "sysroot/ostree",
}
COMMIT_EMPTY_DIRS = ("boot", "dev", "proc", "run", "sys", "tmp", "var", "sysroot")


@dataclass(frozen=True)
class StateMove:
    """Package state that must match /usr: relocated into /usr, symlinked from /var."""

    var_path: str  # relative to var, e.g. "lib/dpkg"
    usr_path: str  # relative to the root, e.g. "usr/share/dpkg/database"


STATE_MOVES = (
    StateMove("lib/dpkg", "usr/share/dpkg/database"),
    StateMove("cache/debconf", "usr/share/debconf/database"),
    StateMove("lib/ucf", "usr/share/ucf/database"),
)

# Packages the converted system needs.
REQUIRED_PACKAGES = ("ostree", "ostree-boot", "bubblewrap")
