"""data-prep: snapshot the dataset, audit it, split it."""
from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import flow_targets
from pipeline_tasks.flowrun import run_pipeline

DatasetFormat = Literal["labelme", "coco", "jsonl", "folders"]


@flow(name="data-prep", log_prints=True, persist_result=True, result_serializer="json")
def data_prep(
    dataset: str,
    format: DatasetFormat = "labelme",
    workdir: str = "work",
    config: PipelineConfig = PipelineConfig(),
    progress: bool = False,
) -> dict[str, Any]:
    """Audit and split a raw dataset into a clean, split manifest (cached by content)."""
    return run_pipeline("data-prep", config, workdir, dataset, format, progress, flow_targets("data-prep"))
