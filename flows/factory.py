"""factory: the whole DAG as it exists today (nightly schedule and ad-hoc runs from the UI).

Today: dataset -> audit -> split. Later phases (crops, embeddings, index, training, export) are
added here as they land.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.data_prep import DatasetFormat, data_prep_phases
from pipeline.config import PipelineConfig
from tasks.common import begin_flow, end_flow


@flow(name="factory", log_prints=True)
def factory(
    dataset: str,
    format: DatasetFormat = "labelme",
    workdir: str = "work",
    config: PipelineConfig = PipelineConfig(),
    progress: bool = False,
) -> dict[str, Any]:
    """Run every phase of the model factory on DATASET (unchanged inputs recompute nothing)."""
    run = begin_flow("factory", config, workdir, dataset, format, progress)
    ok = False
    try:
        results = data_prep_phases(config, run)
        ok = True
    finally:
        if not ok:
            end_flow(config, run, {}, ok=False)
    return end_flow(config, run, results)
