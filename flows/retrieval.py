"""retrieval: data_prep -> crops -> contexts -> embeddings -> index -> validation."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.data_prep import DatasetFormat, data_prep_phases
from pipeline.config import PipelineConfig
from tasks.common import begin_flow, end_flow, run_cached
from tasks.contexts import contexts_task
from tasks.crops import crops_task


def retrieval_phases(cfg: PipelineConfig, run, results: dict[str, Any]) -> dict[str, Any]:
    results["crops"] = run_cached(crops_task, "crops", cfg, {"split": results["split"]}, run)
    results["contexts"] = run_cached(contexts_task, "contexts", cfg, {"crops": results["crops"]}, run)
    return results


@flow(name="retrieval", log_prints=True)
def retrieval(
    dataset: str,
    format: DatasetFormat = "labelme",
    workdir: str = "work",
    config: PipelineConfig = PipelineConfig(),
    progress: bool = False,
) -> dict[str, Any]:
    """Build a searchable index of vehicle crops from a raw dataset, and validate it."""
    run = begin_flow("retrieval", config, workdir, dataset, format, progress)
    ok = False
    try:
        results = retrieval_phases(config, run, data_prep_phases(config, run))
        ok = True
    finally:
        if not ok:
            end_flow(config, run, {}, ok=False)
    return end_flow(config, run, results)
