"""What the task layer's modules share, below all of them: the per-run values (`RunInfo`), the store and
tracker of a config, the context a phase runs in, and the flow run's record of its phases.

Imports nothing of `pipeline_tasks`: `phase` (the phase tasks), `placement` and `shards` (where a phase
runs) and `flowrun` (a flow run's opening and closing) import it, so none of them imports another back.
"""
from __future__ import annotations

import functools
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect.context import TaskRunContext
from prefect.runtime import flow_run as rt_flow_run
from pydantic import BaseModel

from pipeline.core.config import PipelineConfig
from pipeline.core.runner import PhaseContext, PhaseResult
from pipeline.core.runs import RunRecord
from pipeline.core.store import ArtifactRef, ArtifactStore
from pipeline.core.tracking import MlflowTracker, NullTracker
from pipeline.core.workspace import Workspace


class RunInfo(BaseModel):
    """Per-run values a task needs besides its config and inputs."""

    workdir: str
    dataset_root: str | None = None
    format: str | None = None
    parent_run_id: str | None = None
    progress: bool = True
    force: bool = False
    in_process: bool = False  # set by the `phase` flow: never dispatch again from a dispatched phase

    def options(self) -> dict[str, Any]:
        return {"format": self.format}

    def runtime(self, cfg: PipelineConfig, phase: str) -> dict[str, Any]:
        ws = Workspace(Path(self.workdir))
        mirror = ws.item_mirror(cfg)
        return {
            "dataset_root": self.dataset_root, "workdir": self.workdir, "device": cfg.runtime.device,
            "item_cache": ws.item_cache_uri(cfg), "item_mirror": str(mirror) if mirror else None,
            "hash_cache": str(ws.cache / "file-hashes.json"),
            "weights_dir": str(ws.cache / "weights"), "checkpoints": str(ws.cache / "checkpoints"),
        }


@functools.lru_cache(maxsize=8)
def _tracker(uri: str, experiment: str, artifact_root: str):
    return MlflowTracker(uri, experiment, artifact_root=Path(artifact_root))


def tracker_for(cfg: PipelineConfig, workdir: str):
    if not cfg.tracking.enabled:
        return NullTracker()
    ws = Workspace(Path(workdir))
    return _tracker(ws.tracking_uri(cfg), cfg.tracking.experiment, str(ws.mlflow_artifacts))


def store_for(cfg: PipelineConfig, workdir: str) -> ArtifactStore:
    ws = Workspace(Path(workdir))
    return ws.store(cfg)


def phase_context(cfg: PipelineConfig, run: RunInfo) -> PhaseContext:
    ctx = TaskRunContext.get()
    return PhaseContext(
        store=store_for(cfg, run.workdir),
        tracker=tracker_for(cfg, run.workdir),
        parent_run_id=run.parent_run_id,
        flow_run_id=str(rt_flow_run.id) if rt_flow_run.id else None,
        task_run_id=str(ctx.task_run.id) if ctx and ctx.task_run else None,
        progress=run.progress,
    )


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def flow_run_id() -> str:
    """The running flow run's id (`local` outside one): the name of its run record."""
    return str(rt_flow_run.id) if rt_flow_run.id else "local"


def record_phase(run: RunInfo, result: PhaseResult) -> None:
    """Enter a phase's result in the running flow's run record."""
    record = RunRecord.load(run.workdir, flow_run_id())
    if record is not None:
        ref = ArtifactRef.model_validate(result.model_dump()).model_dump()
        record.phases[result.phase] = {**ref, "metrics": result.metrics, "info": result.info}
        record.save(run.workdir)
