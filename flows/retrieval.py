"""retrieval: data-prep -> crops -> contexts -> embeddings -> index -> validation."""
from __future__ import annotations

from typing import Any

from prefect import flow

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import flow_targets
from pipeline_flows.data_prep import DatasetFormat
from pipeline_tasks.flowrun import run_pipeline


@flow(name="retrieval", log_prints=True, persist_result=True, result_serializer="json")
def retrieval(
    dataset: str,
    format: DatasetFormat = "labelme",
    workdir: str = "work",
    config: PipelineConfig = PipelineConfig(),
    progress: bool = False,
) -> dict[str, Any]:
    """From a raw dataset to a validated, searchable index of vehicle crops."""
    return run_pipeline("retrieval", config, workdir, dataset, format, progress, flow_targets("retrieval"))
