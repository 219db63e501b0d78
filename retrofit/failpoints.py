"""Failpoints: ``RETROFIT_FAILPOINTS=name[,name...]`` kills the process at that point.

Each converter phase has two: ``<phase>`` (after its apply finished, before the
journal records it: the worst moment for a crash) and ``<phase>:before`` (before its
apply starts). The process is killed with SIGKILL, as a power cut would, so no
cleanup code runs.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "RETROFIT_FAILPOINTS"


def enabled(name: str) -> bool:
    names = {n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()}
    return name in names


def hit(name: str) -> None:
    if enabled(name):
        sys.stderr.write(f"retrofit: failpoint {name} hit, killing the process\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
