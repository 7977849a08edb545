"""run_phase: re-run one phase of an earlier flow run with the input artifacts that run recorded."""
from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from pipeline.core.config import PipelineConfig
from pipeline.core.store import ArtifactRef
from pipeline_tasks.audit import audit_task
from pipeline_tasks.common import RunRecord, begin_flow, end_flow, finish_phase, run_cached
from pipeline_tasks.contexts import contexts_task
from pipeline_tasks.crops import crops_task
from pipeline_tasks.dataset import dataset_task
from pipeline_tasks.embeddings import embeddings_task
from pipeline_tasks.index import index_task
from pipeline_tasks.split import split_task
from pipeline_tasks.validation import validation_task

PHASE_TASKS = {"audit": audit_task, "split": split_task, "crops": crops_task, "contexts": contexts_task,
               "embeddings": embeddings_task, "index": index_task, "validation": validation_task}
Phase = Literal["dataset", "audit", "split", "crops", "contexts", "embeddings", "index", "validation"]


@flow(name="run-phase", log_prints=True)
def run_phase(phase: Phase, from_run: str, workdir: str = "work", force: bool = False) -> dict[str, Any]:
    """Re-run PHASE with the inputs and config recorded by flow run FROM_RUN (force: even if cached)."""
    from pipeline.core.phases import PHASES

    record = RunRecord.load(workdir, from_run)
    if record is None:
        raise ValueError(f"no run record for flow run {from_run} in {workdir}/runs (was it run with this work dir?)")
    cfg = PipelineConfig.model_validate(record.config)
    src = record.run
    run = begin_flow("run-phase", cfg, workdir, src.get("dataset_root"), src.get("format"), src.get("progress", False))
    run = run.model_copy(update={"force": force})
    if phase == "dataset":
        result = finish_phase(dataset_task(cfg=cfg, run=run, return_state=True), "dataset", cfg, run)
    else:
        needed = PHASES[phase].inputs
        missing = [n for n in needed if n not in record.phases]
        if missing:
            raise ValueError(f"flow run {from_run} recorded no {missing} artifact; phase {phase} needs it")
        inputs = {n: ArtifactRef.model_validate(record.phases[n]) for n in needed}
        result = run_cached(PHASE_TASKS[phase], phase, cfg, inputs, run)
    return end_flow(cfg, run, {phase: result})
