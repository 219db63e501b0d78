"""Jinja filters the retrofit playbooks decide with: pure functions of the JSON that
``retrofit status --json`` and ``retrofit preflight --json`` print (schemas in
retrofit/status.py, grub/trial.py, retrofit/health.py and convert/preflight.py).

A deployment is named by ``CHECKSUM.SERIAL`` (as libostree names them): the same
commit deployed twice (``retrofit kargs``) is two deployments. The empty string
names "no deployment": the system before retrofit.

Ansible loads this file because it sits in ``filter_plugins/`` beside the
playbooks; tests/integration/test_playbooks.py imports it directly.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

# typing's: evaluated at run time, and the project's target is Python 3.8
Status = Dict[str, Any]
Deployment = Dict[str, Any]

# The trial states of grub/trial.py.
PENDING, GOOD, FAILED, CANCELLED = "pending", "good", "failed", "cancelled"


def dep_id(dep: Deployment | None) -> str:
    """``CHECKSUM.SERIAL`` of a deployment entry; "" for none."""
    if not dep:
        return ""
    return f"{dep['checksum']}.{dep.get('serial', 0)}"


def short_id(ident: str) -> str:
    """A deployment id for messages: 12 hex digits and the serial."""
    if not ident:
        return "the system before retrofit"
    checksum, _, serial = ident.partition(".")
    return f"{checksum[:12]}.{serial}"


def booted(status: Status) -> Deployment | None:
    return next((d for d in status.get("deployments") or [] if d.get("booted")), None)


def default(status: Status) -> Deployment | None:
    deps = status.get("deployments") or []
    return deps[0] if deps else None


def booted_id(status: Status) -> str:
    return dep_id(booted(status))


def default_id(status: Status) -> str:
    return dep_id(default(status))


def trial_id(status: Status) -> str:
    t = status.get("trial") or {}
    if not t.get("checksum"):
        return ""
    return f"{t['checksum']}.{t.get('serial') if t.get('serial') is not None else 0}"


def rollback_target_id(status: Status) -> str:
    """What ``retrofit rollback`` makes the default (dpkg_layer/admin.py, rpm-ostree's
    rule): the booted deployment when another one is the default, else the second."""
    deps = status.get("deployments") or []
    if len(deps) < 2:
        return ""
    b = booted(status)
    if b is not None and b.get("index") != 0:
        return dep_id(b)
    return dep_id(deps[1])


def requested(status: Status) -> list[str]:
    """The layered requests of the default deployment (names and local packages)."""
    d = default(status) or {}
    return list(d.get("requested_packages") or []) + list(d.get("requested_local_packages") or [])


def convert_action(status: Status) -> dict[str, str]:
    """What convert.yml does on a host, from its status alone:

    - ``done``: it runs a deployment already: nothing to do;
    - ``resume``: a conversion was interrupted: ``retrofit convert --yes`` resumes it
      (the converter does not run preflight again for a resume);
    - ``reboot``: converted, its trial boot still to come: reboot and verify;
    - ``preflight``: not converted: preflight decides;
    - ``blocked``: converted but running the old system after a trial that did not
      pass, or a revert that was interrupted: a person decides (``reason`` says).
    """
    conv = status.get("conversion") or {}
    trial = status.get("trial") or {}
    if booted(status) is not None:
        return {"action": "done", "reason": f"booted into {short_id(booted_id(status))}"}
    state = conv.get("state")
    if state is None:
        return {"action": "preflight", "reason": "not converted"}
    if state == "reverting":
        return {
            "action": "blocked",
            "reason": "an interrupted 'retrofit convert --revert': run it again to finish",
        }
    if state != "complete":
        return {"action": "resume", "reason": f"an interrupted conversion (journal: {state})"}
    if trial.get("state") == PENDING:
        return {"action": "reboot", "reason": "converted; its trial boot is still to come"}
    why = trial.get("reason") or "no trial boot recorded"
    return {
        "action": "blocked",
        "reason": f"converted, but running the old system (trial boot "
        f"{trial.get('state') or 'missing'}: {why}); undo it with 'retrofit convert "
        "--revert', or fix the cause and reboot into the deployment",
    }


def preflight_problems(preflight: dict[str, Any]) -> list[str]:
    """Each blocking check of ``retrofit preflight --json`` as ``name: reason (hint)``."""
    out = []
    for ch in preflight.get("checks") or []:
        if ch.get("status") == "fail":
            line = f"{ch.get('name')}: {ch.get('reason')}"
            if ch.get("hint"):
                line += f" (hint: {ch['hint']})"
            out.append(line)
    if not out and not preflight.get("ok", False):
        out.append("preflight is not ok, but names no failing check")
    return out


def _health_this_boot(status: Status, since: float) -> bool:
    h = status.get("health") or {}
    finished = h.get("finished")
    return (
        bool(h)
        and finished is not None
        and float(finished) >= float(since)
        and h.get("booted") == status.get("booted")
    )


def settled(status: Status, since: float) -> bool:
    """Whether this boot has been judged: ``retrofit-health.service`` recorded its
    health (after ``since``, the host's clock before the reboot, and for the
    deployment now booted) and no trial is pending. A trial that failed on the very
    deployment still booted is not settled: the machine is about to fall back by
    itself (``reboot-on-failure``)."""
    if not _health_this_boot(status, since):
        return False
    trial = status.get("trial") or {}
    if trial.get("state") == PENDING:
        return False
    b = booted_id(status)
    return not (trial.get("state") == FAILED and b and b == trial_id(status))


def summary(status: Status) -> str:
    """One line for messages: what runs, what is the default, the trial, the health."""
    b, d = booted_id(status), default_id(status)
    parts = [f"booted {short_id(b)}"]
    if d and d != b:
        parts.append(f"default {short_id(d)}")
    conv = status.get("conversion") or {}
    if conv and conv.get("state") != "complete":
        parts.append(f"conversion {conv.get('state')}")
    t = status.get("trial") or {}
    if t:
        reason = f" ({t['reason']})" if t.get("reason") else ""
        parts.append(f"trial {t.get('state')} of {short_id(trial_id(status))}{reason}")
    else:
        parts.append("no trial")
    h = status.get("health") or {}
    if h:
        bad = [c.get("name") for c in h.get("checks") or [] if not c.get("ok")]
        verdict = "ok" if h.get("ok") else f"FAILED ({', '.join(str(n) for n in bad)})"
        on = str(h["booted"])[:12] if h.get("booted") else "the old system"
        parts.append(f"health {verdict} on {on}")
    else:
        parts.append("no health record")
    return ", ".join(parts)


def health_problems(status: Status) -> list[str]:
    h = status.get("health") or {}
    if not h:
        return ["no health record (is retrofit-health.service installed and enabled?)"]
    out = []
    if h.get("booted") != status.get("booted"):
        out.append(
            f"the health record is for {h.get('booted') or 'the old system'}, "
            f"not the booted {status.get('booted') or 'old system'}"
        )
    if not h.get("ok"):
        bad = [c for c in h.get("checks") or [] if not c.get("ok")]
        detail = "; ".join(f"{c.get('name')}: {c.get('detail')}" for c in bad)
        out.append(f"health check failed: {detail or 'no failing check named'}")
    return out


def verify(status: Status, expect: str, trial: bool = True) -> list[str]:
    """Problems with the host after booting ``expect`` (a deployment id); [] is good.

    Good means: booted into that deployment, which is the default (index 0); its
    trial boot passed (``trial``: the deployment was made with a trial); this boot's
    health check passed."""
    out = []
    b = booted_id(status)
    if not b:
        out.append(f"not booted into a deployment (expected {short_id(expect)})")
    elif b != expect:
        out.append(f"booted {short_id(b)}, expected {short_id(expect)}")
    if b and default_id(status) != b:
        out.append(f"the default deployment is {short_id(default_id(status))}, not the booted one")
    if trial:
        t = status.get("trial") or {}
        if not t:
            out.append("no trial boot recorded for the new deployment")
        else:
            if trial_id(status) != expect:
                out.append(
                    f"the last trial boot was of {short_id(trial_id(status))}, "
                    f"not {short_id(expect)}"
                )
            if t.get("state") != GOOD:
                reason = f": {t['reason']}" if t.get("reason") else ""
                out.append(f"trial boot {t.get('state')}{reason}")
    out += health_problems(status)
    return out


def return_plan(status: Status, previous: str) -> dict[str, str]:
    """How to get back to ``previous`` (a deployment id; "" = the system before
    retrofit) after a change that did not verify:

    - ``none``: running it, and it is the default;
    - ``reorder``: running it, another one is the default: ``retrofit rollback``;
    - ``reboot``: it is the default, another is running: reboot (for the system
      before retrofit: GRUB boots it by default until a trial passed);
    - ``rollback-reboot``: ``retrofit rollback`` makes it the default, then reboot;
    - ``revert``: on the system before retrofit with a conversion (complete or
      not): ``retrofit convert --revert``;
    - ``stuck``: none of these gets there.
    """
    b, d = booted_id(status), default_id(status)
    if not previous:
        if b:
            return {"action": "reboot", "reason": f"running {short_id(b)}, not the old system"}
        if status.get("conversion") or status.get("deployments"):
            return {"action": "revert", "reason": "on the old system; the conversion is there"}
        return {"action": "none", "reason": "on the old system, no conversion left"}
    if b == previous:
        if d == previous:
            return {"action": "none", "reason": f"running {short_id(previous)}, the default"}
        return {"action": "reorder", "reason": f"running {short_id(previous)}, not the default"}
    if d == previous:
        return {"action": "reboot", "reason": f"{short_id(previous)} is the default"}
    if rollback_target_id(status) == previous:
        why = f"retrofit rollback selects {short_id(previous)}"
        return {"action": "rollback-reboot", "reason": why}
    return {
        "action": "stuck",
        "reason": f"running {short_id(b)}, default {short_id(d)}: "
        f"'retrofit rollback' does not lead to {short_id(previous)}",
    }


def rollback_request(status: Status, target: str = "") -> dict[str, str]:
    """What rollback.yml does. ``target`` (a checksum or a prefix of one) names the
    deployment to run; without it: the one before the newest deployment.

    - ``done``: running it, and it is the default;
    - ``reorder``: running it, a newer one is the default (deployed, not booted):
      ``retrofit rollback`` makes the running one the default again, no reboot;
    - ``rollback``: ``retrofit rollback`` then reboot into ``expect``;
    - ``reboot``: a rollback is pending (the default is ``expect``): reboot;
    - ``fail``: not possible (``reason``).

    Without ``target`` the newest deployment is the one the last trial boot was of
    (every deployment retrofit makes boots once on trial): a host running another
    one has been rolled back already (or fell back by itself)."""
    b, d = booted_id(status), default_id(status)
    if not b:
        return {"action": "fail", "expect": "", "reason": "not booted into a deployment"}
    deps = [dep_id(x) for x in status.get("deployments") or []]
    rb = rollback_target_id(status)
    if target:
        matches = [x for x in deps if x.startswith(target)]
        if len({x.partition(".")[0] for x in matches}) != 1:
            return {
                "action": "fail",
                "expect": "",
                "reason": f"{target!r} names {len(matches)} deployments, not one",
            }
        want = b if b in matches else (d if d in matches else matches[0])
    else:
        newest = trial_id(status)
        if not newest or newest not in deps:
            newest = d
        if b != newest:
            # a newer deployment not booted yet (dropped by going back to the
            # running one), or rolled back already (maybe pending a reboot)
            want = b if d == newest else d
        else:
            # running the newest: the one before it, unless a rollback is pending
            want = d if d != b else rb
    if not want:
        return {"action": "fail", "expect": "", "reason": "no other deployment to roll back to"}
    if b == want:
        if d == want:
            return {"action": "done", "expect": want, "reason": f"running {short_id(want)}"}
        return {"action": "reorder", "expect": want, "reason": f"a newer default ({short_id(d)})"}
    if d == want:
        return {"action": "reboot", "expect": want, "reason": "the rollback is pending"}
    if rb == want:
        return {"action": "rollback", "expect": want, "reason": f"back to {short_id(want)}"}
    return {
        "action": "fail",
        "expect": want,
        "reason": f"{short_id(want)} is not the rollback deployment ({short_id(rb)})",
    }


class FilterModule:
    """retrofit_* filters for the playbooks."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "retrofit_dep_id": dep_id,
            "retrofit_short_id": short_id,
            "retrofit_booted_id": booted_id,
            "retrofit_default_id": default_id,
            "retrofit_trial_id": trial_id,
            "retrofit_requested": requested,
            "retrofit_summary": summary,
            "retrofit_convert_action": convert_action,
            "retrofit_preflight_problems": preflight_problems,
            "retrofit_settled": settled,
            "retrofit_verify": verify,
            "retrofit_return_plan": return_plan,
            "retrofit_rollback_request": rollback_request,
        }
