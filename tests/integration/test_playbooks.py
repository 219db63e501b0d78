"""The Ansible playbooks in playbooks/: lint, syntax, the decision filters, and a real
run of the rollout's first play against this machine with the real retrofit.

- ``ansible-lint --offline`` (default rules) and ``ansible-playbook --syntax-check``
  on every playbook.
- The filters the playbooks decide with (playbooks/filter_plugins/retrofit.py), on
  status documents made by retrofit's own code (``retrofit.status.collect`` of a
  directory, ``retrofit.health.record``, ``grub.trial``'s keys).
- convert.yml against two hosts over the local connection: this machine (which
  preflight refuses: a container without a kernel) and a small Debian tree that
  passes preflight (``--sysroot``): the rollout stops before any change, naming
  this host and exactly the blocking checks ``retrofit preflight --json`` reports,
  and the convert play never starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
PLAYBOOK_FILES = ("convert.yml", "preflight.yml", "layer.yml", "upgrade.yml", "rollback.yml")
TIMEOUT = 300


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install {package}; tools/bootstrap does)")
    return path


def _ansible_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(PLAYBOOKS / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )
    env.update(extra)
    return env


def _filters() -> ModuleType:
    path = PLAYBOOKS / "filter_plugins" / "retrofit.py"
    spec = importlib.util.spec_from_file_location("retrofit_playbook_filters", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


F = _filters()


# -- lint and syntax ----------------------------------------------------------------


def test_ansible_lint_clean() -> None:
    lint = _need("ansible-lint", "ansible-lint")
    r = subprocess.run(
        [lint, "--offline", "--nocolor", "-p", "playbooks/"],
        cwd=REPO,
        env=_ansible_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 0, f"ansible-lint found problems:\n{r.stdout}\n{r.stderr}"


@pytest.mark.parametrize("playbook", PLAYBOOK_FILES)
def test_syntax_check(playbook: str) -> None:
    ap = _need("ansible-playbook", "ansible")
    r = subprocess.run(
        [ap, "--syntax-check", "-i", "localhost,", str(PLAYBOOKS / playbook)],
        env=_ansible_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode == 0, f"{playbook}: syntax check failed:\n{r.stdout}\n{r.stderr}"


def test_filters_are_registered() -> None:
    names = set(F.FilterModule().filters())
    used = set()
    for p in PLAYBOOKS.rglob("*.yml"):
        text = p.read_text()
        used |= {n for n in names if n in text}
    missing = {
        "retrofit_convert_action",
        "retrofit_preflight_problems",
        "retrofit_settled",
        "retrofit_verify",
        "retrofit_return_plan",
        "retrofit_rollback_request",
    } - used
    assert not missing, f"filters no playbook uses: {missing}"


# -- the decision filters, on documents made by retrofit's code ---------------------


def _status(tmp: Path, deployments: list[tuple[str, int, bool]], **kw: Any) -> dict[str, Any]:
    """A status document: retrofit.status.collect() of an empty sysroot (the real
    schema), with deployments (checksum, serial, booted), and a trial and a health
    record written the way retrofit writes them."""
    from grub import trial as grub_trial
    from retrofit import atomic, health, status

    root = tmp / f"sysroot-{len(list(tmp.iterdir()))}"
    root.mkdir()
    if "trial" in kw:
        t = kw["trial"]
        missing = set(t) - set(status.TRIAL_KEYS)
        assert not missing, f"not trial keys: {missing}"
        atomic.write_json(root / grub_trial.TRIAL, {"apiVersion": 1, **t})
    if "health" in kw:
        ok, booted_checksum, finished = kw["health"]
        checks = [health.Check("system", True, "system is running")]
        if not ok:
            checks.append(health.Check("script 50-fail", False, "exit 1: broken on purpose"))
        rec = health.record(root, checks, None)
        rec.update(booted=booted_checksum, finished=finished)
        atomic.write_json(root / health.RECORD, rec)
    if "conversion" in kw:
        from retrofit import layout

        atomic.write_json(root / layout.JOURNAL, {"state": kw["conversion"], "phases": {}})
    st = status.collect(root)
    st["deployments"] = [
        {
            "index": i,
            "checksum": c,
            "serial": s,
            "booted": b,
            "default": i == 0,
            "requested_packages": kw.get("requested", []) if i == 0 else [],
            "requested_local_packages": [],
        }
        for i, (c, s, b) in enumerate(deployments)
    ]
    st["booted"] = next((c for c, _s, b in deployments if b), None)
    return st


def _trial(state: str, checksum: str, reason: str = "") -> dict[str, Any]:
    return {"state": state, "kind": "convert", "checksum": checksum, "serial": 0, "reason": reason}


def test_convert_action(tmp_path: Path) -> None:
    assert F.convert_action(_status(tmp_path, []))["action"] == "preflight"
    done = _status(tmp_path, [("aa", 0, True)], conversion="complete", trial=_trial("good", "aa"))
    assert F.convert_action(done)["action"] == "done"
    half = _status(tmp_path, [], conversion="in-progress")
    assert F.convert_action(half)["action"] == "resume"
    coming = _status(
        tmp_path, [("aa", 0, False)], conversion="complete", trial=_trial("pending", "aa")
    )
    assert F.convert_action(coming)["action"] == "reboot"
    back = _status(
        tmp_path,
        [("aa", 0, False)],
        conversion="complete",
        trial=_trial("failed", "aa", "health check failed on the trial boot: x"),
    )
    act = F.convert_action(back)
    assert act["action"] == "blocked"
    assert "health check failed on the trial boot: x" in act["reason"]
    assert "retrofit convert --revert" in act["reason"]
    reverting = _status(tmp_path, [], conversion="reverting")
    assert F.convert_action(reverting)["action"] == "blocked"


def test_settled_and_verify(tmp_path: Path) -> None:
    since = 1000.0
    # the trial boot is running, no verdict yet
    pending = _status(tmp_path, [("aa", 0, True)], trial=_trial("pending", "aa"))
    assert not F.settled(pending, since)
    # a health record from before the reboot does not count
    old = _status(
        tmp_path, [("aa", 0, True)], trial=_trial("good", "aa"), health=(True, "aa", since - 1)
    )
    assert not F.settled(old, since)
    good = _status(
        tmp_path, [("aa", 0, True)], trial=_trial("good", "aa"), health=(True, "aa", since + 5)
    )
    assert F.settled(good, since)
    assert F.verify(good, "aa.0") == []
    assert F.verify(good, "bb.0") == [
        "booted aa.0, expected bb.0",
        "the last trial boot was of aa.0, not bb.0",
    ]
    # failed on the trial deployment, which still runs: it is about to fall back
    falling = _status(
        tmp_path,
        [("aa", 0, True)],
        trial=_trial("failed", "aa", "health check failed"),
        health=(False, "aa", since + 5),
    )
    assert not F.settled(falling, since)
    # back on the old system after the failed trial
    fell = _status(
        tmp_path,
        [("aa", 0, False)],
        conversion="complete",
        trial=_trial("failed", "aa", "health check failed on the trial boot: script 50-fail"),
        health=(False, None, since + 90),
    )
    assert F.settled(fell, since)
    problems = F.verify(fell, "aa.0")
    assert problems[0] == "not booted into a deployment (expected aa.0)"
    assert any("trial boot failed: health check failed on the trial boot" in p for p in problems)
    assert any("script 50-fail: exit 1: broken on purpose" in p for p in problems)


def test_return_plan(tmp_path: Path) -> None:
    fell = _status(tmp_path, [("aa", 0, False)], conversion="complete")
    assert F.return_plan(fell, "")["action"] == "revert"
    on_new = _status(tmp_path, [("aa", 0, True)], conversion="complete")
    assert F.return_plan(on_new, "")["action"] == "reboot"
    clean = _status(tmp_path, [])
    assert F.return_plan(clean, "")["action"] == "none"
    # day two: new deployment bb booted, aa the previous one
    booted_new = _status(tmp_path, [("bb", 0, True), ("aa", 0, False)])
    assert F.return_plan(booted_new, "aa.0")["action"] == "rollback-reboot"
    fell_back = _status(tmp_path, [("aa", 0, True), ("bb", 0, False)])
    assert F.return_plan(fell_back, "aa.0")["action"] == "none"
    not_reordered = _status(tmp_path, [("bb", 0, False), ("aa", 0, True)])
    assert F.return_plan(not_reordered, "aa.0")["action"] == "reorder"
    # the same commit deployed twice (kargs): serials tell them apart
    kargs = _status(tmp_path, [("aa", 1, True), ("aa", 0, False)])
    assert F.return_plan(kargs, "aa.0")["action"] == "rollback-reboot"


def test_rollback_request(tmp_path: Path) -> None:
    # running the newest deployment: back to the one before
    newest = _status(tmp_path, [("bb", 0, True), ("aa", 0, False)], trial=_trial("good", "bb"))
    req = F.rollback_request(newest)
    assert (req["action"], req["expect"]) == ("rollback", "aa.0")
    # rolled back and rebooted already: nothing to do
    done = _status(tmp_path, [("aa", 0, True), ("bb", 0, False)], trial=_trial("good", "bb"))
    assert F.rollback_request(done)["action"] == "done"
    # rolled back, not rebooted yet
    pending = _status(tmp_path, [("aa", 0, False), ("bb", 0, True)], trial=_trial("good", "bb"))
    req = F.rollback_request(pending)
    assert (req["action"], req["expect"]) == ("reboot", "aa.0")
    # a new deployment made but never booted: drop it
    unbooted = _status(tmp_path, [("bb", 0, False), ("aa", 0, True)], trial=_trial("pending", "bb"))
    req = F.rollback_request(unbooted)
    assert (req["action"], req["expect"]) == ("reorder", "aa.0")
    # an explicit target
    assert F.rollback_request(done, "bb")["action"] == "rollback"
    assert F.rollback_request(done, "aa")["action"] == "done"
    assert F.rollback_request(done, "cc")["action"] == "fail"
    only = _status(tmp_path, [("aa", 0, True)], trial=_trial("good", "aa"))
    assert F.rollback_request(only)["action"] == "fail"


def test_preflight_problems_of_real_preflight(tmp_path: Path) -> None:
    from convert import preflight
    from retrofit import hostfacts

    facts = hostfacts.gather(Path("/"))
    checks = preflight.run_checks(facts)
    doc = json.loads(json.dumps(preflight.to_json(checks)))
    lines = F.preflight_problems(doc)
    assert len(lines) == len(preflight.blocking(checks))
    for ch, line in zip(preflight.blocking(checks), lines):
        assert line.startswith(f"{ch.name}: {ch.reason}")


# -- a real run against this machine ------------------------------------------------


def _cli(sysroot: Path | None) -> list[str]:
    argv = [sys.executable, "-m", "retrofit"]
    return argv + (["--sysroot", str(sysroot)] if sysroot else [])


def _real_preflight(sysroot: Path | None) -> dict[str, Any]:
    r = subprocess.run(
        [*_cli(sysroot), "preflight", "--json"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode in (0, 1), f"retrofit preflight failed: {r.stderr}"
    doc: dict[str, Any] = json.loads(r.stdout)
    assert (r.returncode == 0) == doc["ok"]
    return doc


def _task_results(run: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    out = []
    for play in run.get("plays", []):
        for task in play.get("tasks", []):
            for host, res in task.get("hosts", {}).items():
                out.append((play["play"]["name"], task["task"]["name"], host, res))
    return out


@pytest.fixture
def ready_host_tree(reference_tree: Path, tmp_path: Path) -> Path:
    """A small Debian tree that passes preflight (a throwaway copy)."""
    from tests.integration.test_refusals import make_mini_tree

    return make_mini_tree(reference_tree, tmp_path / "ready-host")


def test_convert_stops_before_any_change_with_real_preflight(
    ready_host_tree: Path, tmp_path: Path
) -> None:
    ap = _need("ansible-playbook", "ansible")
    if os.geteuid() != 0:
        pytest.skip("retrofit preflight is only meaningful as root")
    here = _real_preflight(None)
    if here["ok"]:
        pytest.skip(
            "this machine passes retrofit preflight: running convert.yml against it would "
            "convert it; the stop-on-failure run needs a host that preflight refuses"
        )
    ready = _real_preflight(ready_host_tree)
    assert ready["ok"], f"the small tree should pass preflight: {ready['checks']}"
    expected = [f"this-host: {line}" for line in F.preflight_problems(here)]
    assert expected, "a failing preflight names its failing checks"

    inventory = tmp_path / "inventory.yml"
    common = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {
                        # the ready host first: the stop must not depend on order
                        "ready-host": {
                            **common,
                            "retrofit_cmd": shlex.join(_cli(ready_host_tree)),
                        },
                        "this-host": {**common, "retrofit_cmd": shlex.join(_cli(None))},
                    },
                    # no sudo here: the test runs as root
                    "vars": {"ansible_become": False},
                }
            }
        )
    )
    before = subprocess.run(
        [*_cli(ready_host_tree), "status", "--json"], capture_output=True, text=True
    ).stdout
    r = subprocess.run(
        [ap, "-i", str(inventory), str(PLAYBOOKS / "convert.yml")],
        env=_ansible_env(ANSIBLE_STDOUT_CALLBACK="ansible.posix.json"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.returncode != 0, f"convert.yml should have stopped:\n{r.stdout[-3000:]}"
    run = json.loads(r.stdout)
    results = _task_results(run)
    stops = [
        res
        for _play, task, _host, res in results
        if task == "Stop before any change unless every host is ready" and res.get("failed")
    ]
    assert len(stops) == 1, f"expected one stop, got {stops}\n{r.stdout[-3000:]}"
    msg = stops[0]["msg"]
    assert msg[0] == "1 of 2 host(s) cannot be converted; nothing was changed on any host", msg
    assert msg[1:] == expected, f"the stop should list this host's real preflight failures:\n{msg}"
    assert not any(line.startswith("ready-host") for line in msg), msg
    convert_tasks = [t for play, t, _h, _r in results if play == "Convert in batches"]
    assert convert_tasks == [], f"the convert play ran: {convert_tasks}"
    converts = [t for _p, t, _h, _r in results if "convert --yes" in t.lower()]
    assert converts == [], converts
    stats = run["stats"]
    assert all(s["changed"] == 0 for s in stats.values()), stats
    after = subprocess.run(
        [*_cli(ready_host_tree), "status", "--json"], capture_output=True, text=True
    ).stdout
    assert after == before, "the ready host changed"
    assert not (ready_host_tree / "ostree").exists(), "the ready host was touched"
