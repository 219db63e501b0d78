"""The README's main command: `retrofit rehearse` on the built-in reference tree."""

from __future__ import annotations

import json
from pathlib import Path

from tests.treeutil import retrofit_cmd


def test_rehearse_tree_report(reference_tree: Path, tmp_path: Path) -> None:
    out = retrofit_cmd("rehearse", "--workdir", str(tmp_path), "--json").stdout
    report = json.loads(out)
    assert report["ok"], report["steps"]
    steps = [s["step"] for s in report["steps"]]
    assert steps == [
        "build reference tree",
        "copy",
        "preflight",
        "convert",
        "status",
        "fsck",
        "verify data",
        "revert",
    ]
    assert all(s["ok"] and s["seconds"] >= 0 for s in report["steps"])
    assert "retrofit/debian/bookworm/amd64/base" in report["status"]
    assert not list(tmp_path.iterdir())  # the throwaway tree is gone
