"""The equivalence gate: an exported variant's logits against torch's on the same held-back inputs.

It judges what a user sees, the calibrated probabilities (softmax(logits / T)) and the answer:

- `top1_agreement`: share of inputs whose top class matches torch's;
- `prob_max_diff`: the largest |p_variant - p_torch| over every input and class;
- `mean_kl`: the mean over inputs of KL(p_torch || p_variant) (nats);
- `corr`: Pearson correlation of the logits after centring each image's logits on their own mean,
  pooled over the inputs. Softmax ignores a per-image constant, so the centring removes the common
  mode that makes a pooled raw-logit correlation fail a model whose answers are unchanged (a shift
  per image) or pass one whose answers change (a large common mode hides the class differences);
- `min_image_corr`: the lowest per-image correlation (K >= 3 classes; with two classes one image's
  two centred logits are always perfectly (anti-)correlated, so it is None and not gated).

Also reported: `raw_corr` (pooled raw logits, for comparison with older reports), `max_abs` (largest
logit difference), `conf_max_diff` (change of the calibrated confidence of torch's top class), and where
the answers changed: `flips` (inputs whose top class changed), `flip_max_margin` (the largest margin,
torch's calibrated top-1 minus top-2 probability, among them: near 0, every flip was a coin toss for
torch too) and `near_ties` (inputs with a torch margin below NEAR_TIE). A refused variant's reason
carries them, so a gate failed on coin tosses reads differently from one failed on clear answers.
A variant passes when corr > min_corr, top-1 agreement >= min_top1_agreement, prob_max_diff <=
max_prob_diff, mean_kl <= max_kl and (K >= 3) min_image_corr > min_image_corr.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

NEAR_TIE = 0.1  # a torch margin (calibrated top-1 minus top-2 probability) below this is a near tie


def _log_softmax(z: np.ndarray, temperature: float) -> np.ndarray:
    z = z.astype(np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))


def centred(z: np.ndarray) -> np.ndarray:
    """Each row minus its own mean (what softmax cannot see removed)."""
    z = z.astype(np.float64)
    return z - z.mean(axis=1, keepdims=True)


def compare(ref: np.ndarray, got: np.ndarray, temperature: float = 1.0) -> dict[str, Any]:
    """Gate figures of `got` [N, K] against the reference `ref` [N, K] (see the module docstring)."""
    if ref.shape != got.shape:
        raise ValueError(f"logits shapes differ: reference {ref.shape}, variant {got.shape}")
    n, k = ref.shape
    if not np.isfinite(got).all():
        return {"n": int(n), "corr": math.nan, "raw_corr": math.nan, "min_image_corr": math.nan, "max_abs": math.inf,
                "top1_agreement": 0.0, "conf_max_diff": math.inf, "prob_max_diff": math.inf, "mean_kl": math.inf}
    top = ref.argmax(axis=1)
    rows = np.arange(n)
    lp_ref, lp_got = _log_softmax(ref, temperature), _log_softmax(got, temperature)
    p_ref, p_got = np.exp(lp_ref), np.exp(lp_got)
    rc, gc = centred(ref), centred(got)
    return {"n": int(n), "corr": _corr(rc, gc), "raw_corr": _corr(ref, got),
            "min_image_corr": min(_corr(r, g) for r, g in zip(rc, gc)) if k >= 3 else None,
            "max_abs": float(np.abs(ref.astype(np.float64) - got).max()),
            "top1_agreement": float((got.argmax(axis=1) == top).mean()),
            **_flips(p_ref, got.argmax(axis=1) != top),
            "conf_max_diff": float(np.abs(p_ref[rows, top] - p_got[rows, top]).max()),
            "prob_max_diff": float(np.abs(p_ref - p_got).max()),
            "mean_kl": float(np.maximum((p_ref * (lp_ref - lp_got)).sum(axis=1), 0.0).mean())}


def _flips(p_ref: np.ndarray, flipped: np.ndarray) -> dict[str, Any]:
    """flips, flip_max_margin and near_ties (module docstring) of torch's calibrated probabilities."""
    srt = np.sort(p_ref, axis=1)
    margin = srt[:, -1] - srt[:, -2] if p_ref.shape[1] >= 2 else np.ones(len(p_ref))
    return {"flips": int(flipped.sum()), "flip_max_margin": float(margin[flipped].max()) if flipped.any() else None,
            "near_ties": int((margin < NEAR_TIE).sum())}


def verdict(figures: dict[str, Any], thresholds: Any) -> tuple[bool, str]:
    """(passed, reason) of the gate figures against the config thresholds (`export` section)."""
    fails = []
    if not figures["top1_agreement"] >= thresholds.min_top1_agreement:
        why = f"top-1 agreement {figures['top1_agreement']:.4f} < {thresholds.min_top1_agreement}"
        if figures.get("flips"):
            why += (f" ({figures['flips']} flips, torch's calibrated top-2 margin <= {figures['flip_max_margin']:.3f} "
                    f"on each; {figures['near_ties']} inputs have a margin < {NEAR_TIE})")
        fails.append(why)
    if not figures["prob_max_diff"] <= thresholds.max_prob_diff:
        fails.append(f"max |dp| {figures['prob_max_diff']:.4f} > {thresholds.max_prob_diff}")
    if not figures["mean_kl"] <= thresholds.max_kl:
        fails.append(f"mean KL {figures['mean_kl']:.2e} > {thresholds.max_kl}")
    if not figures["corr"] > thresholds.min_corr:
        fails.append(f"centred logit corr {figures['corr']:.5f} <= {thresholds.min_corr}")
    image = figures.get("min_image_corr")
    if image is not None and not image > thresholds.min_image_corr:
        fails.append(f"lowest per-image corr {image:.5f} <= {thresholds.min_image_corr}")
    return (not fails), "; ".join(fails) or "ok"
