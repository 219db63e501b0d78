"""Logging and progress. stdout is data; everything here goes to stderr."""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("retrofit")


def setup(debug: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("retrofit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    """Progress of long work: a bar redrawn in place on a terminal, else plain lines.

    Plain mode prints at most one line every ``interval`` seconds so CI logs stay
    readable.
    """

    def __init__(self, label: str, total: int, unit: str = "B", interval: float = 5.0) -> None:
        self.label = label
        self.total = max(total, 1)
        self.unit = unit
        self.done = 0
        self.tty = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        self.interval = interval
        self._last = 0.0
        self._start = time.monotonic()

    def _fmt(self, n: int) -> str:
        return human_size(n) if self.unit == "B" else f"{n} {self.unit}"

    def update(self, advance: int) -> None:
        self.done += advance
        now = time.monotonic()
        if self.tty:
            if now - self._last < 0.1:
                return
            frac = min(self.done / self.total, 1.0)
            width = 30
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            sys.stderr.write(
                f"\r{self.label}: [{bar}] {frac * 100:5.1f}% "
                f"{self._fmt(self.done)}/{self._fmt(self.total)}"
            )
            sys.stderr.flush()
        elif now - self._last >= self.interval:
            pct = min(self.done / self.total, 1.0) * 100
            log.info(
                "%s: %.0f%% (%s of %s)",
                self.label,
                pct,
                self._fmt(self.done),
                self._fmt(self.total),
            )
        else:
            return
        self._last = now

    def finish(self) -> float:
        elapsed = time.monotonic() - self._start
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        log.info("%s: done, %s in %.1fs", self.label, self._fmt(self.done), elapsed)
        return elapsed
