"""Calibration of the fine-tuned student: temperature scaling and the "not conclusive" threshold.

`run_calibration(model_dir, items_val, items_test, cfg, out_dir)` runs the model on val and test
(the training frame's items with their `target` class and the model's own val preprocessing, so
the figures are those of the training eval), fits one temperature on val NLL (a bounded search,
`TEMPERATURE_BOUNDS`), measures ECE and MCE (torchmetrics, 15 bins) before and after on val
(where T is fitted) and test (where it is judged), tabulates selective accuracy and coverage for
thresholds 0.40..0.95, and picks the smallest threshold whose val
precision reaches the target. It writes the calibrated model dir (the same weights; model.json
gains `temperature` and `threshold`), `thresholds.json`, `report.md`, `reliability.png` and two
galleries. Every file depends only on the inputs (no absolute paths, no clock).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.core.errors import DatasetError
from pipeline.training.calibration_stats import TEMPERATURE_BOUNDS

OUTPUTS = ("model.safetensors", "model.json", "thresholds.json", "report.md", "reliability.png",
           "gallery_errors.png", "gallery_not_conclusive.png")


@dataclass
class Scored:
    """A split's usable items with their logits and label indices (unreadable/unknown-label items dropped)."""

    records: list[dict[str, str]]
    logits: np.ndarray  # [N, C] float32
    labels: np.ndarray  # [N] int64
    dropped_unreadable: int = 0
    dropped_unknown_label: int = 0


def score_items(model: Any, meta: dict, items: Sequence[Any], batch_size: int = 32, device: str = "cpu") -> Scored:
    """Logits of `model` on labelled items; items whose image is unreadable or whose label is not one of
    the model's classes are dropped and counted."""
    from pipeline.training.inference import batched_logits, item_records

    records = item_records(items)
    index = {c: i for i, c in enumerate(meta["class_names"])}
    known = [r for r in records if r["label"] in index]
    logits, errors = batched_logits(model, meta, [r["path"] for r in known], batch_size, device)
    keep = [i for i, e in enumerate(errors) if e is None]
    return Scored(records=[known[i] for i in keep], logits=logits[keep],
                  labels=np.asarray([index[known[i]["label"]] for i in keep], dtype=np.int64),
                  dropped_unreadable=len(known) - len(keep), dropped_unknown_label=len(records) - len(known))




def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature T in `bounds` minimising the NLL of softmax(logits / T) (float64).

    The NLL is convex in beta = 1/T, so a bounded scalar search on beta finds the optimum inside the
    bounds. A model no better than chance on val would otherwise drive T to infinity (a uniform
    answer); the bound keeps the temperature meaningful and the report says when it is hit.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    lo, hi = bounds

    def loss(beta: float) -> float:
        s = z * beta
        s = s - s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(y)), y]))

    res = minimize_scalar(loss, bounds=(1.0 / hi, 1.0 / lo), method="bounded",
                          options={"maxiter": max(int(max_iter), 20), "xatol": 1e-7})
    return float(min(max(1.0 / res.x, lo), hi))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    import torch
    import torch.nn.functional as F

    z = torch.as_tensor(logits, dtype=torch.float64) / temperature
    return float(F.cross_entropy(z, torch.as_tensor(labels, dtype=torch.long)))


