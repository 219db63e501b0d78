"""Failpoints: ``RETROFIT_FAILPOINTS=name[,name...]`` kills the process at that point.

Each converter phase has two: ``<phase>`` (after its apply finished, before the
journal records it: the worst moment for a crash) and ``<phase>:before`` (before its
apply starts). The process is killed with SIGKILL, as a power cut would, so no
cleanup code runs.

``RETROFIT_FAILPOINT_ACTION=pause`` stops there instead: the failpoint's name is
written to ``/run/retrofit-failpoint`` and the process sleeps, so that a test can
cut the power of the whole machine at that moment (the VM tier kills QEMU).
"""

from __future__ import annotations

import os
import signal
import sys
import time

ENV = "RETROFIT_FAILPOINTS"
ACTION_ENV = "RETROFIT_FAILPOINT_ACTION"
PAUSE_MARKER = "/run/retrofit-failpoint"


def enabled(name: str) -> bool:
    names = {n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()}
    return name in names


def hit(name: str) -> None:
    if enabled(name) and os.environ.get(ACTION_ENV) == "pause":
        sys.stderr.write(f"retrofit: failpoint {name} hit, pausing for a power cut\n")
        sys.stderr.flush()
        with open(PAUSE_MARKER, "w") as f:
            f.write(name + "\n")
        while True:
            time.sleep(3600)
    if enabled(name):
        sys.stderr.write(f"retrofit: failpoint {name} hit, killing the process\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
