"""Open and close a flow run: the MLflow parent run, the run record, the summary `--json` prints."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect.runtime import flow_run as rt_flow_run

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import plan_order
from pipeline.core.runner import PhaseResult
from pipeline.core.runs import RunRecord
from pipeline.core.store import ArtifactRef
from pipeline.core.workspace import Workspace
from pipeline_tasks.phase import RunInfo, run_node, tracker_for


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _flow_run_id() -> str:
    return str(rt_flow_run.id) if rt_flow_run.id else "local"


def begin_flow(name: str, cfg: PipelineConfig, workdir: str, dataset_root: str | None, fmt: str | None,
               progress: bool = True) -> RunInfo:
    """Prepare the work dir and the MLflow parent run (re-attached when the flow run is retried)."""
    from pipeline.core.workspace import setup_environment

    ws = setup_environment(workdir)
    flow_run_id = _flow_run_id()
    tracker = tracker_for(cfg, str(ws.root))
    parent = tracker.start_flow_run(
        flow_run_id, name,
        {"dataset": dataset_root, "format": fmt, "workdir": str(ws.root), **cfg.model_dump(mode="json")},
    )
    run = RunInfo(workdir=str(ws.root), dataset_root=str(Path(dataset_root).resolve()) if dataset_root else None,
                  format=fmt, parent_run_id=parent, progress=progress)
    record = RunRecord.load(run.workdir, flow_run_id) or RunRecord(
        flow_run_id=flow_run_id, flow=name, config=cfg.model_dump(mode="json"), started_at=_now())
    record.run = run.model_dump()
    record.status = "RUNNING"
    record.save(run.workdir)
    return run


def record_phase(run: RunInfo, result: PhaseResult) -> None:
    record = RunRecord.load(run.workdir, _flow_run_id())
    if record is not None:
        ref = ArtifactRef.model_validate(result.model_dump()).model_dump()
        record.phases[result.phase] = {**ref, "metrics": result.metrics, "info": result.info}
        record.save(run.workdir)


def end_flow(cfg: PipelineConfig, run: RunInfo, results: dict[str, PhaseResult], ok: bool = True) -> dict[str, Any]:
    """Close the MLflow parent run and the run record; the summary the CLI prints with --json."""
    tracker_for(cfg, run.workdir).end_flow_run(run.parent_run_id, "FINISHED" if ok else "FAILED")
    record = RunRecord.load(run.workdir, _flow_run_id())
    if record is not None:
        record.status, record.finished_at = ("COMPLETED" if ok else "FAILED"), _now()
        record.save(run.workdir)
    return {
        "flow_run_id": str(rt_flow_run.id) if rt_flow_run.id else None,
        "mlflow_run_id": run.parent_run_id,
        "workdir": run.workdir,
        "tracking_uri": Workspace(Path(run.workdir)).tracking_uri(cfg) if cfg.tracking.enabled else None,
        "phases": {
            name: {"artifact_id": r.artifact_id, "path": r.path, "cache_hit": r.cache_hit, "metrics": r.metrics,
                   "info": r.info, "mlflow_run_id": r.mlflow_run_id}
            for name, r in results.items()
        },
    }


def run_dag(targets: tuple[str, ...], cfg: PipelineConfig, run: RunInfo) -> dict[str, PhaseResult]:
    """Run the phases `targets` need, in order, each as its cached Prefect task (wiring by name)."""
    results: dict[str, PhaseResult] = {}
    for node in plan_order(cfg, targets, run.options()):
        results[node.name] = run_node(node, cfg, results, run)
    return results


def run_pipeline(name: str, cfg: PipelineConfig, workdir: str, dataset: str | None, fmt: str | None,
                 progress: bool, targets: tuple[str, ...]) -> dict[str, Any]:
    """The body every flow shares: open the tracking, run the DAG to `targets`, close it (FAILED on error)."""
    from pipeline.core.gc import run_guard

    with run_guard(Path(workdir).resolve()):  # `pipeline gc` never collects under a live run
        run = begin_flow(name, cfg, workdir, dataset, fmt, progress)
        try:
            results = run_dag(targets, cfg, run)
            seeds = run_seeds(targets, cfg, run, results)
        except BaseException:
            end_flow(cfg, run, {}, ok=False)
            raise
        summary = end_flow(cfg, run, results)
        return {**summary, "seeds": seeds} if seeds else summary


SEEDED = ("teacher", "student", "student_no_teacher", "finetune")


def run_seeds(targets: tuple[str, ...], cfg: PipelineConfig, run: RunInfo,
              results: dict[str, PhaseResult]) -> dict[str, Any]:
    """`train.seeds` > 1: the training phases again with seeds train.seed + 1, ...; per model its test top-1
    per seed, mean and spread (max - min). The first seed's results stay the run's (record, summary)."""
    from pipeline.core.seeds import seed_summary

    wanted = tuple(t for t in SEEDED if t in results)
    if cfg.train.seeds <= 1 or not wanted:
        return {}
    per_seed = [{k: results[k].metrics for k in wanted}]
    for i in range(1, cfg.train.seeds):
        other = cfg.model_copy(deep=True)
        other.train.seed = cfg.train.seed + i
        extra = run_dag(wanted, other, run)
        per_seed.append({k: extra[k].metrics for k in wanted if k in extra})
    for result in results.values():  # the run record keeps the first seed's phases
        record_phase(run, result)
    return seed_summary([cfg.train.seed + i for i in range(cfg.train.seeds)], per_seed)
