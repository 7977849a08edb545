"""The equivalence gate: an exported variant's logits against torch's on the same held-back inputs.

Figures: Pearson correlation pooled over all logits and the lowest per image, max abs difference,
top-1 agreement, and the largest difference of the calibrated confidence (softmax(logits / T) of
torch's top class). A variant passes when the pooled correlation is above `min_corr`, the lowest
per-image correlation is above `min_image_corr` and top-1 agreement reaches `min_top1`.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def _softmax(z: np.ndarray, temperature: float) -> np.ndarray:
    z = z.astype(np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))


def compare(ref: np.ndarray, got: np.ndarray, temperature: float = 1.0) -> dict[str, float]:
    """Gate figures of `got` [N, K] against the reference `ref` [N, K]."""
    if ref.shape != got.shape:
        raise ValueError(f"logits shapes differ: reference {ref.shape}, variant {got.shape}")
    if not np.isfinite(got).all():
        return {"n": len(ref), "corr": math.nan, "min_image_corr": math.nan, "max_abs": math.inf,
                "top1_agreement": 0.0, "conf_max_diff": math.inf}
    top = ref.argmax(axis=1)
    rows = np.arange(len(ref))
    p_ref, p_got = _softmax(ref, temperature), _softmax(got, temperature)
    return {"n": int(len(ref)), "corr": _corr(ref, got),
            "min_image_corr": min(_corr(r, g) for r, g in zip(ref, got)),
            "max_abs": float(np.abs(ref.astype(np.float64) - got).max()),
            "top1_agreement": float((got.argmax(axis=1) == top).mean()),
            "conf_max_diff": float(np.abs(p_ref[rows, top] - p_got[rows, top]).max())}


def verdict(figures: dict[str, float], thresholds: Any) -> tuple[bool, str]:
    """(passed, reason) of the gate figures against the config thresholds (`export` section)."""
    fails = []
    if not figures["corr"] > thresholds.min_corr:
        fails.append(f"corr {figures['corr']:.5f} <= {thresholds.min_corr}")
    if not figures["min_image_corr"] > thresholds.min_image_corr:
        fails.append(f"lowest per-image corr {figures['min_image_corr']:.5f} <= {thresholds.min_image_corr}")
    if not figures["top1_agreement"] >= thresholds.min_top1_agreement:
        fails.append(f"top-1 agreement {figures['top1_agreement']:.4f} < {thresholds.min_top1_agreement}")
    return (not fails), "; ".join(fails) or "ok"
