"""INT8 ONNX: the quantisation settings tried, the one kept, and a refused variant's per-layer table.

Every candidate is static QDQ (uint8 activations, int8 weights, per-channel unless configured
otherwise) with `reduce_range` decided for this CPU (onnx_export.resolve_reduce_range). Candidates:
each calibration method of `export.int8_method` ("auto": MinMax, then Percentile), each with the
classifier layer quantised and, when `export.int8_keep_head_float` allows, kept in float. Each is
judged by the gate's own figures against the FP32 ONNX model on the calibration inputs (train items:
no test item takes part in the choice). The first candidate in that order whose figures pass is
kept (an all-INT8 head before a float one, MinMax before Percentile); when none passes, the one
with the lowest mean KL. The held-out gate then judges the kept one on the test inputs like any
variant. The card records the CPU, why reduce_range was chosen, the settings and every candidate's
figures.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.export import gate
from pipeline.export import onnx_export as ox

SEARCH_FIGURES = ("top1_agreement", "prob_max_diff", "mean_kl", "corr")


def candidates(cfg: Any) -> list[dict[str, Any]]:
    """(method, keep_head_float) in the order they are preferred."""
    methods = ["minmax", "percentile"] if cfg.int8_method == "auto" else [cfg.int8_method]
    heads = {"auto": [False, True], "always": [True], "never": [False]}[cfg.int8_keep_head_float]
    return [{"method": m, "keep_head_float": h} for h in heads for m in methods]


def batch_logits(path: Path, x: np.ndarray, batch: int = 32, threads: int = 1) -> np.ndarray:
    """onnxruntime logits of `x` in batches (selection only; the gate runs batch 1 like a browser)."""
    sess = ox.ort_session(path, threads)
    return np.concatenate([sess.run(None, {ox.INPUT_NAME: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def build_int8(fp32: Path, calib: np.ndarray, out_path: Path, cfg: Any, temperature: float, work: Path) -> dict[str, Any]:
    """Quantise `fp32` with every candidate, keep the preferred one at `out_path`; returns the card's
    `int8` entry (cpu, reduce_range and why, settings, search)."""
    cpu = ox.cpu_int8_info()
    reduce_range, why = ox.resolve_reduce_range(cfg.int8_reduce_range, cpu)
    ref = batch_logits(fp32, calib)
    work.mkdir(parents=True, exist_ok=True)
    tried: list[dict[str, Any]] = []
    for i, cand in enumerate(candidates(cfg)):
        path = work / f"int8_{i}.onnx"
        try:
            settings = ox.export_int8(fp32, calib, path, cfg.int8_per_channel, cand["method"], reduce_range,
                                      cand["keep_head_float"], cfg.int8_percentile)
            figures = gate.compare(ref, batch_logits(path, calib), temperature)
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot be made is reported, others go on
            tried.append({**cand, "error": f"{type(exc).__name__}: {exc}"[:300], "path": None})
            continue
        if cand["keep_head_float"] and not settings["float_nodes"]:
            path.unlink(missing_ok=True)  # no Gemm/MatMul head to keep: the same model as its all-INT8 twin
            continue
        ok, reason = gate.verdict(figures, cfg)
        tried.append({**cand, "settings": settings, "passed": ok, "reason": reason, "path": path,
                      "figures": {k: figures[k] for k in SEARCH_FIGURES}})
    made = [t for t in tried if t["path"] is not None]
    if not made:
        raise RuntimeError("no INT8 candidate could be made: " + "; ".join(t.get("error", "") for t in tried))
    chosen = next((t for t in made if t["passed"]), None) or min(made, key=lambda t: t["figures"]["mean_kl"])
    shutil.copyfile(chosen["path"], out_path)
    search = [{k: v for k, v in t.items() if k not in ("path", "settings")} for t in tried]
    return {"cpu": cpu, "reduce_range": reduce_range, "reduce_range_reason": why, "settings": chosen["settings"],
            "selected_on": f"{len(calib)} calibration inputs (train items and flips)",
            "chosen_passed_on_calibration": bool(chosen["passed"]), "search": search}


def layer_table(fp32: Path, int8_path: Path, x: np.ndarray, work: Path) -> list[dict[str, Any]]:
    """The per-layer error table of a refused INT8 variant (onnx_export.layer_errors), [] when it fails."""
    try:
        return ox.layer_errors(fp32, int8_path, x, work / "qdq_debug")
    except Exception as exc:  # noqa: BLE001 - the table helps diagnose; its absence must not end the export
        return [{"tensor": f"(qdq_loss_debug failed: {type(exc).__name__}: {exc})"[:300], "xmodel_sqnr": None,
                 "qdq_sqnr": None}]
