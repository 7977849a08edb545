"""factory: the whole DAG as it exists today (nightly schedule and ad-hoc runs from the UI).

Today: dataset -> audit -> split -> crops -> contexts -> embeddings -> index -> validation.
Training, distillation, calibration and export are added here as they land.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from pipeline_flows.data_prep import DatasetFormat
from pipeline_flows.retrieval import retrieval_phases
from pipeline.core.config import PipelineConfig
from pipeline_tasks.common import run_pipeline


@flow(name="factory", log_prints=True)
def factory(
    dataset: str,
    format: DatasetFormat = "labelme",
    workdir: str = "work",
    config: PipelineConfig = PipelineConfig(),
    progress: bool = False,
) -> dict[str, Any]:
    """Run every phase of the model factory on DATASET (unchanged inputs recompute nothing)."""
    return run_pipeline("factory", config, workdir, dataset, format, progress, retrieval_phases)
