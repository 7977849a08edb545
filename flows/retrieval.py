"""retrieval: data_prep -> crops -> contexts -> embeddings -> index -> validation."""
from __future__ import annotations

from typing import Any

from prefect import flow

from pipeline_flows.data_prep import DatasetFormat, data_prep_phases
from pipeline.core.config import PipelineConfig
from pipeline_tasks.common import run_cached, run_pipeline
from pipeline_tasks.contexts import contexts_task
from pipeline_tasks.crops import crops_task
from pipeline_tasks.embeddings import embeddings_task
from pipeline_tasks.index import index_task
from pipeline_tasks.validation import validation_task


def retrieval_phases(cfg: PipelineConfig, run) -> dict[str, Any]:
    results = data_prep_phases(cfg, run)
    results["crops"] = run_cached(crops_task, "crops", cfg, {"split": results["split"]}, run)
    results["contexts"] = run_cached(contexts_task, "contexts", cfg, {"crops": results["crops"]}, run)
    crops_ctx = {"crops": results["crops"], "contexts": results["contexts"]}
    results["embeddings"] = run_cached(embeddings_task, "embeddings", cfg, crops_ctx, run)
    results["index"] = run_cached(index_task, "index", cfg, {**crops_ctx, "embeddings": results["embeddings"]}, run)
    results["validation"] = run_cached(
        validation_task, "validation", cfg,
        {"index": results["index"], "embeddings": results["embeddings"], "crops": results["crops"]}, run)
    return results


@flow(name="retrieval", log_prints=True)
def retrieval(
    dataset: str,
    format: DatasetFormat = "labelme",
    workdir: str = "work",
    config: PipelineConfig = PipelineConfig(),
    progress: bool = False,
) -> dict[str, Any]:
    """From a raw dataset to a validated, searchable index of vehicle crops."""
    return run_pipeline("retrieval", config, workdir, dataset, format, progress, retrieval_phases)
