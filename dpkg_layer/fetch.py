"""Downloads into the cache, verified against the hashes of the signed lists."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apt.progress.base
import apt_pkg

from dpkg_layer import localdeb
from dpkg_layer.resolve import Item
from retrofit.errors import RetrofitError
from retrofit.log import Progress, log


class _Progress(apt.progress.base.AcquireProgress):
    def __init__(self, total: int) -> None:
        super().__init__()
        self.bar = Progress("download", total)
        self._seen = 0

    def pulse(self, owner: Any) -> bool:
        done = int(self.current_bytes)
        if done > self._seen:
            self.bar.update(done - self._seen)
            self._seen = done
        return True

    def fail(self, item: Any) -> None:
        log.warning("download: %s: %s", item.shortdesc, item.owner.error_text)


def cached(item: Item, archives: Path) -> Path | None:
    """The item's file if it is already in the cache with the right content."""
    if item.local is not None:
        return item.local
    path = archives / item.filename
    if path.is_file() and path.stat().st_size == item.size:
        if item.sha256 is None or localdeb.sha256_file(path) == item.sha256:
            return path
    return None


def fetch(items: Sequence[Item], archives: Path, verb: str) -> dict[str, Path]:
    """Package name -> .deb file for every item, downloading what is missing."""
    out: dict[str, Path] = {}
    missing = []
    for it in items:
        path = cached(it, archives)
        if path is not None:
            out[it.name] = path
        else:
            missing.append(it)
    if not missing:
        return out
    total = sum(i.size for i in missing)
    log.info("%s: downloading %d package(s)", verb, len(missing))
    progress = _Progress(total)
    fetcher = apt_pkg.Acquire(progress)
    files = []
    for it in missing:
        assert it.uri is not None
        files.append(
            apt_pkg.AcquireFile(
                fetcher,
                uri=it.uri,
                hash=f"SHA256:{it.sha256}" if it.sha256 else "",
                size=it.size,
                descr=it.uri,
                short_descr=it.name,
                destfile=str(archives / it.filename),
            )
        )
    result = fetcher.run()
    progress.bar.finish()
    failed = [f for f in files if f.status != f.STAT_DONE]
    if result != fetcher.RESULT_CONTINUE or failed:
        first = failed[0] if failed else None
        detail = f"{first.desc_uri}: {first.error_text}" if first else "interrupted"
        raise RetrofitError(
            f"{verb}: download failed: {detail}",
            hint="check the network and the sources; retry with --refresh; nothing was changed",
        )
    for it in missing:
        out[it.name] = archives / it.filename
    return out
