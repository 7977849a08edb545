"""The promotion gate's rules: floors every candidate must clear, the first promotion included.

On the frozen test items (minus what either model trained on, on the shared classes), the candidate
becomes champion only if
1. it beats the majority-class rate beyond the interval (the paired difference between its answers
   and always answering the train split's majority class has a 95% lower bound above 0): a model
   that learnt nothing, e.g. on shuffled labels, never becomes champion;
2. it is not worse than the frozen-probe baseline (the teacher's pretrained backbone frozen with a
   logistic-regression head) beyond the interval (the difference's upper bound is not below 0);
3. with a champion: it is not worse than the champion beyond the interval, and its ECE is at most
   the champion's + `promotion.ece_margin`.
Intervals are paired bootstraps over photos (`pipeline.core.stats`). Every rule's figures and
verdict go into the decision, so a refusal says which floor it hit and by how much.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.core.stats import Estimate, mean_ci, paired_difference


def score_records(model_dir: Path, records: Sequence[dict[str, str]], n_bins: int, device: str = "cpu",
                  batch_size: int = 32) -> tuple[dict[str, float], dict[str, bool]]:
    """({n, top1, ece}, {item_id: correct}) of a model dir on labelled records, calibrated with the
    model's own temperature."""
    from pipeline.training.calibrate import calibration_errors, score_items
    from pipeline.models.classifier import load_classifier
    from pipeline.training.inference import softmax

    model, meta = load_classifier(model_dir, device=device)
    s = score_items(model, meta, list(records), batch_size, device)
    if not len(s.labels):
        return {"n": 0, "top1": math.nan, "ece": math.nan}, {}
    probs = softmax(s.logits, float(meta.get("temperature") or 1.0))
    ece, _ = calibration_errors(probs, s.labels, n_bins)
    correct = probs.argmax(axis=1) == s.labels
    photo = {r["item_id"]: str(r.get("group") or r["item_id"]) for r in records}
    top1 = mean_ci(correct.astype(float), [photo.get(r["item_id"], r["item_id"]) for r in s.records])
    return ({"n": int(len(s.labels)), "top1": float(correct.mean()), "top1_lo": top1.lo, "top1_hi": top1.hi,
             "n_photos": top1.n_groups, "ece": ece},
            {r["item_id"]: bool(c) for r, c in zip(s.records, correct)})


def _paired(a: dict[str, bool], b: dict[str, bool], groups: dict[str, str], seed: int) -> Estimate:
    keys = [k for k in a if k in b]
    return paired_difference([float(a[k]) for k in keys], [float(b[k]) for k in keys],
                             [groups.get(k, k) for k in keys], seed=seed)


def _rule(name: str, diff: Estimate, passed: bool, text: str) -> dict[str, Any]:
    return {"rule": name, "passed": bool(passed), "text": text, **diff.as_dict("diff_")}


def floors(new: dict[str, bool], records: Sequence[dict[str, str]], *, majority_class: str | None,
           probe: dict[str, bool] | None, champion: dict[str, bool] | None, seed: int = 0) -> list[dict[str, Any]]:
    """The floor rules (module docstring, rules 1-3 without ECE) for per-item correctness dicts."""
    groups = {r["item_id"]: str(r.get("group") or r["item_id"]) for r in records}
    out = []
    if majority_class is not None:
        majority = {r["item_id"]: r["label"] == majority_class for r in records if r["item_id"] in new}
        d = _paired(new, majority, groups, seed)
        ok = not math.isnan(d.lo) and d.lo > 0
        out.append(_rule("majority", d, ok, f"vs always '{majority_class}': top-1 difference {d.text()}"
                         + ("" if ok else " (not above the majority-class rate beyond the interval)")))
    if probe is not None:
        d = _paired(new, probe, groups, seed)
        ok = math.isnan(d.hi) or d.hi >= 0
        out.append(_rule("probe", d, ok, f"vs the frozen-probe baseline: top-1 difference {d.text()}"
                         + ("" if ok else " (worse beyond the interval)")))
    if champion is not None:
        d = _paired(new, champion, groups, seed)
        ok = math.isnan(d.hi) or d.hi >= 0
        out.append(_rule("champion", d, ok, f"vs the champion: top-1 difference {d.text()}"
                         + ("" if ok else " (worse beyond the interval)")))
    return out


def majority_of(counts: dict[str, int], class_names: Sequence[str]) -> str | None:
    """The most frequent train class (ties: the first in the class list)."""
    if not counts:
        return None
    return max(class_names, key=lambda c: (counts.get(c, 0), -list(class_names).index(c)))


def correct_share(correct: dict[str, bool]) -> float:
    return float(np.mean(list(correct.values()))) if correct else math.nan
