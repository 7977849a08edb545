"""Declarations of the data phases: dataset (the raw files), audit, split."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.phases import PhaseRun, PhaseSpec, register


def _fingerprint(cfg: Any, runtime: dict[str, Any]) -> dict[str, Any]:
    """The dataset's id is the hash of its file list (path, size, sha256), wherever it lies."""
    from pipeline.data.dataset import HashCache, snapshot, snapshot_id

    cache = runtime.get("hash_cache")
    rows = snapshot(Path(runtime["dataset_root"]), HashCache(Path(cache) if cache else None),
                    progress=runtime.get("progress", False))
    runtime["_snapshot_rows"] = rows  # reused by the run: the files are hashed once
    return {"fingerprint": snapshot_id(rows)}


def _run_dataset(run: PhaseRun) -> dict[str, Any]:
    from pipeline.data.dataset import write_snapshot

    rows = run.runtime.pop("_snapshot_rows")
    write_snapshot(rows, run.out_dir)
    return {"n_files": len(rows), "bytes": sum(max(r["size"], 0) for r in rows)}


def _run_audit(run: PhaseRun) -> dict[str, Any]:
    from pipeline.data.audit import run_audit

    return run_audit(Path(run.runtime["dataset_root"]), run.params["format"], run.cfg.data, run.cfg.audit,
                     run.out_dir, progress=run.progress)


def _run_split(run: PhaseRun) -> dict[str, Any]:
    from pipeline.data.split import run_split

    return run_split(run.inputs["audit"] / "manifest.parquet", run.cfg.split, run.out_dir)


register(
    PhaseSpec(
        name="dataset", version="2", inputs=(), outputs=("files.parquet",), sections=(),
        run=_run_dataset, source=_fingerprint,
        extra_params=lambda cfg, opt: {"fingerprint": opt.get("fingerprint")},
        description="the raw files: path, size and sha256 of each",
    ),
    PhaseSpec(
        name="audit", version="2", inputs=("dataset",), outputs=("manifest.parquet", "quarantine.parquet"),
        sections=("data", "audit"), runtime_keys=("audit.workers", "audit.isolate", "audit.max_seconds_per_file",
                                                   "audit.max_memory_mb", "data.inbox"), run=_run_audit,
        extra_params=lambda cfg, opt: {"format": opt.get("format")},
        reports=("report.md", "class_hist.png", "zone_hist.png", "quarantine.parquet"),
        description="decode, size, duplicate, licence and annotation checks; the manifest",
    ),
    PhaseSpec(
        name="split", version="2", inputs=("audit",), outputs=("split.parquet",), sections=("split",),
        run=_run_split, reports=("report.md",),
        description="group-aware stratified train/val/test split",
    ),
)
