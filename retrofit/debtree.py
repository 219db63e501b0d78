"""Real Debian trees built with mmdebstrap, cached by their inputs.

Used by the test tiers, the benchmarks and the VM box builder. A tree is built into
a temporary directory beside the cache entry and renamed into place only when
mmdebstrap succeeded, so an interrupted build never leaves a half tree in the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retrofit.log import log
from retrofit.run import require_tool, run

CACHE_DIR = Path(os.environ.get("RETROFIT_CACHE", "/var/cache/retrofit"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Bump when the way trees are built changes, so old cache entries are not reused.
BUILDER_VERSION = "1"


@dataclass(frozen=True)
class TreeSpec:
    """Everything that determines a tree's content; its hash is the cache key."""

    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = ()
    mirror: str = DEFAULT_MIRROR
    components: tuple[str, ...] = ("main",)
    # Shell snippets run by mmdebstrap as --customize-hook (they get the tree as $1).
    customize: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = field(default=())

    def key(self) -> str:
        blob = json.dumps(
            {
                "v": BUILDER_VERSION,
                "suite": self.suite,
                "variant": self.variant,
                "packages": sorted(self.packages),
                "mirror": self.mirror,
                "components": list(self.components),
                "customize": list(self.customize),
                "extra": list(self.extra_args),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def argv(self, dest: Path) -> list[str]:
        argv = [
            "mmdebstrap",
            f"--variant={self.variant}",
            "--mode=root",
            "--format=directory",
            f"--components={','.join(self.components)}",
        ]
        if self.packages:
            argv.append(f"--include={','.join(self.packages)}")
        for hook in self.customize:
            argv.append(f"--customize-hook={hook}")
        argv += list(self.extra_args)
        argv += [self.suite, str(dest), self.mirror]
        return argv


def cached_tree(spec: TreeSpec, cache_dir: Path = CACHE_DIR) -> Path:
    """Return the cached tree for ``spec``, building it first if needed."""
    require_tool("mmdebstrap", "build Debian trees", "mmdebstrap")
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / f"tree-{spec.suite}-{spec.key()}"
    lock_path = cache_dir / f".{dest.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / ".retrofit-tree-complete").exists():
            return dest
        tmp = cache_dir / f".{dest.name}.tmp"
        if tmp.exists():
            _rmtree(tmp)
        if dest.exists():
            _rmtree(dest)
        log.info("building Debian %s tree with mmdebstrap (cached as %s)", spec.suite, dest)
        run(spec.argv(tmp), stream=True)
        (tmp / ".retrofit-tree-complete").write_text(json.dumps(spec.__dict__, default=list))
        os.rename(tmp, dest)
    return dest


def copy_tree(src: Path, dest: Path) -> Path:
    """A full, independent copy preserving owners, modes, xattrs and hardlinks."""
    run(["cp", "-a", "--reflink=auto", str(src), str(dest)])
    marker = dest / ".retrofit-tree-complete"
    if marker.exists():
        marker.unlink()
    return dest


def _rmtree(path: Path) -> None:
    # Trees may contain immutable ostree deployment roots.
    run(["chattr", "-R", "-i", str(path)], ok=(0, 1))
    shutil.rmtree(path)


def remove_tree(path: Path) -> None:
    _rmtree(path)


def packages_arg(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(set(names)))
