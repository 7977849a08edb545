"""Declarations of the monitoring phases: drift (a reference run against this one) and review (what a
person should label next). Both are the factory flow's last targets, so they run after validation,
calibration and promotion, and score with the registry's champion (never a run's unpromoted student).

Both depend on state outside the store, found by their `source` hooks and written into their ids:
- drift: the reference run (`drift.reference`: the newest completed run of the work dir with a split,
  or a named one) and its artifacts' ids, and the champion's registered version and weights hash;
- review: the inbox's content (paths and sha256), the ledger of photos earlier reviews queued, and
  the scoring model's version and hash.
When there is nothing to compare (first run) or to review (no inbox, no champion), the phase still
writes its report, saying plainly why it was skipped.
"""
from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig, train_runtime_keys
from pipeline.core.phases import PhaseRun, PhaseSpec, register

DRIFT_PHASES = ("audit", "split", "crops", "embeddings")  # what drift reads of each run


def _workdir(runtime: dict[str, Any]) -> Path:
    return Path(runtime.get("workdir") or ".")


def _tracking_uri(cfg: PipelineConfig, runtime: dict[str, Any]) -> str | None:
    from pipeline.core.workspace import Workspace

    return Workspace(_workdir(runtime)).tracking_uri(cfg) if cfg.tracking.enabled else None


def _registry_model(cfg: PipelineConfig, runtime: dict[str, Any], ref: str, download: bool = False):
    """The registered student at `ref` (a ModelRef), or why there is none."""
    from pipeline.core.workspace import Workspace
    from pipeline.monitor.scoring import find_registry_model
    from pipeline.registry.versions import student_name

    uri = _tracking_uri(cfg, runtime)
    if uri is None:
        return "tracking is off (tracking.enabled=false): no model registry"
    return find_registry_model(uri, student_name(cfg), ref, Workspace(_workdir(runtime)).cache / "registry", download)


def reference_record(workdir: Path, ref: str):
    """(the reference RunRecord, '') or (None, why there is none)."""
    from pipeline.core.diff import RunNotFound, find_run
    from pipeline.core.runs import RunRecord

    records = RunRecord.all(workdir)
    if ref != "previous":
        try:
            return find_run(workdir, ref, records), ""
        except RunNotFound as exc:
            return None, f"drift.reference {ref!r}: {exc}"
    done = [r for r in records if r.status == "COMPLETED" and "split" in r.phases]
    if not done:
        # neither the work dir nor a count of records (a killed run's too) in the message: it is part of the
        # artifact's id and report, the same for the same first run wherever it runs and however often it was killed
        return None, "first run: no earlier completed run with a split to compare with"
    return done[0], ""


# -- drift ----------------------------------------------------------------------------------------
def _drift_source(cfg: PipelineConfig, runtime: dict[str, Any]) -> dict[str, Any]:
    rec, why = reference_record(_workdir(runtime), cfg.drift.reference)
    if rec is None:
        reference: dict[str, Any] = {"none": why}
    else:
        runtime["_drift_reference_root"] = rec.run.get("dataset_root")
        reference = {"flow_run_id": rec.flow_run_id,
                     "artifacts": {p: rec.phases[p]["artifact_id"] for p in DRIFT_PHASES if p in rec.phases}}
    model = _registry_model(cfg, runtime, "champion") if rec is not None else None
    return {"drift_reference": reference, "drift_model": model.identity() if hasattr(model, "identity") else None}


def _current_run(workdir: Path, split_id: str) -> str:
    """The flow run being recorded whose split is this one (the running record), else 'this run'."""
    from pipeline.core.runs import RunRecord

    rec = next((r for r in RunRecord.all(workdir) if r.status == "RUNNING"
                and (r.phases.get("split") or {}).get("artifact_id") == split_id), None)
    return rec.flow_run_id if rec else "this run"


