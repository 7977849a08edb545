"""Calibration figures with the amount of data behind them.

ECE / MCE on equal-width bins (the same bins as torchmetrics' `multiclass_calibration_error`,
which gives the headline value) or on equal-mass (adaptive) bins, which a small split needs: with
28 items in 15 equal-width bins most bins hold one or two items and the ECE is mostly noise. NLL and
the Brier score sit beside ECE. Every figure carries n, the number of photos and a seeded bootstrap
interval over photos (`pipeline.core.stats`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from pipeline.core.stats import Estimate, bootstrap

TEMPERATURE_BOUNDS = (0.05, 20.0)  # the range temperature scaling searches (calibrate) and the report names


def bin_mode(n: int, cfg: Any) -> tuple[str, int]:
    """(equal_width | equal_mass, number of bins) for a split of n items under `calibration.bins`."""
    mode = cfg.bins if cfg.bins != "auto" else ("equal_mass" if n < cfg.min_items else "equal_width")
    if mode == "equal_mass":
        return mode, int(max(2, min(cfg.n_bins, n // 10)))
    return mode, int(cfg.n_bins)


def ece_mce(conf: np.ndarray, correct: np.ndarray, n_bins: int, mode: str = "equal_width") -> tuple[float, float]:
    """(ECE, MCE) of top-label confidences; equal-width bins match torchmetrics' binning."""
    n = len(conf)
    if n == 0:
        return math.nan, math.nan
    conf, correct = np.asarray(conf, np.float64), np.asarray(correct, np.float64)
    if mode == "equal_mass":
        order = np.argsort(conf, kind="stable")
        bins = [b for b in np.array_split(order, min(n_bins, n)) if len(b)]
    else:
        idx = np.searchsorted(np.linspace(0, 1, n_bins + 1), conf, side="right") - 1
        bins = [np.flatnonzero(idx == b) for b in range(n_bins + 1)]
        bins = [b for b in bins if len(b)]
    gaps = np.asarray([abs(correct[b].mean() - conf[b].mean()) for b in bins])
    weights = np.asarray([len(b) / n for b in bins])
    return float((gaps * weights).sum()), float(gaps.max())


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over items of sum_k (p_k - [y = k])^2."""
    if not len(labels):
        return math.nan
    onehot = np.zeros_like(probs, dtype=np.float64)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def nll_of(probs: np.ndarray, labels: np.ndarray) -> float:
    if not len(labels):
        return math.nan
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def figures(probs_before: np.ndarray, probs_after: np.ndarray, labels: np.ndarray, groups: Sequence[Any] | None,
            cfg: Any, seed: int = 0) -> dict[str, Any]:
    """A split's calibration figures before and after scaling; `Estimate`s under `_ci`."""
    n = len(labels)
    mode, n_bins = bin_mode(n, cfg)
    out: dict[str, Any] = {"n": n, "bins": mode, "n_bins": n_bins, "_ci": {}}
    for tag, probs in (("before", probs_before), ("after", probs_after)):
        conf = probs.max(axis=1) if n else np.zeros(0)
        correct = (probs.argmax(axis=1) == labels) if n else np.zeros(0, bool)

        def stat(idx: np.ndarray, conf=conf, correct=correct) -> float:
            return ece_mce(conf[idx], correct[idx], n_bins, mode)[0] if len(idx) else math.nan

        ece = bootstrap(stat, n, groups, seed=seed)
        out[f"ece_{tag}"], out[f"mce_{tag}"] = ece_mce(conf, correct, n_bins, mode)
        out[f"nll_{tag}"], out[f"brier_{tag}"] = nll_of(probs, labels), brier(probs, labels)
        out["_ci"][f"ece_{tag}"] = ece
    correct = (probs_before.argmax(axis=1) == labels).astype(float) if n else np.zeros(0)
    out["_ci"]["top1"] = bootstrap(lambda idx: float(correct[idx].mean()) if len(idx) else math.nan, n, groups,
                                   seed=seed)
    out["top1"] = out["_ci"]["top1"].value
    out["n_groups"] = out["_ci"]["top1"].n_groups
    return out


def at_threshold(probs: np.ndarray, labels: np.ndarray, threshold: float, groups: Sequence[Any] | None,
                 seed: int = 0) -> dict[str, Estimate]:
    """Precision among the answered (confidence >= threshold) and coverage, with intervals."""
    n = len(labels)
    conf = probs.max(axis=1) if n else np.zeros(0)
    answered = conf >= threshold
    right = (probs.argmax(axis=1) == labels) & answered if n else np.zeros(0, bool)

    def precision(idx: np.ndarray) -> float:
        a = answered[idx].sum()
        return float(right[idx].sum() / a) if a else math.nan

    return {"precision": bootstrap(precision, n, groups, seed=seed),
            "coverage": bootstrap(lambda idx: float(answered[idx].mean()) if len(idx) else math.nan, n, groups,
                                  seed=seed)}


def reliability(n_val: int, cfg: Any) -> tuple[bool, str]:
    """Whether val is large enough for the temperature and threshold to mean much, and why not."""
    if n_val >= cfg.min_items:
        return True, f"val has {n_val} items (>= calibration.min_items = {cfg.min_items})"
    return False, (f"val has only {n_val} items (< calibration.min_items = {cfg.min_items}): the temperature and "
                   "the threshold fitted on it are unreliable, and the ECE figures are mostly noise (see the intervals)")
