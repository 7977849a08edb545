"""Phase registry and the phase runner shared by Prefect tasks, benchmarks and tests.

A phase is (name, code version, the config slice it depends on, its input phases, a run
function). `execute_phase` computes the artifact id, reuses a complete artifact (a cache hit) or
runs the phase into a staging directory, commits it with its lineage, and tracks it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.core.config import PipelineConfig
from pipeline.data.dataset import HashCache, snapshot, snapshot_id, write_snapshot
from pipeline.core.hashing import artifact_id
from pipeline.core.store import ArtifactRef, ArtifactStore
from pipeline.core.tracking import NullTracker, Tracker

RunFn = Callable[[dict[str, Path], dict[str, Any], Path, dict[str, Any]], dict[str, float]]


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    version: str  # bump when the phase's code changes its output
    inputs: tuple[str, ...]
    params: Callable[[PipelineConfig, dict[str, Any]], dict[str, Any]]
    run: RunFn  # (input dirs, params, out_dir, runtime) -> metrics
    report_files: tuple[str, ...] = ()  # logged to MLflow; the first .md one is the phase report
    pool: str = "cpu"

    def artifact_id(self, cfg: PipelineConfig, inputs: dict[str, ArtifactRef], options: dict[str, Any]) -> str:
        return artifact_id(self.name, self.version, self.params(cfg, options), [r.artifact_id for r in inputs.values()])


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
    mlflow_run_id: str | None = None
    path: str = ""


# -- phase run functions (import heavy modules lazily) -------------------------------------------


def _run_audit(inputs: dict[str, Path], params: dict[str, Any], out_dir: Path, runtime: dict[str, Any]) -> dict:
    from pipeline.data.audit import run_audit
    from pipeline.core.config import AuditConfig, DataConfig

    return run_audit(
        Path(runtime["dataset_root"]), params["format"], DataConfig(**params["data"]), AuditConfig(**params["audit"]),
        out_dir, progress=runtime.get("progress", True),
    )


def _run_split(inputs: dict[str, Path], params: dict[str, Any], out_dir: Path, runtime: dict[str, Any]) -> dict:
    from pipeline.core.config import SplitConfig
    from pipeline.data.split import run_split

    return run_split(inputs["audit"] / "manifest.parquet", SplitConfig(**params["split"]), out_dir)


def _run_crops(inputs: dict[str, Path], params: dict[str, Any], out_dir: Path, runtime: dict[str, Any]) -> dict:
    from pipeline.core.config import CropsConfig, DetectConfig
    from pipeline.retrieval.crops import run_crops

    cache = runtime.get("item_cache")
    return run_crops(
        inputs["split"] / "split.parquet", Path(runtime["dataset_root"]), DetectConfig(**params["detect"]),
        CropsConfig(**params["crops"]), out_dir, Path(cache) / "crops" if cache else None,
        progress=runtime.get("progress", True), max_pixels=params["max_pixels"],
    )


def _run_contexts(inputs: dict[str, Path], params: dict[str, Any], out_dir: Path, runtime: dict[str, Any]) -> dict:
    from pipeline.retrieval.contexts import run_contexts

    return run_contexts(inputs["crops"], out_dir)


def _run_embeddings(inputs: dict[str, Path], params: dict[str, Any], out_dir: Path, runtime: dict[str, Any]) -> dict:
    from pipeline.core.config import EmbedConfig
    from pipeline.retrieval.embed import run_embeddings

    cache = runtime.get("item_cache")
    return run_embeddings(inputs["crops"], inputs["contexts"], EmbedConfig(**params["embed"]), out_dir,
                          item_cache=Path(cache) / "embeddings" if cache else None,
                          device=runtime.get("device", "auto"), progress=runtime.get("progress", True))


def _run_index(inputs: dict[str, Path], params: dict[str, Any], out_dir: Path, runtime: dict[str, Any]) -> dict:
    from pipeline.core.config import IndexConfig
    from pipeline.retrieval.index import run_index

    return run_index(inputs["embeddings"], inputs["crops"], inputs["contexts"], IndexConfig(**params["index"]), out_dir)


def _run_validation(inputs: dict[str, Path], params: dict[str, Any], out_dir: Path, runtime: dict[str, Any]) -> dict:
    import pyarrow.parquet as pq

    from pipeline.retrieval.embed import load_embeddings
    from pipeline.retrieval.retrieve import Retriever
    from pipeline.retrieval.validate import validate

    ids, x = load_embeddings(inputs["embeddings"])
    retriever = Retriever.open(inputs["index"])
    meta = {r["crop_id"]: r for r in retriever.metadata}
    defects = dict(zip(*pq.read_table(inputs["crops"] / "crops.parquet", columns=["crop_id", "defects"]).to_pydict().values()))
    rows = [{**meta[c], "defects": defects.get(c)} for c in ids]
    emb = json.loads((inputs["embeddings"] / "embedder.json").read_text(encoding="utf-8"))
    concat = emb.get("fusion", {}).get("mode") == "concat"
    return validate(x, rows, out_dir, k=params["k"], search=retriever.search, seed=params["seed"],
                    image_dims=emb.get("image_dim") if concat else None)


PHASES: dict[str, PhaseSpec] = {
    "audit": PhaseSpec(
        name="audit",
        version="1",
        inputs=("dataset",),
        params=lambda cfg, opt: {
            "format": opt["format"],
            "data": cfg.data.model_dump(mode="json"),
            "audit": cfg.audit.model_dump(mode="json", exclude={"workers"}),
        },
        run=_run_audit,
        report_files=("report.md", "class_hist.png", "zone_hist.png", "quarantine.parquet"),
    ),
    "split": PhaseSpec(
        name="split",
        version="1",
        inputs=("audit",),
        params=lambda cfg, opt: {"split": cfg.split.model_dump(mode="json")},
        run=_run_split,
        report_files=("report.md",),
    ),
    "crops": PhaseSpec(
        name="crops",
        version="1",
        inputs=("split",),
        params=lambda cfg, opt: {
            "detect": cfg.detect.model_dump(mode="json"),
            "crops": cfg.crops.model_dump(mode="json"),
            "max_pixels": cfg.audit.max_pixels,
        },
        run=_run_crops,
        report_files=("report.md", "contact_sheet.png", "skipped.parquet"),
        pool="gpu",
    ),
    "contexts": PhaseSpec(
        name="contexts",
        version="1",
        inputs=("crops",),
        params=lambda cfg, opt: {},
        run=_run_contexts,
        report_files=("report.md",),
    ),
    "embeddings": PhaseSpec(
        name="embeddings",
        version="1",
        inputs=("crops", "contexts"),
        params=lambda cfg, opt: {"embed": cfg.embed.model_dump(mode="json")},
        run=_run_embeddings,
        report_files=("report.md", "embedder.json"),
        pool="gpu",
    ),
    "index": PhaseSpec(
        name="index",
        version="2",  # 2: IVF-PQ is 4-bit fast-scan PQ with a refine stage
        inputs=("embeddings", "crops", "contexts"),
        params=lambda cfg, opt: {"index": cfg.index.model_dump(mode="json")},
        run=_run_index,
        report_files=("report.md", "index.json"),
    ),
    "validation": PhaseSpec(
        name="validation",
        version="2",  # 2: image_only_* metrics for concatenated embeddings
        inputs=("index", "embeddings", "crops"),
        params=lambda cfg, opt: {"k": 5, "seed": 0},
        run=_run_validation,
        report_files=("report.md", "metrics.json", "pca.png", "tsne.png", "examples.png"),
    ),
}


def _result(ref: ArtifactRef, store: ArtifactStore, metrics: dict, run_id: str | None) -> PhaseResult:
    path = str(store.local_path(ref)) if store.is_local else ref.uri
    return PhaseResult(**ref.model_dump(), metrics=metrics, mlflow_run_id=run_id, path=path)


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def snapshot_dataset(root: Path, ctx: PhaseContext, hash_cache: Path | None = None) -> PhaseResult:
    """The raw dataset as an artifact: its id is the hash of its file list."""
    t0 = time.perf_counter()
    rows = snapshot(Path(root), HashCache(hash_cache), progress=ctx.progress)
    aid = snapshot_id(rows)
    metrics = {"n_files": float(len(rows)), "bytes": float(sum(max(r["size"], 0) for r in rows))}
    hit = ctx.store.is_complete("dataset", aid)
    if hit:
        ref = ctx.store.ref("dataset", aid, cache_hit=True)
    else:
        with ctx.store.staging("dataset") as tmp:
            write_snapshot(rows, tmp)
            (tmp / "source.json").write_text(json.dumps({"root": str(Path(root).resolve())}, indent=2))
            ref = ctx.store.commit(tmp, _lineage("dataset", aid, {"root": str(Path(root).resolve())}, {}, metrics, ctx))
    metrics["seconds"] = time.perf_counter() - t0
    run_id = ctx.tracker.log_phase(ctx.parent_run_id, "dataset", aid, hit, {"root": str(root)}, metrics)
    return _result(ref, ctx.store, metrics, run_id)


def _lineage(phase: str, aid: str, params: dict, inputs: dict[str, ArtifactRef], metrics: dict,
             ctx: PhaseContext, version: str = "1", mlflow_run_id: str | None = None) -> dict[str, Any]:
    return {
        "phase": phase,
        "artifact_id": aid,
        "phase_version": version,
        "params": params,
        "inputs": [{"name": k, "phase": r.phase, "artifact_id": r.artifact_id} for k, r in sorted(inputs.items())],
        "metrics": metrics,
        "prefect": {"flow_run_id": ctx.flow_run_id, "task_run_id": ctx.task_run_id},
        "mlflow_run_id": mlflow_run_id,
    }


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

    `options` are id-relevant parameters that are not in the config (e.g. the dataset format);
    `runtime` are id-irrelevant ones (e.g. where the dataset lies on this machine).
    """
    spec = PHASES[name]
    missing = set(spec.inputs) - set(inputs)
    if missing:
        raise ValueError(f"phase {name} needs inputs {sorted(missing)}")
    options = options or {}
    params = spec.params(cfg, options)
    aid = artifact_id(spec.name, spec.version, params, [r.artifact_id for r in inputs.values()])
    store = ctx.store

    if not force and store.is_complete(name, aid):
        lineage = store.read_lineage(name, aid)
        metrics = _numeric(lineage.get("metrics", {}))
        run_id = ctx.tracker.log_phase(ctx.parent_run_id, name, aid, True, params, metrics)
        return _result(store.ref(name, aid, cache_hit=True), store, metrics, run_id)

    input_dirs = {k: store.local_path(r) for k, r in inputs.items()}
    t0 = time.perf_counter()
    with store.staging(name) as tmp:
        metrics = _numeric(spec.run(input_dirs, params, tmp, {"progress": ctx.progress, **(runtime or {})}) or {})
        metrics["seconds"] = round(time.perf_counter() - t0, 3)
        dataset = None
        if (tmp / "manifest.parquet").is_file() or (tmp / "split.parquet").is_file():
            table = tmp / ("split.parquet" if (tmp / "split.parquet").is_file() else "manifest.parquet")
            dataset = {"table_path": str(table), "name": f"{name}-{aid[:12]}", "digest": aid,
                       "source": str(store.dir_uri(name, aid)), "context": name}
        run_id = ctx.tracker.log_phase(
            ctx.parent_run_id, name, aid, False, params, metrics,
            artifact_dir=tmp, artifact_files=list(spec.report_files), dataset=dataset,
        )
        ref = store.commit(tmp, _lineage(name, aid, params, inputs, metrics, ctx, spec.version, run_id), replace=force)
    return _result(ref, store, metrics, run_id)
