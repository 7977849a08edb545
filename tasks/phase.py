"""One Prefect task per declared phase, derived from its `PhaseSpec`.

The Prefect cache key of a phase task IS its artifact id (`<phase>-<artifact_id>`), computed from
the phase name, its code version, the config slice it reads and the ids of its input artifacts,
never from the run id. When the artifact is not complete in the store, the result record under
that key is dropped first, so a cached reference to a deleted artifact is never trusted. Source
phases (the dataset) and uncacheable ones (promotion) are never Prefect cache hits.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.runtime import flow_run as rt_flow_run

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import PipelineError
from pipeline.core.phases import PHASES, PhaseNode
from pipeline.core.runner import PhaseResult, execute_phase, node_for, phase_id, reusable
from pipeline.core.store import ArtifactRef
from pipeline.core.workspace import Workspace
from pipeline_tasks.context import RunInfo, phase_context, record_phase, store_for, tracker_for
from pipeline_tasks.placement import dispatch, full_artifact_id, gpu_deployment
from pipeline_tasks.shards import shard_node

RETRY_DELAYS = [2, 10]


@dataclass
class ArtifactIdPolicy(CachePolicy):
    """Cache key = the phase's artifact id, offered only while that artifact is complete."""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        cfg: PipelineConfig = inputs["cfg"]
        run: RunInfo = inputs["run"]
        name: str = inputs["phase"]
        if run.force:
            return None
        refs: dict[str, ArtifactRef] = inputs.get("inputs") or {}
        aid, _ = phase_id(name, cfg, {k: r.artifact_id for k, r in refs.items()}, run.options())
        key = f"{name}-{aid}"
        if not reusable(store_for(cfg, run.workdir), node_for(name, cfg, run.options()).spec, name, aid):
            drop_result_record(cfg, run.workdir, key)  # its artifact is gone or damaged: the record must not be trusted
        return key


class InjectedFault(RuntimeError):
    """Raised once by a phase when `<workdir>/.faults/<phase>` exists (retry and recovery drills)."""


def inject_fault(workdir: str, phase: str) -> None:
    """Fail this phase once if a fault file was dropped for it; the file is consumed."""
    marker = Path(workdir) / ".faults" / phase
    try:
        marker.unlink()
    except FileNotFoundError:
        return
    raise InjectedFault(f"injected fault in phase {phase} (from {marker})")


def is_transient(task, task_run, state) -> bool:
    """Retry I/O and resource errors; never configuration, model or input errors."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, (PipelineError, ValueError, TypeError, KeyError, FileNotFoundError))


def _run_phase(phase: str, cfg: PipelineConfig, inputs: dict[str, ArtifactRef], run: RunInfo) -> PhaseResult:
    # One GPU job per host comes from the infrastructure (a `gpu` worker started with --limit 1, Dask GPU
    # resources), not from a lock here.
    inject_fault(run.workdir, phase)
    return execute_phase(phase, cfg, inputs, phase_context(cfg, run), options=run.options(),
                         runtime=run.runtime(cfg, phase), force=run.force)


@functools.lru_cache(maxsize=None)
def phase_task(spec_name: str):
    """The Prefect task of a declared phase (family members share their spec's task)."""
    spec = PHASES[spec_name]
    cached = spec.cacheable and spec.source is None

    def run_phase(phase: str, cfg: PipelineConfig, inputs: dict[str, ArtifactRef], run: RunInfo) -> PhaseResult:
        return _run_phase(phase, cfg, inputs, run)

    run_phase.__name__ = f"{spec_name}_task"
    run_phase.__doc__ = spec.description
    return task(
        run_phase,
        name=spec_name,
        task_run_name="{phase}",
        cache_policy=ArtifactIdPolicy() if cached else NO_CACHE,
        persist_result=True,
        result_serializer="json",
        retries=2,
        retry_delay_seconds=RETRY_DELAYS,
        retry_condition_fn=is_transient,
        tags=[f"pool:{spec.pool}"],
    )


def report_markdown(result: PhaseResult, tracker, report_name: str = "report.md") -> str:
    status = "cache hit (no work done)" if result.cache_hit else "computed"
    url = tracker.run_url(result.mlflow_run_id) if result.mlflow_run_id else None
    lines = [
        f"# {result.phase}",
        "",
        f"- artifact id: `{result.artifact_id}`",
        f"- path: `{result.path}`",
        f"- status: **{status}**",
        f"- MLflow run: {f'[{result.mlflow_run_id}]({url})' if url and url.startswith('http') else (url or 'tracking off')}",
        *[f"- {k}: {v}" for k, v in sorted(result.info.items())],
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:g} |" for k, v in sorted(result.metrics.items())],
    ]
    report = Path(result.path) / report_name
    if report.is_file():
        lines += ["", "---", "", report.read_text()[:20000]]
    return "\n".join(lines)


