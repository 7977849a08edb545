"""The one flow body every pipeline flow shares; a flow is a name and the phases it produces."""
from __future__ import annotations

from typing import Any, Literal

from prefect import Flow, flow

from pipeline.core.config import PipelineConfig
from pipeline.core.flow_table import FLOWS
from pipeline.core.phases import flow_targets
from pipeline_tasks.flowrun import run_pipeline

DatasetFormat = Literal["labelme", "coco", "jsonl", "folders"]


def pipeline_flow(name: str) -> Flow:
    """The Prefect flow `name` of `pipeline.core.flow_table.FLOWS`: it runs the flow's phases and their
    inputs, and is described as the table says."""
    spec = FLOWS[name]
    if not spec.targets:
        raise ValueError(f"flow {name!r} has a body of its own (flows/{spec.module}.py), not the shared one")

    def body(
        dataset: str,
        format: DatasetFormat = "labelme",
        workdir: str = "work",
        config: PipelineConfig = PipelineConfig(),
        progress: bool = False,
    ) -> dict[str, Any]:
        return run_pipeline(name, config, workdir, dataset, format, progress, flow_targets(name))

    body.__name__ = body.__qualname__ = spec.module
    body.__doc__ = spec.description
    return flow(name=name, log_prints=True, persist_result=True, result_serializer="json")(body)
