"""What every phase task shares: the artifact-id cache policy, the run context, retries, reports.

The Prefect cache key of a phase task IS its artifact id (`<phase>-<artifact_id>`), computed from
the phase name, its code version, the config slice it reads and the ids of its input artifacts,
never from the run id. When the artifact is not complete in the store, the result record under
that key is dropped first, so a cached reference to a deleted artifact is never trusted.
"""
from __future__ import annotations

import contextlib
import functools
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.runtime import flow_run as rt_flow_run
from pydantic import BaseModel

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import PipelineError
from pipeline.core.phases import PHASES, PhaseContext, PhaseResult, execute_phase
from pipeline.core.store import ArtifactRef, ArtifactStore
from pipeline.core.tracking import MlflowTracker, NullTracker
from pipeline.core.workspace import Workspace


class RunInfo(BaseModel):
    """Per-run values a task needs besides its config and inputs."""

    workdir: str
    dataset_root: str | None = None
    format: str | None = None
    parent_run_id: str | None = None
    progress: bool = True
    force: bool = False

    def options(self) -> dict[str, Any]:
        return {"format": self.format}


@functools.lru_cache(maxsize=8)
def _tracker(uri: str, experiment: str, artifact_root: str):
    return MlflowTracker(uri, experiment, artifact_root=Path(artifact_root))


def tracker_for(cfg: PipelineConfig, workdir: str):
    if not cfg.tracking.enabled:
        return NullTracker()
    ws = Workspace(Path(workdir))
    return _tracker(ws.tracking_uri(cfg), cfg.tracking.experiment, str(ws.mlflow_artifacts))


def store_for(cfg: PipelineConfig, workdir: str) -> ArtifactStore:
    ws = Workspace(Path(workdir))
    return ArtifactStore(ws.artifact_uri(cfg), cache_dir=ws.cache / "artifacts")


def phase_context(cfg: PipelineConfig, run: RunInfo) -> PhaseContext:
    ctx = TaskRunContext.get()
    return PhaseContext(
        store=store_for(cfg, run.workdir),
        tracker=tracker_for(cfg, run.workdir),
        parent_run_id=run.parent_run_id,
        flow_run_id=str(rt_flow_run.id) if rt_flow_run.id else None,
        task_run_id=str(ctx.task_run.id) if ctx and ctx.task_run else None,
        progress=run.progress,
    )


@dataclass
class ArtifactIdPolicy(CachePolicy):
    """Cache key = the phase's artifact id, offered only while that artifact is complete."""

    phase: str = ""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        cfg: PipelineConfig = inputs["cfg"]
        run: RunInfo = inputs["run"]
        if run.force:
            return None
        refs: dict[str, ArtifactRef] = inputs.get("inputs") or {}
        spec = PHASES[self.phase]
        aid = spec.artifact_id(cfg, refs, run.options())
        key = f"{self.phase}-{aid}"
        if not store_for(cfg, run.workdir).is_complete(self.phase, aid):
            drop_result_record(cfg, run.workdir, key)  # its artifact is gone: the record must not be trusted
        return key


