"""INT8 ONNX: the quantisation settings tried, the one kept, and a refused variant's per-layer table.

Every candidate is static QDQ (uint8 activations, per-channel weights unless configured otherwise)
calibrated on the calibration inputs, with the weight type and `reduce_range` decided for this CPU
(onnx_export.resolve_weight_type / resolve_reduce_range). Candidates, most INT8 first: everything
quantised; the stem convolution kept in float; the first four, then eight convolutions kept in float
(on EfficientNet-Lite0 the stem and first blocks hold most of the INT8 error: on car-damage-coco crops
the agreement on the validation views rose 0.845 -> 0.86 -> 0.945 -> 0.955 with 0, 1, 4 and 8 float
convolutions of 49); then
(`export.int8_keep_head_float` auto) the classifier layer kept in float too; calibration by MinMax,
then (`export.int8_method` auto, only when no MinMax candidate passes) Percentile. Each
candidate is judged by the gate's own figures, with only `export.int8_selection_margin` (half) of each
tolerance allowed, against the FP32 ONNX model on the selection inputs,
the validation items with the gate's views (no test item takes part in the choice; the training
items when there is no validation split): the first that passes is kept, else the one with the
lowest mean KL. Within a method the most INT8 candidate is tried first, then the most-float one, and
only when that passes the ones between (`search_order`). The held-out gate then judges it on the test
inputs like any variant. The card records the CPU, why reduce_range was chosen, the settings and every
candidate's figures (a candidate not tried says why).

More float layers stop helping after eight on the car-damage-coco crops model: 12, 16 and 24 of 49
convolutions in float kept 0.955-0.965 of the validation views' answers (0.975-0.98 of the test
views'), and the last convolutions in float changed nothing. That model is sensitive to any weight
rounding: weights alone rounded per channel to 8 bits (activations float) kept 0.965, to 9 bits 0.965
val / 0.985 test, because about one gate input in eight is a near tie (calibrated top-2 margin < 0.1).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.export import gate
from pipeline.export import onnx_export as ox

SEARCH_FIGURES = ("top1_agreement", "prob_max_diff", "mean_kl", "corr")
FLOAT_CONVS = (0, 1, 4, 8)


def candidates(cfg: Any, method: str) -> list[dict[str, Any]]:
    """(method, float_convs, keep_head_float) in the order they are preferred: auto keeps the
    classifier in float only as the last resort of each method."""
    head = cfg.int8_keep_head_float
    out = [{"method": method, "float_convs": k, "keep_head_float": head == "always"} for k in FLOAT_CONVS]
    if head == "auto":
        out.append({"method": method, "float_convs": FLOAT_CONVS[-1], "keep_head_float": True})
    return out


def search_order(n: int) -> list[int]:
    """The order candidates 0..n-1 (most INT8 first) are tried in: the most INT8 one, then the most-float
    one, then those between. The error falls as layers stay float (0.845 -> 0.86 -> 0.945 -> 0.955 above),
    so when the most-float candidate fails, the ones between are not tried (on a model no candidate
    suits, 2 candidates per method instead of 5: about 100 s of the export here)."""
    return list(range(n)) if n <= 2 else [0, n - 1, *range(1, n - 1)]


def selection_thresholds(cfg: Any) -> Any:
    """The gate's thresholds with only `export.int8_selection_margin` of each tolerance allowed: a candidate
    chosen on a few validation items must keep its answers with room to spare, since the held-out gate sees
    other inputs (on car-damage-coco a candidate at exactly 0.99 agreement on 28 val crops gave 0.985 on test)."""
    from types import SimpleNamespace

    m = float(cfg.int8_selection_margin)
    return SimpleNamespace(min_top1_agreement=1 - (1 - cfg.min_top1_agreement) * m,
                           max_prob_diff=cfg.max_prob_diff * m, max_kl=cfg.max_kl * m,
                           min_corr=1 - (1 - cfg.min_corr) * m, min_image_corr=1 - (1 - cfg.min_image_corr) * m)


def methods(cfg: Any) -> list[str]:
    return ["minmax", "percentile"] if cfg.int8_method == "auto" else [cfg.int8_method]


def batch_logits(path: Path, x: np.ndarray, batch: int = 32, threads: int = 1) -> np.ndarray:
    """onnxruntime logits of `x` in batches (selection only; the gate runs batch 1 like a browser)."""
    sess = ox.ort_session(path, threads)
    return np.concatenate([sess.run(None, {ox.INPUT_NAME: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def _try(prepared: Path, calib: np.ndarray, select: np.ndarray, ref: np.ndarray, cand: dict[str, Any], path: Path,
         cfg: Any, reduce_range: bool, temperature: float, weight_type: str, ranges: Path) -> dict[str, Any]:
    try:
        settings = ox.export_int8(prepared, calib, path, cfg.int8_per_channel, cand["method"], reduce_range,
                                  cand["keep_head_float"], cfg.int8_percentile, cand["float_convs"], weight_type,
                                  ranges)
        figures = gate.compare(ref, batch_logits(path, select), temperature)
    except Exception as exc:  # noqa: BLE001 - a candidate that cannot be made is reported, others go on
        return {**cand, "error": f"{type(exc).__name__}: {exc}"[:300], "path": None}
    ok, reason = gate.verdict(figures, selection_thresholds(cfg))
    return {**cand, "settings": settings, "passed": ok, "reason": reason, "path": path,
            "figures": {k: figures[k] for k in SEARCH_FIGURES}}


def build_int8(fp32: Path, calib: np.ndarray, select: np.ndarray, select_what: str, out_path: Path, cfg: Any,
               temperature: float, work: Path) -> dict[str, Any]:
    """Quantise `fp32` candidate by candidate until one passes on `select`, keep it at `out_path`;
    returns the card's `int8` entry (cpu, reduce_range and why, settings, search)."""
    cpu = ox.cpu_int8_info()
    weight_type, weight_why = ox.resolve_weight_type(cfg.int8_weight_type, cpu)
    reduce_range, why = ox.resolve_reduce_range(cfg.int8_reduce_range, cpu, weight_type)
    ref = batch_logits(fp32, select)
    work.mkdir(parents=True, exist_ok=True)
    prepared = work / "prepared.onnx"
    dead = ox.prepare_int8(fp32, prepared)
    has_head = bool(ox.head_nodes(prepared))
    tried: list[dict[str, Any]] = []
    for method in methods(cfg):
        cands = [c for c in candidates(cfg, method) if has_head or not c["keep_head_float"]]  # no head: same model
        ranges = work / f"ranges_{method}.json"  # this search's activation ranges, shared by the method's candidates
        ranges.unlink(missing_ok=True)  # an earlier search's graph or inputs
        done: dict[int, dict[str, Any]] = {}
        for i in search_order(len(cands)):
            done[i] = _try(prepared, calib, select, ref, cands[i], work / f"int8_{len(tried) + len(done)}.onnx", cfg,
                           reduce_range, temperature, weight_type, ranges)
            if bool(done[i].get("passed")) != (i == len(cands) - 1):
                break  # a more INT8 one than the most-float passed (the first such), or the most-float one failed
        for i, c in enumerate(cands):
            tried.append(done.get(i) or {**c, "path": None, "passed": None,
                                         "reason": "not tried: the most-float candidate of this method failed"
                                         if not any(t.get("passed") for t in done.values()) else
                                         "not tried: a more INT8 candidate passed"})
        if any(t.get("passed") for t in tried):
            break
    made = [t for t in tried if t["path"] is not None]
    if not made:
        raise RuntimeError("no INT8 candidate could be made: " + "; ".join(t.get("error", "") for t in tried))
    chosen = next((t for t in made if t["passed"]), None) or min(made, key=lambda t: t["figures"]["mean_kl"])
    shutil.copyfile(chosen["path"], out_path)
    search = [{k: v for k, v in t.items() if k not in ("path", "settings")} for t in tried]
    return {"cpu": cpu, "weight_type": weight_type, "weight_type_reason": weight_why, "reduce_range": reduce_range,
            "reduce_range_reason": why, "settings": {**chosen["settings"], "dead_channels_zeroed": dead},
            "selected_on": select_what, "chosen_passed_selection": bool(chosen["passed"]), "search": search}


def layer_table(fp32: Path, int8_path: Path, x: np.ndarray, work: Path) -> list[dict[str, Any]]:
    """The per-layer error table of a refused INT8 variant (qdq_debug.layer_errors), a row saying why when it fails."""
    from pipeline.export.qdq_debug import layer_errors

    try:
        return layer_errors(fp32, int8_path, x, work / "qdq_debug")
    except Exception as exc:  # noqa: BLE001 - the table helps diagnose; its absence must not end the export
        return [{"tensor": f"(qdq_loss_debug failed: {type(exc).__name__}: {exc})"[:300], "xmodel_sqnr": None,
                 "qdq_sqnr": None}]
