"""``retrofit status``: deployments (booted, pending, rollback), their base and
layered packages, and the conversion journal. The JSON form is a versioned schema."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from retrofit import layout
from retrofit import ostree as ot

API_VERSION = 1
TRIAL_KEYS = ("state", "kind", "checksum", "serial", "title", "reason", "started", "finished")


def _split(value: str) -> list[str]:
    return [v for v in value.replace(";", " ").split() if v]


def collect(sysroot: Path) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "sysroot": str(sysroot),
        "deployments": [],
        "booted": None,
        "staged": None,
        "pending": None,
        "rollback": None,
        "conversion": None,
        "trial": None,
        "health": None,
    }
    journal = sysroot / layout.JOURNAL
    if journal.exists():
        data = json.loads(journal.read_text())
        out["conversion"] = {
            "state": data.get("state"),
            "phases": {k: v.get("status") for k, v in data.get("phases", {}).items()},
            "ref": data.get("plan", {}).get("ref"),
        }
    from grub import trial
    from retrofit import health

    t = trial.load(sysroot)
    if t is not None:
        out["trial"] = {k: t.get(k) for k in TRIAL_KEYS}
    h = health.load_record(sysroot)
    if h is not None:
        out["health"] = {k: h.get(k) for k in ("ok", "finished", "booted", "checks")}
    if not (sysroot / layout.REPO / "config").exists():
        return out
    sr = ot.Sysroot(sysroot)
    repo = sr.repo()
    deps = sr.deployments()
    booted_idx = next((d.index for d in deps if d.booted), None)
    for d in deps:
        rf = d.origin.get("retrofit", {})
        try:
            meta = repo.commit_metadata(d.checksum)
            ts = repo.commit_timestamp(d.checksum)
        except Exception:
            meta, ts = {}, 0
        conflicts_file = Path(d.path) / "etc/.retrofit-merge-conflicts.json"
        conflicts = 0
        if conflicts_file.exists():
            try:
                conflicts = len(json.loads(conflicts_file.read_text()).get("conflicts", []))
            except (OSError, ValueError):
                conflicts = 0
        entry = {
            "index": d.index,
            "stateroot": d.stateroot,
            "checksum": d.checksum,
            "serial": d.serial,
            "booted": d.booted,
            "staged": d.staged,
            "pinned": d.pinned,
            "default": d.index == 0,
            "refspec": d.origin_refspec,
            "base": rf.get("base-refspec", d.origin_refspec),
            "version": str(meta.get("version", "")),
            "timestamp": ts,
            "requested_packages": _split(rf.get("requested-packages", "")),
            "requested_local_packages": _split(rf.get("requested-local-packages", "")),
            "removed_base_packages": _split(rf.get("removed-base-packages", "")),
            "kargs": d.kargs,
            "etc_conflicts": conflicts,
        }
        out["deployments"].append(entry)
        if d.booted:
            out["booted"] = d.checksum
        if d.staged:
            out["staged"] = d.checksum
    # roles by index: two deployments of one commit (e.g. after `retrofit kargs`)
    # share a checksum
    rollback_idx = pending_idx = None
    if deps:
        if booted_idx == 0:
            rollback_idx = 1 if len(deps) > 1 else None
        else:
            pending_idx = 0
            if booted_idx is not None:
                rollback_idx = booted_idx
            elif len(deps) > 1:
                rollback_idx = 1
    t = out["trial"]
    for entry in out["deployments"]:
        entry["pending"] = entry["index"] == pending_idx
        entry["rollback"] = entry["index"] == rollback_idx
        entry["trial"] = (
            t["state"]
            if t and (t.get("checksum"), t.get("serial")) == (entry["checksum"], entry["serial"])
            else None
        )
    if pending_idx is not None:
        out["pending"] = deps[pending_idx].checksum
    if rollback_idx is not None:
        out["rollback"] = deps[rollback_idx].checksum
    return out


def _utc(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(st: dict[str, Any]) -> str:
    lines = []
    conv = st.get("conversion")
    if conv:
        lines.append(f"Conversion: {conv['state']}")
        if conv["state"] != "complete":
            lines.append("  phases: " + ", ".join(f"{k}={v}" for k, v in conv["phases"].items()))
            lines.append("  hint: retrofit convert resumes it; retrofit convert --revert undoes it")
    t = st.get("trial")
    if t:
        when = _utc(t.get("finished") or t.get("started"))
        line = f"Trial boot: {t['state']} ({t['kind']}, {t.get('title') or t.get('checksum')}"
        lines.append(line + (f", {when})" if when else ")"))
        if t.get("reason"):
            lines.append(f"  reason: {t['reason']}")
    h = st.get("health")
    if h:
        bad = [c for c in h.get("checks", []) if not c.get("ok")]
        lines.append(
            f"Health: {'ok' if h.get('ok') else 'FAILED'} ({_utc(h.get('finished'))})"
            + "".join(f"\n  {c['name']}: {c['detail']}" for c in bad)
        )
    if not st["deployments"]:
        lines.append("Deployments: none (not converted)")
        return "\n".join(lines)
    lines.append("Deployments:")
    for d in st["deployments"]:
        marks = []
        if d["booted"]:
            marks.append("booted")
        if d.get("pending"):
            marks.append("pending")
        if d.get("rollback"):
            marks.append("rollback")
        if d.get("trial") in ("pending", "failed"):
            marks.append(f"trial {d['trial']}")
        if d["staged"]:
            marks.append("staged")
        bullet = "●" if d["booted"] else " "
        lines.append(
            f"{bullet} {d['stateroot']}:{d['refspec']}"
            + (f" ({', '.join(marks)})" if marks else "")
        )
        when = (
            datetime.datetime.fromtimestamp(d["timestamp"], datetime.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            if d["timestamp"]
            else ""
        )
        lines.append(f"      Version: {d['version']} ({when})")
        lines.append(f"       Commit: {d['checksum']}")
        if d["requested_packages"] or d["requested_local_packages"]:
            lines.append(
                "  LayeredPackages: "
                + " ".join(d["requested_packages"] + d["requested_local_packages"])
            )
        if d["removed_base_packages"]:
            lines.append("  RemovedBasePackages: " + " ".join(d["removed_base_packages"]))
        if d["etc_conflicts"]:
            lines.append(f"  EtcConflicts: {d['etc_conflicts']} (retrofit etc diff)")
        lines.append(f"        Kargs: {d['kargs']}")
    return "\n".join(lines)
