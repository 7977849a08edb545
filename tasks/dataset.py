"""Snapshot the raw dataset: its artifact id is the hash of its files (never cached by Prefect:
the files must be looked at on every run to notice a changed image)."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import PhaseResult, snapshot_dataset
from pipeline.core.workspace import Workspace

from .common import RunInfo, phase_context


@task(name="dataset", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10], tags=["pool:cpu"])
def dataset_task(cfg: PipelineConfig, run: RunInfo) -> PhaseResult:
    ws = Workspace(Path(run.workdir))
    return snapshot_dataset(Path(run.dataset_root), phase_context(cfg, run), hash_cache=ws.cache / "file-hashes.json")