def _store_dir(store: Any, phase: str, aid: str | None) -> Path | None:
    from pipeline.core.store import ArtifactNotFound

    if not aid or not store.is_complete(phase, aid):
        return None
    try:
        return Path(store.dir_for(phase, aid))
    except (ArtifactNotFound, OSError):
        return None


def _scorer(run: PhaseRun, model: Any):
    """(Scorer, description) for a registered model, else (None, why there is none)."""
    from pipeline.core.device import pick_device
    from pipeline.monitor.scoring import Scorer

    device, bs = pick_device(run.cfg.runtime.device), run.cfg.train.eval_batch_size
    if hasattr(model, "model_dir") and model.model_dir is not None:
        return Scorer(model.model_dir, device, bs), model.describe()
    return None, model if isinstance(model, str) else "no champion in the registry"


def _run_drift(run: PhaseRun) -> dict[str, Any]:
    from pipeline.monitor.drift import compare, empty_result, metrics
    from pipeline.monitor.drift_data import RunSide
    from pipeline.monitor.drift_report import write_report

    workdir, ref = _workdir(run.runtime), run.params["reference"]
    current = _current_run(workdir, run.inputs["split"].name)
    if "none" in ref:
        write_report(empty_result(ref["none"], current), {}, run.out_dir)
        return {"drifted": "not measured", "drift": f"skipped: {ref['none']}"}
    dirs = {p: _store_dir(run.store, p, aid) for p, aid in ref["artifacts"].items()}
    root = run.runtime.get("_drift_reference_root")
    ref_side = RunSide("reference", ref["flow_run_id"], dirs, Path(root) if root else None)
    cur_side = RunSide("current", current, {p: run.inputs.get(p) for p in DRIFT_PHASES},
                       Path(run.runtime["dataset_root"]) if run.runtime.get("dataset_root") else None)
    model = _registry_model(run.cfg, run.runtime, "champion", download=True) if run.params.get("model") else None
    scorer, desc = _scorer(run, model)
    say = (lambda m: print(m)) if run.progress else None
    result = compare(ref_side, cur_side, run.cfg.drift, scorer, run.cfg.train, desc, run.out_dir, say,
                     run.cfg.audit.near_duplicate_threshold, getattr(model, "trained", frozenset()))
    out = metrics(result)
    drifted = [s for s, v in result["sections"].items() if v["verdict"] == "drift"]
    if drifted:
        out["prefect_tags"] = ",".join(f"drift:{s}" for s in drifted)
    return out


# -- review ---------------------------------------------------------------------------------------
def review_root(cfg: PipelineConfig, workdir: Path) -> Path:
    return Path(cfg.review.out_dir) if cfg.review.out_dir else Path(workdir) / "review"


def _review_source(cfg: PipelineConfig, runtime: dict[str, Any]) -> dict[str, Any]:
    from pipeline.data.dataset import snapshot_id
    from pipeline.monitor.review import ledger_fingerprint
    from pipeline.monitor.review_run import inbox_rows

    inbox = cfg.data.inbox
    if not inbox:
        return {"review_source": {"skip": "no inbox: data.inbox is not set"}}
    path = Path(inbox).expanduser()
    if not path.is_dir():
        return {"review_source": {"skip": f"the inbox folder {path} does not exist"}}
    cache = runtime.get("hash_cache")
    rows = inbox_rows(path, cfg.data.image_extensions, Path(cache) if cache else None)
    if not rows:
        return {"review_source": {"skip": f"the inbox folder {path} holds no images "
                                          f"({', '.join(cfg.data.image_extensions)})"}}
    model = _registry_model(cfg, runtime, cfg.review.model)
    if isinstance(model, str):
        return {"review_source": {"skip": f"no model to score with: {model}"}}
    runtime["_review_rows"] = rows
    return {"review_source": {"inbox": snapshot_id(rows), "n_inbox": len(rows), "model": model.identity(),
                              "queued": ledger_fingerprint(review_root(cfg, _workdir(runtime)))}}


