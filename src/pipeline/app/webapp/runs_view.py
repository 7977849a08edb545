"""What the Runs and Compare pages show, without Streamlit: the run records as rows, each phase's
artifact, cache hit, duration and headline metrics, and the validation artifact's report files."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.diff import TIMING_METRICS, phase_metrics
from pipeline.core.runs import RunRecord
from pipeline.core.store import ArtifactStore

# the figures a phase is judged by, shown first when present
HEADLINE = {
    "dataset": ("n_files",),
    "audit": ("n_accepted", "n_quarantined", "n_near_duplicates"),
    "split": ("n_train", "n_val", "n_test"),
    "crops": ("n_crops", "n_items", "n_items_processed"),
    "contexts": ("n_contexts",),
    "embeddings": ("n_total", "n_embedded", "dim", "random_init"),
    "index": ("n", "self_hit_rate", "recall_at_10"),
    "validation": ("coverage_damaged", "coverage_clean", "image_only_map_at_r_damage_type", "map_at_r_damage_type"),
}
N_HEADLINE = 4
VALIDATION_FILES = ("report.md", "metrics.json", "pca.png", "tsne.png", "examples.png")


def run_label(rec: RunRecord) -> str:
    return f"{rec.flow_run_id[:8]}  {rec.flow}  {rec.started_at or '?'}  {rec.status}"


def run_rows(records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per run, newest first."""
    return [{"run": rec.flow_run_id[:8], "flow": rec.flow, "status": rec.status, "started": rec.started_at,
             "finished": rec.finished_at, "phases": len(rec.phases),
             "cache hits": sum(bool(p.get("cache_hit")) for p in rec.phases.values()),
             "dataset": rec.run.get("dataset_root")} for rec in records]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def headline(phase: str, metrics: dict[str, Any]) -> str:
    """Up to N_HEADLINE metrics: the phase's headline keys first, then others (no timings)."""
    keys = [k for k in HEADLINE.get(phase, ()) if k in metrics]
    keys += [k for k in sorted(metrics) if k not in keys and k not in TIMING_METRICS]
    return ", ".join(f"{k} {_fmt(metrics[k])}" for k in keys[:N_HEADLINE])


def phase_rows(store: ArtifactStore, rec: RunRecord) -> list[dict[str, Any]]:
    """Per phase: artifact id, cache hit or computed, seconds (this run's; a cache hit took none) and
    headline metrics."""
    rows = []
    for phase, ref in rec.phases.items():
        metrics = phase_metrics(store, phase, ref)
        hit = bool(ref.get("cache_hit"))
        seconds = metrics.get("seconds")
        rows.append({"phase": phase, "artifact": ref.get("artifact_id", "")[:12],
                     "cache": "cache hit" if hit else "computed",
                     "seconds": None if hit or seconds is None else round(float(seconds), 2),
                     "metrics": headline(phase, metrics)})
    return rows


def validation_files(store: ArtifactStore, rec: RunRecord) -> dict[str, Path]:
    """The validation artifact's report and plots that exist (name -> local path)."""
    aid = (rec.phases.get("validation") or {}).get("artifact_id")
    if not aid or not store.is_local or not store.is_complete("validation", aid):
        return {}
    root = Path(store.dir_path("validation", aid))
    return {name: root / name for name in VALIDATION_FILES if (root / name).is_file()}
