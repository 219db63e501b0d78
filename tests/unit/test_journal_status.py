from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from convert.journal import Journal
from convert.plan import make_plan
from retrofit import status
from tests.unit.test_preflight import GOOD

FIXTURES = Path(__file__).parent / "fixtures"


def test_journal_round_trip_and_atomic(tmp_path: Path) -> None:
    plan = make_plan(GOOD)
    j = Journal.create(tmp_path, plan, created_ostree_dir=True)
    j.start("commit")
    j.record("commit", "checksum", "abc")
    j2 = Journal.load(tmp_path)
    assert j2 is not None and j2.plan == plan
    assert j2.status("commit") == "started" and j2.recorded("commit", "checksum") == "abc"
    j2.finish("commit", 1.5)
    assert Journal.load(tmp_path).status("commit") == "done"  # type: ignore[union-attr]
    leftovers = [p.name for p in (tmp_path / "ostree/retrofit").iterdir()]
    assert leftovers == ["journal.json"]


def test_failpoint_kills_with_sigkill() -> None:
    code = "from retrofit import failpoints; failpoints.hit('commit'); print('survived')"
    env = dict(os.environ, RETROFIT_FAILPOINTS="deploy, commit")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL and "survived" not in p.stdout
    env["RETROFIT_FAILPOINTS"] = "deploy"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == 0 and "survived" in p.stdout


def test_status_render_golden() -> None:
    st = json.loads((FIXTURES / "status.json").read_text())
    assert status.render(st) + "\n" == (FIXTURES / "status.txt").read_text()