def finish_phase(state, node: PhaseNode, cfg: PipelineConfig, run: RunInfo) -> PhaseResult:
    """Result of a phase task state; a Prefect cache hit is tracked here (its task body never ran)."""
    result: PhaseResult = state.result()
    if state.name == "Cached":
        tracker = tracker_for(cfg, run.workdir)
        run_id = tracker.log_phase(run.parent_run_id, node.name, result.artifact_id, True,
                                   node.spec.params(cfg, run.options(), node.instance or None), result.metrics)
        result = result.model_copy(update={"cache_hit": True, "mlflow_run_id": run_id})
    return publish_result(result, node, cfg, run)


def publish_result(result: PhaseResult, node: PhaseNode, cfg: PipelineConfig, run: RunInfo) -> PhaseResult:
    """The phase's Prefect markdown artifact and its entry in the run record."""
    try:
        create_markdown_artifact(
            report_markdown(result, tracker_for(cfg, run.workdir)),
            key=f"{node.name.replace('_', '-').lower()}-report",
            description=f"{node.name}: {result.artifact_id[:12]}",
        )
    except Exception as exc:  # the UI summary must never fail a run
        print(f"warning: could not create the Prefect artifact for {node.name}: {exc}")
    if result.info.get("prefect_tags"):  # e.g. drift:data, so an automation can alert on the flow run
        add_flow_run_tags(result.info["prefect_tags"].split(","))
    record_phase(run, result)
    return result


def add_flow_run_tags(tags: list[str]) -> None:
    """Add tags to the current flow run (never fails the run)."""
    from prefect.client.orchestration import get_client

    if not rt_flow_run.id:
        return
    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(rt_flow_run.id)
            client.update_flow_run(rt_flow_run.id, tags=sorted(set(current.tags or []) | {t.strip() for t in tags}))
    except Exception as exc:  # noqa: BLE001 - a tag is a convenience
        print(f"warning: could not tag the flow run with {tags}: {exc}")


def drop_result_record(cfg: PipelineConfig, workdir: str, key: str) -> None:
    """Delete the Prefect result record stored under `key`, if any."""
    import fsspec

    uri = Workspace(Path(workdir)).results_uri(cfg)
    fs, root = fsspec.core.url_to_fs(uri)
    path = f"{root.rstrip('/')}/{key}"
    if fs.exists(path):
        fs.rm(path)


def results_storage(cfg: PipelineConfig, workdir: str):
    """Prefect result storage: a local folder (default) or a remote fsspec URI."""
    uri = Workspace(Path(workdir)).results_uri(cfg)
    if "://" in uri and not uri.startswith("file://"):
        from prefect.filesystems import RemoteFileSystem

        return RemoteFileSystem(basepath=uri)
    return Path(uri.removeprefix("file://"))


def run_node(node: PhaseNode, cfg: PipelineConfig, results: dict[str, PhaseResult], run: RunInfo) -> PhaseResult:
    """Run one node of the DAG, with the results of its inputs: dispatched to the `gpu` pool as a child flow
    run (a `gpu` phase, when a server with a `phase/gpu` deployment and a worker exist and the artifact is
    not complete yet), else as its Prefect task here, its items first sharded over Dask when configured."""
    inputs = {k: ArtifactRef.model_validate(results[dep].model_dump()) for k, dep in node.inputs.items()}
    if node.spec.pool == "gpu" and cfg.runtime.dispatch_gpu and not run.in_process:
        aid = full_artifact_id(node, cfg, inputs, run)
        cached = node.spec.cacheable and not run.force and store_for(cfg, run.workdir).is_complete(node.name, aid)
        if not cached and gpu_deployment() is not None:
            return publish_result(dispatch(node, cfg, inputs, run, aid), node, cfg, run)
    if node.spec.sharding is not None and cfg.runtime.task_runner == "dask":
        shard_node(node, cfg, inputs, run)
    configured = phase_task(node.spec.name).with_options(
        result_storage=results_storage(cfg, run.workdir), retries=cfg.runtime.task_retries)
    state = configured(phase=node.name, cfg=cfg, inputs=inputs, run=run, return_state=True)
    return finish_phase(state, node, cfg, run)
