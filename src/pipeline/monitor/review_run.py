"""One review, end to end: gather candidates, leave out what must not be queued (saying why), score with
the model, select, write the LabelMe folder, the report and the table of every photo left out.

Files (in `out_dir`): `labelme/` (the folder a person opens, see `labelme_out`), `review.json`
(figures, the model, every queued photo), `left_out.csv` (path, content hash, reason: unreadable,
queued before, labelled, near duplicate of a labelled photo, too close to a queued one, queue full,
not sampled), `report.md`.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.monitor.review import Candidate, apply_scores, near_labelled, select


def inbox_rows(inbox: Path, extensions: list[str], hash_cache: Path | None = None) -> list[dict[str, Any]]:
    """[{path (inbox-relative), sha256}] of every image under the inbox (nested; hidden files skipped)."""
    from pipeline.data.dataset import HashCache, list_files

    exts = {e.lower() for e in extensions}
    cache = HashCache(hash_cache)
    rows = []
    for f in list_files(inbox):
        if f.suffix.lower() in exts:
            try:
                rows.append({"path": f.relative_to(inbox).as_posix(), "sha256": cache.sha256(f)})
            except OSError as exc:
                rows.append({"path": f.relative_to(inbox).as_posix(), "sha256": "", "error": str(exc)})
    cache.save()
    return rows


@dataclass
class ReviewInputs:
    inbox: Path | None
    rows: list[dict[str, Any]]  # inbox_rows
    photos: pd.DataFrame | None  # the run's split table (labelled photos)
    dataset_root: Path | None
    queued: set[str]  # content hashes queued by earlier reviews
    run: str  # the run this review belongs to (flow run id or a description)
    review_id: str  # the review's artifact id


def _phash(path: Path) -> int | None:
    from pipeline.data.images import load_rgb, phash

    try:
        return phash(load_rgb(str(path), 89_478_485)[0])
    except Exception:  # noqa: BLE001 - unreadable: the scorer reports the error
        return None


def gather(inp: ReviewInputs, cfg: Any, class_names: list[str], crops_model: bool) -> tuple[list[Candidate], list]:
    """(candidates to score, [(path, hash, reason)] left out before scoring)."""
    from pipeline.monitor.drift_data import hash_order

    out: list[tuple[str, str, str]] = []
    labelled = set(inp.photos["item_id"]) if inp.photos is not None else set()
    seen: dict[str, str] = {}
    cands = []
    for r in inp.rows:
        if not r["sha256"]:
            out.append((r["path"], "", f"unreadable file: {r.get('error')}"))
        elif r["sha256"] in seen:
            out.append((r["path"], r["sha256"], f"same bytes as {seen[r['sha256']]}"))
        elif r["sha256"] in inp.queued:
            out.append((r["path"], r["sha256"], "queued by an earlier review"))
        elif r["sha256"] in labelled:
            out.append((r["path"], r["sha256"], "already labelled (a photo of the run)"))
        else:
            cands.append(Candidate(r["sha256"], Path(inp.inbox) / r["path"], r["path"]))
        seen.setdefault(r["sha256"], r["path"])
    keep = set(hash_order([c.key for c in cands], cfg.review.seed)[: cfg.review.max_candidates])
    out += [(c.source, c.key, f"not sampled this time (review.max_candidates={cfg.review.max_candidates})")
            for i, c in enumerate(cands) if i not in keep]
    cands = [c for i, c in enumerate(cands) if i in keep]
    for c in cands:
        c.phash = _phash(c.path)
    if inp.photos is not None and "phash" in inp.photos.columns and cands:
        lab = [(int(h, 16), p) for h, p in zip(inp.photos["phash"], inp.photos["path"]) if isinstance(h, str) and h]
        near = near_labelled([c.phash or 0 for c in cands], [h for h, _ in lab], cfg.audit.near_duplicate_threshold)
        for c, j in zip(list(cands), near):
            if j is not None and c.phash is not None:
                out.append((c.source, c.key, f"near duplicate of labelled {lab[j][1]}"))
                cands.remove(c)
    if cfg.review.label_check and inp.photos is not None and inp.dataset_root is not None:
        cands += _label_checks(inp, class_names, crops_model)
    return cands, out


def _label_checks(inp: ReviewInputs, class_names: list[str], crops_model: bool) -> list[Candidate]:
    """The run's val/test photos whose label maps onto a class of the model."""
    from pipeline.monitor.scoring import CLEAN

    out = []
    for r in inp.photos[inp.photos.get("split", pd.Series(dtype=str)).isin(["val", "test"])].to_dict("records"):
        label = CLEAN if crops_model and not r.get("has_damage") else str(r.get("label"))
        if label in class_names and r["item_id"] not in inp.queued:
            out.append(Candidate(r["item_id"], Path(inp.dataset_root) / r["path"], r["path"], kind="label_check",
                                 label=label, annotations=r.get("annotations"),
                                 phash=int(r["phash"], 16) if isinstance(r.get("phash"), str) and r["phash"] else None))
    return out