def _review_params(cfg: PipelineConfig, options: dict[str, Any]) -> dict[str, Any]:
    return {"source": options.get("review_source"), "near_duplicate_threshold": cfg.audit.near_duplicate_threshold,
            "image_extensions": cfg.data.image_extensions,
            "windows": {"crops": cfg.crops.model_dump(mode="json"),
                        "detect": cfg.detect.model_dump(mode="json", exclude={"allow_random_init"})}}


def _run_review(run: PhaseRun) -> dict[str, Any]:
    import pandas as pd

    from pipeline.monitor.review import read_ledger
    from pipeline.monitor.review_run import ReviewInputs, inbox_rows, run_review, skipped_review

    src, cfg, workdir = run.params["source"] or {}, run.cfg, _workdir(run.runtime)
    if src.get("skip"):
        return skipped_review(run.out_dir, src["skip"])
    model = _registry_model(cfg, run.runtime, cfg.review.model, download=True)
    scorer, desc = _scorer(run, model)
    if scorer is None:
        return skipped_review(run.out_dir, f"no model to score with: {desc}")
    inbox = Path(cfg.data.inbox).expanduser()
    rows = run.runtime.pop("_review_rows", None) or inbox_rows(inbox, cfg.data.image_extensions)
    root = review_root(cfg, workdir)
    split = run.inputs["split"] / "split.parquet"
    ds = run.runtime.get("dataset_root")
    inp = ReviewInputs(inbox, rows, pd.read_parquet(split), Path(ds) if ds else None, read_ledger(root),
                       _current_run(workdir, run.inputs["split"].name), run.artifact_id)

    def detector():
        from pipeline.retrieval.detect import make_detector

        weights = run.runtime.get("weights_dir")
        return make_detector(cfg.detect, Path(weights) if weights else None)

    say = (lambda m: print(m)) if run.progress else None
    out = run_review(inp, cfg, model, scorer, run.out_dir, detector, say)
    return {**out, **publish(run.out_dir, root, run.artifact_id)}


def publish(out_dir: Path, root: Path, review_id: str) -> dict[str, Any]:
    """Copy the LabelMe folder where people work (`<root>/<UTC time>_<id12>/`) and add its photos to the ledger."""
    import csv

    from pipeline.monitor.review import append_ledger

    with (out_dir / "labelme" / "queue.csv").open(newline="", encoding="utf-8") as fh:
        keys = [r["content_hash"] for r in csv.DictReader(fh)]
    if not keys:
        return {"folder": "nothing queued"}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(root) / f"{stamp}_{review_id[:12]}"
    shutil.copytree(out_dir / "labelme", folder)
    append_ledger(root, keys, review_id, folder.name)
    return {"folder": str(folder)}


register(
    PhaseSpec(
        name="drift", version="1", inputs=DRIFT_PHASES,
        outputs=("drift.json", "report.md", "drift.html"), sections=("drift", "train"),
        runtime_keys=train_runtime_keys("train"),
        run=_run_drift, source=_drift_source,
        extra_params=lambda cfg, opt: {"reference": opt.get("drift_reference"), "model": opt.get("drift_model"),
                                       "near_duplicate_threshold": cfg.audit.near_duplicate_threshold},
        reports=("report.md", "drift.html", "drift.json", "drift_data.png", "drift_embeddings.png",
                 "drift_predictions.png"),
        description="data, embedding and prediction drift against a reference run (verdict per section)",
    ),
    PhaseSpec(
        name="review", version="1", inputs=("split",),
        outputs=("report.md", "review.json", "labelme/queue.csv"), sections=("review",),
        run=_run_review, source=_review_source, extra_params=_review_params,
        reports=("report.md", "review.json", "labelme/queue.csv"),
        description="the inbox photos the champion is least sure of, diverse, as a LabelMe folder for a person",
    ),
)
