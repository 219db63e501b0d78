"""The project's main proof: a live conversion of a real Debian 12 VM that boots into
its OSTree deployment, with the data written before the conversion intact — the same
scenario ``retrofit rehearse --vm`` runs for operators (``retrofit/vm/scenario.py``).

Fresh VM from the cached BIOS lab image → retrofit from the project's .deb → data in
/home, /var/lib, /etc → preflight → ``convert --yes`` on the live / → trial reboot
confirmed by the health unit → booted checks → ``kargs --append quiet`` → install htop
→ rollback → ``retrofit upgrade``
to a newer retrofit from a repository served in the guest (``/usr/bin/retrofit status``
runs from the upgraded /usr) → the two automatic fallbacks (a failing health script, a broken init),
each across real reboots. The report (table and JSON) is printed.

``RETROFIT_VM_KEEP=1`` leaves a failed VM running for inspection.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from retrofit import rehearse
from retrofit.vm import scenario

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]


def test_live_conversion_scenario(lab_image: Path, lab: Any) -> None:
    keep = os.environ.get("RETROFIT_VM_KEEP") == "1"
    report = scenario.rehearse_vm(scenario.build_deb(REPO), image=lab_image, keep=keep)
    print("\n" + rehearse.render(report), flush=True)
    print(json.dumps({k: v for k, v in report.items() if k != "diagnostics"}), flush=True)
    for s in report["steps"]:
        lab.timings[f"scenario: {s['step']}"] = s["seconds"]
    lab.timings["scenario: total"] = report["seconds"]
    failed = [s for s in report["steps"] if not s["ok"]]
    assert report["ok"] and not failed, f"{failed[0]['step']}: {failed[0]['detail']}"
    names = [s["step"] for s in report["steps"]]
    # every step ran: a scenario cut short is a failure even if no step says so
    assert names[-1] == "cleanup --old-system + reboot", names