def run_review(inp: ReviewInputs, cfg: Any, model: Any, scorer: Any, out_dir: Path,
               detector: Callable[[], Any] | None = None, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The review (see the module doc); returns its metrics and info. `detector` makes the vehicle detector
    of the windows mode (default: `detect.*` without a weights dir)."""
    from pipeline.monitor.labelme_out import write_folder
    from pipeline.monitor.scoring import score_photos

    say = say or (lambda m: None)
    rc = cfg.review
    mode = rc.scoring if rc.scoring != "auto" else ("windows" if scorer.is_crops_model() else "image")
    cands, left = gather(inp, cfg, scorer.class_names, scorer.is_crops_model())
    say(f"review: scoring {len(cands)} photo(s) ({mode}) with {model.describe()}")
    det = None
    if mode == "windows":
        from pipeline.retrieval.detect import make_detector

        det = detector() if detector else make_detector(cfg.detect)
    scores = score_photos(scorer, [c.path for c in cands], mode, det, cfg.crops, rc.window_scales)
    bad = apply_scores(cands, scores, scorer.class_names, scorer.threshold, rc.uncertainty)
    left += [(c.source, c.key, why) for c, why in bad]
    scored = [c for c in cands if c.probs is not None]
    chosen, passed = select(scored, rc.n, rc.min_distance, cfg.audit.near_duplicate_threshold, rc.seed)
    left += [(c.source, c.key, why) for c, why in passed]
    rows = write_folder(chosen, scorer.class_names, model, inp.run, out_dir / "labelme", rc.top_k, rc.uncertainty,
                        inp.review_id[:12])
    with (out_dir / "left_out.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["source_path", "content_hash", "reason"])
        w.writerows(sorted(left))
    figures = _figures(inp, cands, scored, chosen, left, mode)
    doc = {"model": model.describe(), "model_identity": model.identity(), "run": inp.run, "scoring": mode,
           "uncertainty": rc.uncertainty, "figures": figures, "queue": rows}
    (out_dir / "review.json").write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(report(doc, left), encoding="utf-8")
    return {**figures, "scoring": mode, "model": model.describe()}


def _count(left: list, prefix: str) -> int:
    return sum(str(r[2]).startswith(prefix) for r in left)


def _figures(inp: ReviewInputs, cands, scored, chosen, left, mode: str) -> dict[str, Any]:
    unc = [c.uncertainty for c in chosen]
    return {"n_inbox": len(inp.rows), "n_candidates": len(cands), "n_scored": len(scored), "n_queued": len(chosen),
            "n_queued_not_conclusive": sum(c.not_conclusive for c in chosen),
            "n_not_conclusive": sum(c.not_conclusive for c in scored),
            "n_label_checks_queued": sum(c.kind == "label_check" for c in chosen),
            "n_queued_before": _count(left, "queued by"), "n_labelled": _count(left, "already labelled"),
            "n_near_duplicate_of_labelled": _count(left, "near duplicate of labelled"),
            "n_unreadable": _count(left, "unreadable"), "n_too_close": _count(left, "cosine distance")
            + _count(left, "pHash near duplicate"), "n_not_sampled": _count(left, "not sampled"),
            "mean_uncertainty_queued": float(np.mean(unc)) if unc else float("nan")}


def report(doc: dict[str, Any], left: list) -> str:
    f = doc["figures"]
    lines = ["# Review queue", "",
             f"{f['n_queued']} photo(s) queued for labelling out of {f['n_inbox']} in the inbox "
             f"({f['n_scored']} scored, {f['n_not_conclusive']} not conclusive), with {doc['model']}, "
             f"scoring `{doc['scoring']}`, uncertainty `{doc['uncertainty']}`.", "",
             "| left out | n |", "|---|---|"]
    for key in ("n_queued_before", "n_labelled", "n_near_duplicate_of_labelled", "n_unreadable", "n_too_close",
                "n_not_sampled"):
        lines.append(f"| {key[2:].replace('_', ' ')} | {f[key]} |")
    lines += ["", "| rank | file | predicted | confidence | uncertainty | why |", "|---|---|---|---|---|---|"]
    for r in doc["queue"]:
        lines.append(f"| {r['rank']} | {r['file']} | {r['predicted']} | {r['confidence']:.3f} | "
                     f"{r['uncertainty']:.3f} | {r['why_selected']} |")
    lines += ["", "Open `labelme/` in LabelMe (see its README.md); `left_out.csv` lists every photo not queued "
              "and why."]
    return "\n".join(lines) + "\n"


def skipped_review(out_dir: Path, reason: str) -> dict[str, Any]:
    """The review's files when it cannot run (no inbox, no model): said plainly."""
    from pipeline.monitor.labelme_out import write_queue

    (out_dir / "labelme").mkdir(parents=True, exist_ok=True)
    write_queue([], out_dir / "labelme" / "queue.csv")
    (out_dir / "review.json").write_text(json.dumps({"skipped": reason}, indent=2) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(f"# Review queue\n\nReview skipped: {reason}\n", encoding="utf-8")
    return {"n_queued": 0, "review": f"skipped: {reason}"}
