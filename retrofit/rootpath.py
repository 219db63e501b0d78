"""Resolve paths inside a tree that is not the running root.

Absolute symlinks inside the tree (``/var/lib/dpkg -> /usr/share/dpkg/database``)
point into the tree, not into the host: :func:`resolve` follows them that way.
"""

from __future__ import annotations

import os
from pathlib import Path


def resolve(root: Path, rel: str, max_links: int = 40) -> Path:
    """The real path of ``root/rel`` with every symlink resolved inside ``root``."""
    parts = [p for p in rel.strip("/").split("/") if p]
    cur = Path(root)
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            cur = cur.parent if cur != root else cur
            continue
        nxt = cur / part
        if nxt.is_symlink():
            links += 1
            if links > max_links:
                raise OSError(f"too many symlinks resolving {rel} in {root}")
            target = os.readlink(nxt)
            tparts = [p for p in target.split("/") if p and p != "."]
            if target.startswith("/"):
                cur = Path(root)
            parts = tparts + parts
            continue
        cur = nxt
    return cur
