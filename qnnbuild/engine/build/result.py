"""How one stage instance ended in a run: the `--json` contract's stage entry, and what the console prints.

Its own module so that the console and the engine's session can both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    """How one instance ended in this run (the `--json` contract's stage entry)."""

    id: str
    stage: str
    target: str | None
    status: str  # ran | cached | failed | skipped
    seconds: float = 0.0
    key: str | None = None
    outputs: list[str] = field(default_factory=list)
    digest: str | None = None
    document: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    message: str = ""
    log: str | None = None
    origin: str = "local"  # where a cached instance came from: local | remote
    worker: str | None = None  # the Dask worker that ran it
    phases: dict[str, float] = field(default_factory=dict)  # a worker's seconds: inputs, stage, upload, restore

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": self.id, "stage": self.stage, "target": self.target, "status": self.status,
                 "seconds": round(self.seconds, 3), "key": self.key, "outputs": self.outputs}
        if self.status == "cached":
            entry["from"] = self.origin
        if self.worker:
            entry["worker"] = self.worker
        if self.phases:
            entry["phases"] = self.phases
        if self.status in ("failed", "skipped") and self.message:
            entry["message"] = self.message  # the reason the console prints beside the stage
        if self.log:
            entry["log"] = self.log
        return entry