def gpu_slot():
    """The per-host GPU concurrency limit `gpu-host-<hostname>` (created by `pipeline up`, 1 slot)."""
    from prefect.concurrency.sync import concurrency

    return concurrency(f"gpu-host-{socket.gethostname()}", occupy=1, strict=False)


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
    """Retry I/O and resource errors; never configuration or input-shape errors."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, (PipelineError, ValueError, TypeError, KeyError, FileNotFoundError))


def phase_task(phase: str, pool: str | None = None):
    """A Prefect task running library phase `phase`, cached by its artifact id."""
    spec = PHASES[phase]

    def run_phase(cfg: PipelineConfig, inputs: dict[str, ArtifactRef], run: RunInfo) -> PhaseResult:
        # GPU phases hold the host's GPU slot, so two runs on one GPU machine queue instead of OOM.
        guard = gpu_slot() if (pool or spec.pool) == "gpu" else contextlib.nullcontext()
        with guard:
            inject_fault(run.workdir, phase)
            return execute_phase(
                phase, cfg, inputs, phase_context(cfg, run), options=run.options(),
                runtime={"dataset_root": run.dataset_root, "device": cfg.runtime.device,
                         "item_cache": str(Workspace(Path(run.workdir)).cache / "items")},
                force=run.force,
            )

    run_phase.__name__ = f"{phase}_task"
    return task(
        run_phase,
        name=phase,
        cache_policy=ArtifactIdPolicy(phase=phase),
        persist_result=True,
        result_serializer="json",
        retries=2,
        retry_delay_seconds=[2, 10],
        retry_condition_fn=is_transient,
        tags=[f"pool:{pool or spec.pool}"],
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
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:g} |" for k, v in sorted(result.metrics.items())],
    ]
    report = Path(result.path) / report_name
    if report.is_file():
        lines += ["", "---", "", report.read_text()[:20000]]
    return "\n".join(lines)


def finish_phase(state, phase: str, cfg: PipelineConfig, run: RunInfo) -> PhaseResult:
    """Result of a phase task state; a Prefect cache hit is tracked here (its task body never ran)."""
    result: PhaseResult = state.result()
    if state.name == "Cached":
        tracker = tracker_for(cfg, run.workdir)
        run_id = tracker.log_phase(run.parent_run_id, phase, result.artifact_id, True,
                                   PHASES[phase].params(cfg, run.options()), result.metrics)
        result = result.model_copy(update={"cache_hit": True, "mlflow_run_id": run_id})
    try:
        create_markdown_artifact(
            report_markdown(result, tracker_for(cfg, run.workdir)),
            key=f"{phase.replace('_', '-')}-report",
            description=f"{phase}: {result.artifact_id[:12]}",
        )
    except Exception as exc:  # the UI summary must never fail a run
        print(f"warning: could not create the Prefect artifact for {phase}: {exc}")
    record_phase(run, result)
    return result


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



def begin_flow(name: str, cfg: PipelineConfig, workdir: str, dataset_root: str | None, fmt: str | None,
               progress: bool = True) -> RunInfo:
    """Prepare the work dir and the MLflow parent run (re-attached when the flow run is retried)."""
    from pipeline.core.workspace import setup_environment

    ws = setup_environment(workdir)
    flow_run_id = str(rt_flow_run.id) if rt_flow_run.id else "local"
    tracker = tracker_for(cfg, str(ws.root))
    parent = tracker.start_flow_run(
        flow_run_id, name,
        {"dataset": dataset_root, "format": fmt, "workdir": str(ws.root), **cfg.model_dump(mode="json")},
    )
    run = RunInfo(workdir=str(ws.root), dataset_root=str(Path(dataset_root).resolve()) if dataset_root else None,
                  format=fmt, parent_run_id=parent, progress=progress)
    record = RunRecord.load(run.workdir, flow_run_id) or RunRecord(flow_run_id=flow_run_id, flow=name,
                                                                    config=cfg.model_dump(mode="json"))
    record.run = run.model_dump()
    record.save(run.workdir)
    return run


class RunRecord(BaseModel):
    """What a flow run used and produced, phase by phase: the input of `pipeline run-phase`."""

    flow_run_id: str
    flow: str
    config: dict[str, Any]
    run: dict[str, Any] = {}
    phases: dict[str, dict[str, Any]] = {}

    @staticmethod
    def path(workdir: str, flow_run_id: str) -> Path:
        return Workspace(Path(workdir)).runs / f"{flow_run_id}.json"

    @classmethod
    def load(cls, workdir: str, flow_run_id: str) -> "RunRecord | None":
        p = cls.path(workdir, flow_run_id)
        return cls.model_validate_json(p.read_text()) if p.is_file() else None

    def save(self, workdir: str) -> None:
        p = self.path(workdir, self.flow_run_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(p)


def record_phase(run: RunInfo, result: PhaseResult) -> None:
    flow_run_id = str(rt_flow_run.id) if rt_flow_run.id else "local"
    record = RunRecord.load(run.workdir, flow_run_id)
    if record is not None:
        record.phases[result.phase] = ArtifactRef.model_validate(result.model_dump()).model_dump()
        record.save(run.workdir)


def end_flow(cfg: PipelineConfig, run: RunInfo, results: dict[str, PhaseResult], ok: bool = True) -> dict[str, Any]:
    """Close the MLflow parent run and build the summary the CLI prints with --json."""
    tracker_for(cfg, run.workdir).end_flow_run(run.parent_run_id, "FINISHED" if ok else "FAILED")
    return {
        "flow_run_id": str(rt_flow_run.id) if rt_flow_run.id else None,
        "mlflow_run_id": run.parent_run_id,
        "workdir": run.workdir,
        "tracking_uri": Workspace(Path(run.workdir)).tracking_uri(cfg) if cfg.tracking.enabled else None,
        "phases": {
            name: {"artifact_id": r.artifact_id, "path": r.path, "cache_hit": r.cache_hit, "metrics": r.metrics,
                   "mlflow_run_id": r.mlflow_run_id}
            for name, r in results.items()
        },
    }


def run_pipeline(name: str, cfg: PipelineConfig, workdir: str, dataset: str | None, fmt: str | None,
                 progress: bool, phases) -> dict[str, Any]:
    """The body every flow shares: open the tracking, run `phases(cfg, run)`, close it (FAILED on error)."""
    run = begin_flow(name, cfg, workdir, dataset, fmt, progress)
    try:
        results = phases(cfg, run)
    except BaseException:
        end_flow(cfg, run, {}, ok=False)
        raise
    return end_flow(cfg, run, results)


def run_cached(task_obj, phase: str, cfg: PipelineConfig, inputs: dict[str, ArtifactRef], run: RunInfo) -> PhaseResult:
    """Call a phase task with the configured result storage; mark and track Prefect cache hits."""
    configured = task_obj.with_options(result_storage=results_storage(cfg, run.workdir),
                                       retries=cfg.runtime.task_retries)
    state = configured(cfg=cfg, inputs=inputs, run=run, return_state=True)
    return finish_phase(state, phase, cfg, run)
