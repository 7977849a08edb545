"""The one flow body every pipeline flow shares; a flow is a name and the phases it produces."""
from __future__ import annotations

from typing import Any, Literal

from prefect import Flow, flow

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import flow_targets
from pipeline_tasks.flowrun import run_pipeline

DatasetFormat = Literal["labelme", "coco", "jsonl", "folders"]


def pipeline_flow(name: str, doc: str) -> Flow:
    """A Prefect flow running the phases of `pipeline.core.phases.FLOWS[name]` and their inputs."""

    def body(
        dataset: str,
        format: DatasetFormat = "labelme",
        workdir: str = "work",
        config: PipelineConfig = PipelineConfig(),
        progress: bool = False,
    ) -> dict[str, Any]:
        return run_pipeline(name, config, workdir, dataset, format, progress, flow_targets(name))

    body.__name__ = body.__qualname__ = name.replace("-", "_")
    body.__doc__ = doc
    return flow(name=name, log_prints=True, persist_result=True, result_serializer="json")(body)
