"""The conversion journal: ``/ostree/retrofit/journal.json`` (atomic writes).

Records the plan the conversion started with and, per phase, whether it started and
finished, plus data its undo needs. Re-running ``convert`` resumes from it;
``convert --revert`` undoes from it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from convert.plan import Plan
from retrofit import atomic, layout

API_VERSION = 1


class Journal:
    def __init__(self, root: Path, data: dict[str, Any]) -> None:
        self.root = root
        self.data = data

    @staticmethod
    def path_for(root: Path) -> Path:
        return root / layout.JOURNAL

    @classmethod
    def load(cls, root: Path) -> Journal | None:
        p = cls.path_for(root)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        return cls(root, data)

    @classmethod
    def create(cls, root: Path, plan: Plan, created_ostree_dir: bool) -> Journal:
        j = cls(
            root,
            {
                "apiVersion": API_VERSION,
                "state": "in-progress",
                "started": time.time(),
                "created_ostree_dir": created_ostree_dir,
                "plan": plan.to_dict(),
                "phases": {},
            },
        )
        j.save()
        return j

    def save(self) -> None:
        atomic.write_json(self.path_for(self.root), self.data)

    @property
    def plan(self) -> Plan:
        return Plan.from_dict(self.data["plan"])

    @property
    def state(self) -> str:
        return str(self.data["state"])

    def set_state(self, state: str) -> None:
        self.data["state"] = state
        self.data[f"{state}_at"] = time.time()
        self.save()

    def phase(self, name: str) -> dict[str, Any]:
        ph: dict[str, Any] = self.data["phases"].setdefault(name, {"status": "pending"})
        return ph

    def status(self, name: str) -> str:
        return str(self.data["phases"].get(name, {}).get("status", "pending"))

    def start(self, name: str) -> None:
        ph = self.phase(name)
        ph["status"] = "started"
        ph["started"] = time.time()
        self.save()

    def finish(self, name: str, seconds: float) -> None:
        ph = self.phase(name)
        ph["status"] = "done"
        ph["seconds"] = round(seconds, 3)
        self.save()

    def undone(self, name: str) -> None:
        self.data["phases"].pop(name, None)
        self.save()

    def record(self, name: str, key: str, value: Any) -> None:
        self.phase(name).setdefault("data", {})[key] = value
        self.save()

    def recorded(self, name: str, key: str, default: Any = None) -> Any:
        return self.data["phases"].get(name, {}).get("data", {}).get(key, default)

    def remove(self) -> None:
        p = self.path_for(self.root)
        if p.exists():
            p.unlink()
