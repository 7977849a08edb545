"""Open and close a flow run: the MLflow parent run, the run record, the summary `--json` prints, and
the training manifest of a flow that ran a promotion (`runs/<flow_run_id>.training.yaml`)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import plan_order
from pipeline.core.runner import PhaseResult
from pipeline.core.runs import RunRecord
from pipeline.core.workspace import Workspace
from pipeline_tasks.context import RunInfo, flow_run_id, now, record_phase, store_for, tracker_for
from pipeline_tasks.phase import run_node


def begin_flow(name: str, cfg: PipelineConfig, workdir: str, dataset_root: str | None, fmt: str | None,
               progress: bool = True) -> RunInfo:
    """Prepare the work dir and the MLflow parent run (re-attached when the flow run is retried)."""
    from pipeline.core.workspace import setup_environment

    ws = setup_environment(workdir)
    run_id = flow_run_id()
    tracker = tracker_for(cfg, str(ws.root))
    parent = tracker.start_flow_run(
        run_id, name,
        {"dataset": dataset_root, "format": fmt, "workdir": str(ws.root), **cfg.model_dump(mode="json")},
    )
    run = RunInfo(workdir=str(ws.root), dataset_root=str(Path(dataset_root).resolve()) if dataset_root else None,
                  format=fmt, parent_run_id=parent, progress=progress)
    record = RunRecord.load(run.workdir, run_id) or RunRecord(
        flow_run_id=run_id, flow=name, config=cfg.model_dump(mode="json"), started_at=now())
    record.run = run.model_dump()
    record.status = "RUNNING"
    record.save(run.workdir)
    return run


def end_flow(cfg: PipelineConfig, run: RunInfo, results: dict[str, PhaseResult], ok: bool = True) -> dict[str, Any]:
    """Close the MLflow parent run and the run record; the summary the CLI prints with --json. A flow that
    ran a promotion (even one that failed later) leaves its training manifest first."""
    run_id = flow_run_id()
    summary = {
        "flow_run_id": None if run_id == "local" else run_id,
        "mlflow_run_id": run.parent_run_id,
        "workdir": run.workdir,
        "tracking_uri": Workspace(Path(run.workdir)).tracking_uri(cfg) if cfg.tracking.enabled else None,
        "phases": {
            name: {"artifact_id": r.artifact_id, "path": r.path, "cache_hit": r.cache_hit, "metrics": r.metrics,
                   "info": r.info, "mlflow_run_id": r.mlflow_run_id}
            for name, r in results.items()
        },
    }
    manifest = write_run_manifest(cfg, run, summary) if "promotion" in results else None
    tracker_for(cfg, run.workdir).end_flow_run(run.parent_run_id, "FINISHED" if ok else "FAILED")
    record = RunRecord.load(run.workdir, run_id)
    if record is not None:
        record.status, record.finished_at = ("COMPLETED" if ok else "FAILED"), now()
        if manifest is not None and "promotion" in record.phases:
            promotion = record.phases["promotion"]
            promotion["info"] = {**(promotion.get("info") or {}), "training_manifest": str(manifest)}
        record.save(run.workdir)
    if manifest is not None:
        summary["training_manifest"] = str(manifest)
        promotion = summary["phases"]["promotion"]
        promotion["info"] = {**promotion["info"], "training_manifest": str(manifest)}
    return summary


def write_run_manifest(cfg: PipelineConfig, run: RunInfo, summary: dict[str, Any]) -> Path | None:
    """The training manifest (pipeline.registry.training_manifest) of this flow run, from its summary and the
    data counts its promotion left in its artifact, as runs/<flow_run_id>.training.yaml; also logged to the
    flow's MLflow parent run. Never fails the flow: None (and a warning) when it cannot be written."""
    from pipeline.core.device import pick_device
    from pipeline.registry.training_manifest import (DATA_COUNTS_FILE, MODEL_PHASES, read_data_counts,
                                                     write_training_manifest)

    try:
        store = store_for(cfg, run.workdir)
        phases = {k: dict(v) for k, v in summary["phases"].items()}
        for name in (*MODEL_PHASES, "promotion"):  # the files the manifest reads, local (a remote store's too)
            local = (phases.get(name) or {}).get("path")
            if name in phases and not (local and Path(local).is_dir()):
                with contextlib.suppress(Exception):  # gone: the manifest says less of it
                    phases[name]["path"] = str(store.dir_for(name, phases[name]["artifact_id"]))
        data = {**summary, "flow_run_id": flow_run_id(), "phases": phases,
                "runtime": {"device": pick_device(cfg.runtime.device)}}
        if not any(name in phases for name in MODEL_PHASES):  # `run-phase promotion`: the model it promoted
            with contextlib.suppress(Exception):
                lineage = store.read_lineage("promotion", phases["promotion"]["artifact_id"])
                data["model_inputs"] = {i["phase"]: {"artifact_id": i["artifact_id"],
                                                     "path": str(store.dir_for(i["phase"], i["artifact_id"]))}
                                        for i in lineage["inputs"] if i["phase"] in MODEL_PHASES}
        path = Workspace(Path(run.workdir)).runs / f"{flow_run_id()}.training.yaml"
        write_training_manifest(data, cfg, path, read_data_counts(Path(phases["promotion"]["path"]) / DATA_COUNTS_FILE))
    except Exception as exc:  # noqa: BLE001 - the manifest documents a run, it never fails one
        print(f"warning: could not write the training manifest: {exc}")
        return None
    _log_to_parent_run(cfg, run, path)
    return path


def _log_to_parent_run(cfg: PipelineConfig, run: RunInfo, path: Path) -> None:
    """Attach a file to the flow's MLflow parent run (tracking on; never fails the flow)."""
    tracker = tracker_for(cfg, run.workdir)
    client = getattr(tracker, "client", None)  # MlflowTracker; NullTracker has none
    if client is None or not run.parent_run_id:
        return
    from pipeline.core.tracking import db_lock

    try:
        with db_lock(tracker.uri):
            client.log_artifact(run.parent_run_id, str(path))
    except Exception as exc:  # noqa: BLE001
        print(f"warning: could not log {path.name} to MLflow run {run.parent_run_id}: {exc}")


def run_dag(targets: tuple[str, ...], cfg: PipelineConfig, run: RunInfo,
            results: dict[str, PhaseResult] | None = None) -> dict[str, PhaseResult]:
    """Run the phases `targets` need, in order, each as its cached Prefect task (wiring by name); `results`
    (filled as they finish, so a caller still has them when a phase fails) is returned."""
    results = {} if results is None else results
    for node in plan_order(cfg, targets, run.options()):
        results[node.name] = run_node(node, cfg, results, run)
    return results


def run_pipeline(name: str, cfg: PipelineConfig, workdir: str, dataset: str | None, fmt: str | None,
                 progress: bool, targets: tuple[str, ...]) -> dict[str, Any]:
    """The body every flow shares: open the tracking, run the DAG to `targets`, close it (FAILED on error)."""
    from pipeline.core.gc import run_guard

    with run_guard(Path(workdir).resolve()):  # `pipeline gc` never collects under a live run
        run = begin_flow(name, cfg, workdir, dataset, fmt, progress)
        results: dict[str, PhaseResult] = {}
        try:
            run_dag(targets, cfg, run, results)
            seeds = run_seeds(targets, cfg, run, results)
        except BaseException:
            end_flow(cfg, run, results, ok=False)  # the phases done so far (a promotion's manifest)
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
