"""Run records: what a flow run used and produced, phase by phase (`<workdir>/runs/<id>.json`).

They are the input of `pipeline run-phase`, `pipeline plan`, `pipeline gc` and search's default
index, so they live in the library, not in the Prefect layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.core.workspace import Workspace


class RunRecord(BaseModel):
    flow_run_id: str
    flow: str
    config: dict[str, Any]
    run: dict[str, Any] = {}  # dataset_root, format, workdir, progress
    phases: dict[str, dict[str, Any]] = {}  # phase -> ArtifactRef fields (+ metrics, info)
    started_at: str | None = None
    finished_at: str | None = None
    status: str = "RUNNING"

    @staticmethod
    def path(workdir: str | Path, flow_run_id: str) -> Path:
        return Workspace(Path(workdir)).runs / f"{flow_run_id}.json"

    @classmethod
    def load(cls, workdir: str | Path, flow_run_id: str) -> "RunRecord | None":
        p = cls.path(workdir, flow_run_id)
        return cls.model_validate_json(p.read_text()) if p.is_file() else None

    @classmethod
    def all(cls, workdir: str | Path) -> list["RunRecord"]:
        """Every run record of the work dir, newest first (unreadable files are skipped)."""
        out = []
        for p in Workspace(Path(workdir)).runs.glob("*.json"):
            try:
                out.append((p.stat().st_mtime, cls.model_validate_json(p.read_text())))
            except (OSError, ValueError):
                continue
        return [r for _, r in sorted(out, key=lambda t: (t[1].started_at or "", t[0]), reverse=True)]

    def save(self, workdir: str | Path) -> None:
        p = self.path(workdir, self.flow_run_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(p)
