"""``retrofit rehearse``: the conversion, end to end, on a throwaway Debian system.

Builds (or reuses from the cache) the reference Debian 12 server tree with mmdebstrap,
copies it, runs preflight and convert on the copy (``--sysroot``), verifies the
result (one deployment, ``ostree fsck``, /etc carried over, the user's data visible
through the new deployment), reverts, and reports each step with its timing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retrofit import debtree, hostfacts
from retrofit import ostree as ot
from retrofit import status as status_mod
from retrofit.errors import RetrofitError
from retrofit.log import log
from retrofit.reference import REFERENCE_TREE


def step(report: dict[str, Any], name: str, fn: Callable[[], str]) -> bool:
    start = time.monotonic()
    log.info("rehearse: %s ...", name)
    try:
        detail = fn()
        ok = True
    except (RetrofitError, OSError, AssertionError) as exc:
        detail, ok = f"{type(exc).__name__}: {exc}", False
    report["steps"].append(
        {"step": name, "ok": ok, "seconds": round(time.monotonic() - start, 1), "detail": detail}
    )
    if not ok:
        report["ok"] = False
    return ok


def rehearse_tree(workdir: Path | None = None, keep: bool = False) -> dict[str, Any]:
    from convert import engine, preflight

    report: dict[str, Any] = {"apiVersion": 1, "target": "tree", "ok": True, "steps": []}
    top = Path(tempfile.mkdtemp(prefix="retrofit-rehearse-", dir=workdir))
    tree = top / "tree"
    cached: dict[str, Path] = {}
    deployment: dict[str, Path] = {}
    total = time.monotonic()

    def build() -> str:
        cached["tree"] = debtree.cached_tree(REFERENCE_TREE)
        return f"reference Debian 12 server tree {cached['tree']}"

    def copy() -> str:
        debtree.copy_tree(cached["tree"], tree)
        return f"throwaway copy at {tree}"

    def check() -> str:
        checks = preflight.run_checks(hostfacts.gather(tree))
        failed = preflight.blocking(checks)
        assert not failed, "; ".join(c.reason for c in failed)
        return f"{len(checks)} checks, none blocking"

    def convert() -> str:
        res = engine.convert(tree, yes=True, dry_run=False)
        return f"commit {str(res['commit'])[:12]} in {res['seconds']}s"

    def status() -> str:
        st = status_mod.collect(tree)
        assert len(st["deployments"]) == 1, "expected exactly one deployment"
        deployment["dir"] = Path(ot.Sysroot(tree).deployments()[0].path)
        report["status"] = status_mod.render(st)
        first = st["deployments"][0]
        return f"deployment {first['checksum'][:12]} ({first['version']})"

    def fsck() -> str:
        out = ot.Repo(tree / "ostree/repo").fsck()
        assert "no errors found" in out, out
        return "ostree fsck: no errors"

    def verify() -> str:
        dep = deployment["dir"]
        var = tree / "ostree/deploy/debian/var"
        assert (dep / "etc/myapp/secret").read_text() == "s3cret\n"
        assert (dep / "etc/myapp/secret").stat().st_mode & 0o777 == 0o600
        assert "PermitRootLogin no" in (dep / "etc/ssh/sshd_config").read_text()
        assert (var / "home/alice/notes.txt").read_text() == "alice notes\n"
        assert (var / "lib/myapp/db/data.bin").stat().st_size == 4 << 20
        assert (tree / "home/alice/notes.txt").read_text() == "alice notes\n"
        return "/etc edits, secret (0600), home, /var/lib data: intact (new and old views)"

    def revert() -> str:
        engine.revert(tree)
        assert (tree / "var").is_dir() and not (tree / "var").is_symlink()
        assert not (tree / "ostree").exists()
        return "tree back to its pre-conversion layout"

    try:
        for name, fn in (
            ("build reference tree", build),
            ("copy", copy),
            ("preflight", check),
            ("convert", convert),
            ("status", status),
            ("fsck", fsck),
            ("verify data", verify),
            ("revert", revert),
        ):
            if not step(report, name, fn):
                break
    finally:
        report["seconds"] = round(time.monotonic() - total, 1)
        if keep:
            report["kept"] = str(tree)
        else:
            if tree.exists():
                debtree.remove_tree(tree)
            shutil.rmtree(top, ignore_errors=True)
    return report


def render(report: dict[str, Any]) -> str:
    lines = [
        f"retrofit rehearse ({report['target']}): "
        f"{'PASS' if report['ok'] else 'FAIL'} in {report['seconds']}s",
        "",
    ]
    width = max(len(s["step"]) for s in report["steps"])
    lines.append(f"{'step':<{width}}  result  seconds  detail")
    for s in report["steps"]:
        lines.append(
            f"{s['step']:<{width}}  {'pass' if s['ok'] else 'FAIL':<6}  "
            f"{s['seconds']:>7}  {s['detail']}"
        )
    if report.get("boots"):
        b = report["boots"]
        lines += [
            "",
            f"boots (reboot until the trial settled): {len(b)}, "
            f"{min(b):.0f}-{max(b):.0f}s, mean {sum(b) / len(b):.0f}s",
        ]
    if report.get("box"):
        lines.append(f"box: {report['box']}")
    if report.get("diagnostics"):
        lines += ["", "VM diagnostics:", report["diagnostics"]]
    if report.get("status"):
        lines += ["", "retrofit status of the converted tree:", report["status"]]
    if report.get("kept"):
        lines += ["", f"kept: {report['kept']}"]
    return "\n".join(lines)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)
