"""Users and groups while maintainer scripts run.

Scripts create system users with ``useradd --system``, which takes the first free id
in the tree they see. Seen against the base's ``/usr/etc`` only, that id may already
belong to a user the admin created on the running system, and the /etc merge would
then have to refuse the package's user (ids are never changed, files are owned by
number). So the sandbox's account files also list the running system's entries
(from the deployment's /etc): ids stay unique, and a user an earlier layer created
is found again instead of being created with a new id.

Afterwards the entries that exist only on the running system — the admin's own, not
the image's (not in the deployment's ``/usr/etc``) — are taken out again: local
accounts stay local, and the /etc merge carries them as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

FILES = ("passwd", "group", "shadow", "gshadow")


def _name(line: str) -> str | None:
    if not line or line.startswith("#") or line[0] in "+-" or ":" not in line:
        return None
    return line.split(":", 1)[0]


def _names(path: Path) -> set[str]:
    try:
        return {n for n in map(_name, path.read_text(errors="replace").splitlines()) if n}
    except OSError:
        return set()


def replace_file(path: Path, text: str) -> None:
    """Write ``path`` as a new inode with the old one's owner and mode (the old one
    may be a hardlinked repository object)."""
    st = os.lstat(path)
    tmp = path.with_name(f".{path.name}.retrofit-new")
    tmp.write_text(text)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, st.st_mode & 0o7777)
    os.rename(tmp, path)


@dataclass
class Seeded:
    local_only: dict[str, set[str]] = field(default_factory=dict)


def seed(tree_etc: Path, running_etc: Path, image_etc: Path) -> Seeded:
    """Append to ``tree_etc``'s account files the running system's entries it lacks.

    ``running_etc``: the deployment's /etc; ``image_etc``: its /usr/etc."""
    seeded = Seeded()
    for name in FILES:
        tree_f, run_f = tree_etc / name, running_etc / name
        if not tree_f.is_file() or not run_f.is_file():
            continue
        have = _names(tree_f)
        image = _names(image_etc / name)
        extra = []
        for line in run_f.read_text(errors="replace").splitlines():
            n = _name(line)
            if n and n not in have:
                extra.append(line)
                if n not in image:
                    seeded.local_only.setdefault(name, set()).add(n)
        if extra:
            text = tree_f.read_text(errors="replace")
            if text and not text.endswith("\n"):
                text += "\n"
            replace_file(tree_f, text + "\n".join(extra) + "\n")
    return seeded


def unseed(tree_etc: Path, seeded: Seeded) -> None:
    for name, drop in seeded.local_only.items():
        f = tree_etc / name
        if not f.is_file():
            continue
        lines = f.read_text(errors="replace").splitlines()
        kept = [ln for ln in lines if _name(ln) not in drop]
        if kept != lines:
            replace_file(f, "\n".join(kept) + "\n")