def calibration_errors(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> tuple[float, float]:
    """(ECE, MCE): torchmetrics' multiclass calibration error with norm 'l1' and 'max'."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    if len(labels) == 0:
        return math.nan, math.nan
    p = torch.as_tensor(probs, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    return tuple(float(multiclass_calibration_error(p, y, num_classes=p.shape[1], n_bins=n_bins, norm=norm))
                 for norm in ("l1", "max"))


def thresholds_grid(start: float, stop: float, step: float) -> list[float]:
    n = int(round((stop - start) / step))
    return [round(start + i * step, 6) for i in range(n + 1)]


def threshold_table(probs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """Per threshold t: answered (confidence >= t), coverage, selective precision (accuracy among the
    answered; None when nothing is answered) and errors among the answered."""
    conf = probs.max(axis=1) if len(labels) else np.zeros(0)
    correct = probs.argmax(axis=1) == labels if len(labels) else np.zeros(0, bool)
    rows = []
    for t in thresholds:
        answered = conf >= t
        n = int(answered.sum())
        right = int((correct & answered).sum())
        rows.append({"threshold": float(t), "answered": n, "total": int(len(labels)),
                     "coverage": n / len(labels) if len(labels) else 0.0,
                     "precision": right / n if n else None, "errors": n - right})
    return rows


def pick_threshold(table: list[dict[str, Any]], target: float, min_answered: int = 1) -> dict[str, Any]:
    """The smallest threshold whose precision reaches `target` on at least `min_answered` answered
    items (reached=True); otherwise the one with the best precision (ties: the larger coverage), reached=False.
    A precision on one or two answered items proves nothing, so such rows cannot reach the target."""
    for row in table:
        if row["precision"] is not None and row["answered"] >= min_answered and row["precision"] >= target:
            return {**row, "reached": True}
    answered = [r for r in table if r["precision"] is not None and r["answered"] >= min_answered]
    answered = answered or [r for r in table if r["precision"] is not None]
    if not answered:
        return {**table[-1], "reached": False}
    best = max(answered, key=lambda r: (r["precision"], r["coverage"]))
    return {**best, "reached": False}


def _at(table: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    return next(r for r in table if abs(r["threshold"] - threshold) < 1e-9)


def _groups(items: Any, s: Scored) -> list[str]:
    """The resampling unit of each scored item: a training frame maps its `key` to its photo's group
    (see items.photo_groups)."""
    from pipeline.training.items import photo_of

    photo = photo_of(items)
    return [photo.get(r["item_id"], r["item_id"]) for r in s.records]


def _split_figures(s: Scored, groups: list[str], temperature: float, c: Any, seed: int) -> dict[str, Any]:
    from pipeline.training.calibration_stats import figures
    from pipeline.training.inference import softmax

    return figures(softmax(s.logits), softmax(s.logits, temperature), s.labels, groups, c, seed)


def _write_model(model_dir: Path, meta: dict, out_dir: Path, temperature: float, threshold: float) -> None:
    from pipeline.models.classifier import META_FILE, MODEL_FILE

    shutil.copyfile(Path(model_dir) / MODEL_FILE, out_dir / MODEL_FILE)
    full = {**meta, "temperature": float(temperature), "threshold": float(threshold)}
    (out_dir / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")


def run_calibration(model_dir: Path, items_val: Sequence[Any], items_test: Sequence[Any], cfg: Any,
                    out_dir: Path, device: str = "cpu", batch_size: int = 32) -> dict[str, Any]:
    """Calibrate the model in `model_dir` (see the module docstring); `cfg` is the PipelineConfig or its
    `calibration` section. Returns the metrics (test figures are the headline ones)."""
    from pipeline.training.calibration_report import galleries, reliability_diagram, write_report
    from pipeline.models.classifier import load_classifier
    from pipeline.training.inference import softmax

    c = getattr(cfg, "calibration", cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, meta = load_classifier(model_dir, device=device)
    val = score_items(model, meta, items_val, batch_size, device)
    test = score_items(model, meta, items_test, batch_size, device)
    if len(val.labels) == 0:
        raise DatasetError("calibration needs labelled val images of the model's classes; none were usable")
    from pipeline.training.calibration_stats import at_threshold, reliability

    seed = int(getattr(getattr(cfg, "train", None), "seed", 0) or 0)
    groups = {"val": _groups(items_val, val), "test": _groups(items_test, test)}
    temperature = fit_temperature(val.logits, val.labels, c.max_iter)
    grid = thresholds_grid(c.threshold_start, c.threshold_stop, c.threshold_step)
    tables = {name: threshold_table(softmax(s.logits, temperature), s.labels, grid)
              for name, s in (("val", val), ("test", test))}
    choice = pick_threshold(tables["val"], c.target_precision, c.min_answered)
    test_row = _at(tables["test"], choice["threshold"])
    figures = {name: _split_figures(s, groups[name], temperature, c, seed) for name, s in (("val", val), ("test", test))}
    for name, s in (("val", val), ("test", test)):
        figures[name]["_ci"].update({f"{k}_at_threshold": v for k, v in at_threshold(
            softmax(s.logits, temperature), s.labels, choice["threshold"], groups[name], seed).items()})
    reliable, why = reliability(len(val.labels), c)

    _write_model(model_dir, meta, out_dir, temperature, choice["threshold"])
    (out_dir / "thresholds.json").write_text(json.dumps(
        {"target_precision": c.target_precision, "temperature": temperature, "choice": choice, **tables},
        indent=2, sort_keys=True) + "\n")
    reliability_diagram({"val": val, "test": test}, temperature, c.n_bins, out_dir / "reliability.png")
    galleries(test, meta["class_names"], temperature, choice["threshold"], c.gallery_size, out_dir)
    write_report(out_dir / "report.md", meta, figures, tables, choice, test_row, temperature,
                 {"val": val, "test": test}, c, (reliable, why))

    t = figures["test"]
    return {"ece_before": t["ece_before"], "ece_after": t["ece_after"], "mce_before": t["mce_before"],
            "mce_after": t["mce_after"], "temperature": temperature, "threshold": choice["threshold"],
            "threshold_reached": int(choice["reached"]),
            "temperature_at_bound": int(min(abs(temperature - b) for b in TEMPERATURE_BOUNDS) < 1e-6),
            "val_precision_at_threshold": _num(choice["precision"]), "val_coverage_at_threshold": choice["coverage"],
            "test_precision_at_threshold": _num(test_row["precision"]),
            "test_coverage_at_threshold": test_row["coverage"], "test_top1": t["top1"],
            "val_top1": figures["val"]["top1"], "val_ece_before": figures["val"]["ece_before"],
            "val_ece_after": figures["val"]["ece_after"], "val_nll_before": figures["val"]["nll_before"],
            "val_nll_after": figures["val"]["nll_after"], "test_nll_before": t["nll_before"],
            "test_nll_after": t["nll_after"], "n_val": figures["val"]["n"], "n_test": t["n"],
            "test_brier_before": t["brier_before"], "test_brier_after": t["brier_after"],
            "val_brier_before": figures["val"]["brier_before"], "val_brier_after": figures["val"]["brier_after"],
            "val_groups": float(figures["val"]["n_groups"]), "test_groups": float(t["n_groups"]),
            "reliable": int(reliable), "reliability": why, "bins": f"{t['bins']} x {t['n_bins']}",
            **_intervals(figures)}


def _intervals(figures: dict[str, Any]) -> dict[str, float]:
    """Every interval as <split>_<figure>_lo / _hi (metrics are flat numbers)."""
    out = {}
    for split, f in figures.items():
        for name, est in f["_ci"].items():
            out[f"{split}_{name}_lo"], out[f"{split}_{name}_hi"] = est.lo, est.hi
    return out


def _num(v: float | None) -> float:
    return math.nan if v is None else float(v)
