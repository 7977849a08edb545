"""The phase runner shared by Prefect tasks, benchmarks and tests.

`execute_phase` computes a phase's artifact id, reuses a complete artifact (a cache hit) or runs
the phase into a staging directory, checks its declared outputs, commits it with its lineage and
tracks it. Files inside an artifact depend only on its inputs and params; what depends on the run
(timings, per-item cache counts, where the dataset lies) goes to lineage.json and MLflow.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.core.integrity import disk_full_cause, disk_full_error, staged_bytes
from pipeline.core.phases import PhaseNode, PhaseRun, PhaseSpec
from pipeline.core.store import ArtifactNotFound, ArtifactRef, ArtifactStore
from pipeline.core.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)
# Files checked against their lineage before an artifact is reused: the phase's declared outputs and
# every model or index file (a corrupt one is a miss, recomputed, never read as data).
CHECKED_SUFFIXES = (".safetensors", ".faiss", ".onnx", ".bin")


@dataclass
class PhaseContext:
    """Where a phase runs: store, tracker and the ids that go into lineage."""

    store: ArtifactStore
    tracker: Tracker = field(default_factory=NullTracker)
    parent_run_id: str | None = None
    flow_run_id: str | None = None
    task_run_id: str | None = None
    progress: bool = True


class PhaseResult(ArtifactRef):
    metrics: dict[str, float] = {}
    info: dict[str, str] = {}
    mlflow_run_id: str | None = None
    path: str = ""


class PhaseOutputMissing(RuntimeError):
    """A phase finished without writing a file it declares (a bug in the phase)."""


def split_metrics(values: dict[str, Any] | None) -> tuple[dict[str, float], dict[str, str]]:
    """Numbers are metrics; strings are info (e.g. which detector was used and why)."""
    metrics: dict[str, float] = {}
    info: dict[str, str] = {}
    for k, v in (values or {}).items():
        if isinstance(v, bool):
            metrics[k] = float(v)
        elif isinstance(v, (int, float)):
            metrics[k] = float(v)
        elif isinstance(v, str):
            info[k] = v
    return metrics, info


def node_for(name: str, cfg: PipelineConfig, options: dict[str, Any] | None = None) -> PhaseNode:
    """The node of phase `name` (a plain phase, or a family member like `teacher_frontal`)."""
    from pipeline.core.phases import nodes

    graph = nodes(cfg, options)
    if name not in graph:
        raise KeyError(f"unknown phase {name!r}; phases: {', '.join(graph)}")
    return graph[name]


def resolve_options(spec: PhaseSpec, cfg: PipelineConfig, options: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """A phase with a source (the dataset, the detector weights) looks outside the store for its id."""
    if spec.source is None:
        return options
    return {**options, **spec.source(cfg, runtime)}


def _result(ref: ArtifactRef, store: ArtifactStore, metrics: dict, info: dict, run_id: str | None) -> PhaseResult:
    path = str(store.local_path(ref)) if store.is_local else ref.uri
    return PhaseResult(**ref.model_dump(), metrics=metrics, info=info, mlflow_run_id=run_id, path=path)


def _lineage(node: PhaseNode, aid: str, params: dict, inputs: dict[str, ArtifactRef], metrics: dict,
             info: dict, runtime: dict[str, Any], ctx: PhaseContext, run_id: str | None) -> dict[str, Any]:
    return {
        "phase": node.name,
        "spec": node.spec.name,
        "artifact_id": aid,
        "phase_version": node.spec.version,
        "params": params,
        "inputs": [{"name": k, "phase": r.phase, "artifact_id": r.artifact_id} for k, r in sorted(inputs.items())],
        "metrics": metrics,
        "info": info,
        "runtime": {k: v for k, v in runtime.items() if isinstance(v, (str, int, float, bool)) or v is None},
        "prefect": {"flow_run_id": ctx.flow_run_id, "task_run_id": ctx.task_run_id},
        "mlflow_run_id": run_id,
    }


def _dataset_record(out_dir: Path, name: str, aid: str, store: ArtifactStore) -> dict[str, Any] | None:
    for table in ("split.parquet", "manifest.parquet"):
        if (out_dir / table).is_file():
            return {"table_path": str(out_dir / table), "name": f"{name}-{aid[:12]}", "digest": aid,
                    "source": str(store.dir_uri(name, aid)), "context": name}
    return None


def checked_files(spec: PhaseSpec, lineage: dict[str, Any]) -> list[str]:
    """What a reuse of the artifact re-hashes: its declared outputs and its model and index files."""
    return sorted({*spec.outputs, *(o["path"] for o in lineage.get("outputs", []) if o["path"].endswith(CHECKED_SUFFIXES))})


def reusable(store: ArtifactStore, spec: PhaseSpec, name: str, aid: str) -> bool:
    """Whether artifact `name/aid` is complete and its checked files match its lineage; a damaged one is
    reported (warning) and is not reusable, so it is recomputed."""
    if not store.is_complete(name, aid):
        return False
    try:
        lineage = store.read_lineage(name, aid)
        problems = store.check(name, aid, checked_files(spec, lineage))
    except (ArtifactNotFound, ValueError, KeyError) as exc:
        problems = [{"path": "lineage.json", "problem": "unreadable", "detail": str(exc)}]
    for p in problems:
        log.warning("artifact %s/%s: %s %s (%s); recomputing it", name, aid[:12], p["path"], p["problem"], p["detail"])
    return not problems


# Heavy phases (pool "gpu": crops, embeddings, training, soft labels, export) on a CPU run one at a time in a process: the
# thread task runner starts independent ones together (teacher and student_no_teacher), and two torch
# phases each using every core slow each other down beyond running in turn (car-damage-coco crops, 2
# cores: 1106 s for both together against 903 s one after the other).
_CPU_HEAVY = threading.Lock()


def _exclusive(spec: PhaseSpec, cfg: PipelineConfig) -> Any:
    if spec.pool != "gpu":
        return contextlib.nullcontext()
    from pipeline.core.device import pick_device

    try:
        device = pick_device(cfg.runtime.device)
    except ValueError:
        return contextlib.nullcontext()  # the phase itself reports the bad device
    return _CPU_HEAVY if device == "cpu" else contextlib.nullcontext()


def execute_phase(
    name: str,
    cfg: PipelineConfig,
    inputs: dict[str, ArtifactRef],
    ctx: PhaseContext,
    options: dict[str, Any] | None = None,
    runtime: dict[str, Any] | None = None,
    force: bool = False,
) -> PhaseResult:
    """Run phase `name` on `inputs`, or reuse its artifact when one with the same id exists.

    `options` are id-relevant values that are not in the config (the dataset format);
    `runtime` are id-irrelevant ones (where the dataset lies on this machine, the work dir).
    """
    node = node_for(name, cfg, options)
    spec = node.spec
    missing = set(node.inputs) - set(inputs)
    if missing:
        raise ValueError(f"phase {name} needs inputs {sorted(missing)}")
    runtime = {"progress": ctx.progress, **(runtime or {})}
    options = resolve_options(spec, cfg, options or {}, runtime)
    params = spec.params(cfg, options, node.instance or None)
    aid = spec.artifact_id(cfg, [r.artifact_id for r in inputs.values()], options, node.instance or None)
    store = ctx.store

    damaged = spec.cacheable and not force and store.is_complete(name, aid) and not reusable(store, spec, name, aid)
    if spec.cacheable and not force and not damaged and store.is_complete(name, aid):
        lineage = store.read_lineage(name, aid)
        metrics, info = split_metrics({**lineage.get("metrics", {}), **lineage.get("info", {})})
        run_id = ctx.tracker.log_phase(ctx.parent_run_id, name, aid, True, params, metrics)
        return _result(store.ref(name, aid, cache_hit=True), store, metrics, info, run_id)

    input_dirs = {k: store.local_path(r) for k, r in inputs.items()}
    with _exclusive(spec, cfg):  # t0 inside: the phase's seconds are its own, not its wait
        t0 = time.perf_counter()
        with store.staging(name) as tmp:
            try:
                run = PhaseRun(inputs=input_dirs, cfg=cfg, params=params, out_dir=tmp, runtime=runtime, store=store,
                               instance=dict(node.instance), artifact_id=aid, name=name)
                metrics, info = split_metrics(spec.run(run))
                absent = [f for f in spec.outputs if not (tmp / f).exists()]
                if absent:
                    raise PhaseOutputMissing(f"phase {name} did not write its declared outputs {absent}")
                metrics["seconds"] = round(time.perf_counter() - t0, 3)
                run_id = ctx.tracker.log_phase(
                    ctx.parent_run_id, name, aid, False, params, metrics,
                    artifact_dir=tmp, artifact_files=list(spec.reports), dataset=_dataset_record(tmp, name, aid, store),
                    **({"steps": run.steps} if run.steps else {}),
                )
                record = _lineage(node, aid, params, inputs, metrics, info, runtime, ctx, run_id)
                ref = store.commit(tmp, record, replace=force or damaged or not spec.cacheable)
            except Exception as exc:  # a full disk: one clear message, never retried; the staging goes
                cause = disk_full_cause(exc)
                if cause is None:
                    raise
                raise disk_full_error(cause, name, tmp, staged_bytes(tmp)) from exc
    return _result(ref, store, metrics, info, run_id)


def phase_id(name: str, cfg: PipelineConfig, input_ids: dict[str, str], options: dict[str, Any] | None = None) -> tuple[str, dict]:
    """(artifact id, params) of phase `name` for these input ids, without running anything."""
    node = node_for(name, cfg, options)
    params = node.spec.params(cfg, options or {}, node.instance or None)
    return node.spec.artifact_id(cfg, list(input_ids.values()), options or {}, node.instance or None), params


def snapshot_dataset(root: Path, ctx: PhaseContext, hash_cache: Path | None = None) -> PhaseResult:
    """The raw dataset as an artifact (the `dataset` phase): its id is the hash of its file list."""
    from pipeline.core.config import PipelineConfig

    runtime = {"dataset_root": str(Path(root).resolve()), "hash_cache": str(hash_cache) if hash_cache else None}
    return execute_phase("dataset", PipelineConfig(), {}, ctx, runtime=runtime)
