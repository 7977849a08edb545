"""factory: the whole DAG (nightly schedule and ad-hoc runs from the UI)."""
from __future__ import annotations

from typing import Any

from prefect import flow

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import flow_targets
from pipeline_flows.data_prep import DatasetFormat
from pipeline_tasks.flowrun import run_pipeline


@flow(name="factory", log_prints=True, persist_result=True, result_serializer="json")
def factory(
    dataset: str,
    format: DatasetFormat = "labelme",
    workdir: str = "work",
    config: PipelineConfig = PipelineConfig(),
    progress: bool = False,
) -> dict[str, Any]:
    """Run every phase of the model factory on DATASET (unchanged inputs recompute nothing)."""
    return run_pipeline("factory", config, workdir, dataset, format, progress, flow_targets("factory"))
