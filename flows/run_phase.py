"""run-phase: re-run one phase of an earlier flow run with the input artifacts that run recorded."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from pipeline.core.gc import run_guard

from pipeline.core.config import PipelineConfig
from pipeline.core.flow_table import FLOWS
from pipeline.core.runner import node_for
from pipeline.core.runs import RunRecord
from pipeline.core.store import ArtifactRef
from pipeline_tasks.flowrun import begin_flow, end_flow
from pipeline_tasks.phase import run_node


@flow(name="run-phase", description=FLOWS["run-phase"].description, log_prints=True, persist_result=True,
      result_serializer="json")
def run_phase(phase: str, from_run: str, workdir: str = "work", force: bool = False) -> dict[str, Any]:
    # described in pipeline.core.flow_table.FLOWS: re-run PHASE with what flow run FROM_RUN recorded
    record = RunRecord.load(workdir, from_run)
    if record is None:
        raise ValueError(f"no run record for flow run {from_run} in {workdir}/runs (was it run with this work dir?)")
    cfg = PipelineConfig.model_validate(record.config)
    node = node_for(phase, cfg, {"format": record.run.get("format")})
    missing = [dep for dep in node.inputs.values() if dep not in record.phases]
    if missing:
        raise ValueError(f"flow run {from_run} recorded no {missing} artifact; phase {phase} needs it")
    src = record.run
    with run_guard(Path(workdir).resolve()):
        run = begin_flow("run-phase", cfg, workdir, src.get("dataset_root"), src.get("format"), src.get("progress", False))
        run = run.model_copy(update={"force": force})
        results = {dep: ArtifactRef.model_validate(record.phases[dep]) for dep in node.inputs.values()}
        result = run_node(node, cfg, results, run)
        return end_flow(cfg, run, {phase: result})
