"""train: data-prep (and crops, when training on crops) -> teachers -> soft labels -> student ->
no-teacher student -> fine-tune -> calibration -> promotion."""
from __future__ import annotations

from typing import Any

from prefect import flow

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import flow_targets
from pipeline_flows.data_prep import DatasetFormat
from pipeline_tasks.flowrun import run_pipeline


@flow(name="train", log_prints=True, persist_result=True, result_serializer="json")
def train(
    dataset: str,
    format: DatasetFormat = "labelme",
    workdir: str = "work",
    config: PipelineConfig = PipelineConfig(),
    progress: bool = False,
) -> dict[str, Any]:
    """Train, distil, fine-tune, calibrate and (gated) promote a student on DATASET."""
    return run_pipeline("train", config, workdir, dataset, format, progress, flow_targets("train"))
