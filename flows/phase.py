"""phase: one phase as its own flow run, the child a parent flow dispatches to the `gpu` pool.

Parameters: the phase name, the config, the input artifact refs (by input name) and the parent's run
info. It runs the phase's task here (a cache hit if the artifact is already complete), writes the
artifact to the store and returns its id; the parent reads the artifact from the store by that id.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from pipeline.core.config import PipelineConfig
from pipeline.core.flow_table import FLOWS
from pipeline.core.runner import node_for
from pipeline.core.store import ArtifactRef
from pipeline_tasks.context import RunInfo
from pipeline_tasks.phase import run_node


@flow(name="phase", description=FLOWS["phase"].description, flow_run_name="{phase}", log_prints=True,
      persist_result=True, result_serializer="json")
def phase(phase: str, config: PipelineConfig, inputs: dict[str, ArtifactRef], run: RunInfo) -> dict[str, Any]:
    # described in pipeline.core.flow_table.FLOWS: run PHASE on the INPUTS artifacts
    from pipeline.core.workspace import setup_environment

    setup_environment(run.workdir)
    run = run.model_copy(update={"in_process": True})
    node = node_for(phase, config, run.options())
    missing = set(node.inputs) - set(inputs)
    if missing:
        raise ValueError(f"phase {phase} needs inputs {sorted(missing)}")
    result = run_node(node, config, {node.inputs[k]: ref for k, ref in inputs.items()}, run)
    return {"phase": result.phase, "artifact_id": result.artifact_id, "cache_hit": result.cache_hit,
            "uri": result.uri, "metrics": result.metrics}
