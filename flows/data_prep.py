"""data_prep: snapshot the dataset, audit it, split it."""
from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from pipeline.core.config import PipelineConfig
from pipeline_tasks.audit import audit_task
from pipeline_tasks.common import finish_phase, run_cached, run_pipeline
from pipeline_tasks.dataset import dataset_task
from pipeline_tasks.split import split_task

DatasetFormat = Literal["labelme", "coco", "jsonl", "folders"]


def data_prep_phases(cfg: PipelineConfig, run) -> dict[str, Any]:
    results: dict[str, Any] = {}
    results["dataset"] = finish_phase(dataset_task(cfg=cfg, run=run, return_state=True), "dataset", cfg, run)
    results["audit"] = run_cached(audit_task, "audit", cfg, {"dataset": results["dataset"]}, run)
    results["split"] = run_cached(split_task, "split", cfg, {"audit": results["audit"]}, run)
    return results


@flow(name="data-prep", log_prints=True)
def data_prep(
    dataset: str,
    format: DatasetFormat = "labelme",
    workdir: str = "work",
    config: PipelineConfig = PipelineConfig(),
    progress: bool = False,
) -> dict[str, Any]:
    """Audit and split a raw dataset into a clean, split manifest (cached by content)."""
    return run_pipeline("data-prep", config, workdir, dataset, format, progress, data_prep_phases)
