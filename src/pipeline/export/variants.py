"""The export phase's work: every variant exported, gated against torch, carded; failures set aside.

Layout of the artifact: `<kind>_<precision>/` per admitted variant (`onnx_fp32/model.onnx`,
`tfjs_fp16/model.json` + shards, each with `card.json`), `rejected/<variant>/` for variants the
gate refused (kept for inspection, never registered), `export.json` (every variant's card, the
passed list, the browser variants) and `report.md`. Latencies are machine-dependent: they go to the
returned metrics (lineage + MLflow), not into the files.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.export import gate
from pipeline.export.cards import FIGURES, card_for, write_outputs


@dataclass
class Context:
    model: Any
    meta: dict[str, Any]
    x: np.ndarray  # gate inputs, NCHW float32
    ref: np.ndarray  # torch logits on x
    cfg: Any  # the export config section
    out_dir: Path
    work: Path
    source: dict[str, Any]
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # class of the first inputs (-1: unknown)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def test_top1(self, logits: np.ndarray) -> dict[str, Any] | None:
        """Top-1 on the unaltered test items with a known class (n), None without labels."""
        known = np.flatnonzero(self.labels >= 0)
        if not len(known):
            return None
        return {"n": int(len(known)), "top1": float((logits[known].argmax(axis=1) == self.labels[known]).mean())}

    def figures(self, logits: np.ndarray) -> dict[str, Any]:
        """The gate figures of a variant's logits on the gate inputs, plus its test top-1 (n) when known."""
        figures = gate.compare(self.ref, logits, _temperature(self.meta))
        if (top := self.test_top1(logits)) is not None:
            figures.update(test_top1=top["top1"], test_n=top["n"])
        return figures


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "card.json")


def _admit(ctx: Context, name: str, folder: Path, checks: dict[str, dict[str, float]], skipped: dict[str, str],
           extra: dict[str, Any]) -> None:
    """Apply the gate to every check of a variant, write its card, move it aside when refused."""
    verdicts = {k: gate.verdict(f, ctx.cfg) for k, f in checks.items()}
    reasons = [f"{k}: {r}" for k, (ok, r) in verdicts.items() if not ok]
    if ctx.cfg.require_browser and name.startswith("tfjs_") and "chromium" not in checks:
        reasons.append(f"chromium: not run ({skipped.get('chromium', 'unknown')}) and export.require_browser is set")
    passed = bool(checks) and not reasons
    if not checks:
        reasons.append("no check ran: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    result = {"passed": passed, "reason": "; ".join(reasons) or "ok", "size_bytes": _size(folder),
              "checks": checks, "skipped": skipped, **extra}
    if not passed:
        dest = ctx.out_dir / "rejected" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(dest))
        folder = dest
    result["dir"] = folder.relative_to(ctx.out_dir).as_posix()
    (folder / "card.json").write_text(json.dumps(card_for(name, result, ctx.meta, ctx.source, ctx.cfg),
                                                 indent=2, sort_keys=True) + "\n")
    ctx.results[name] = result
    ctx.metrics[f"{name}_passed"] = float(passed)
    ctx.metrics[f"{name}_size_bytes"] = float(result["size_bytes"])
    for check, figures in checks.items():
        for key in FIGURES:
            if figures.get(key) is not None:
                ctx.metrics[f"{name}_{check}_{key}"] = float(figures[key])


def export_onnx(ctx: Context, calib: np.ndarray, select: tuple[np.ndarray, str] | None = None) -> Path | None:
    """ONNX variants, each gated on onnxruntime; returns the FP32 file (the TF.js source) or None.
    INT8 is chosen among its candidates on the calibration inputs (int8.py); a refused INT8 variant's
    card and the report carry its per-layer error table."""
    from pipeline.export import int8
    from pipeline.export import onnx_export as ox

    fp32 = ctx.work / "fp32.onnx"
    ox.export_fp32(ctx.model, int(ctx.meta["image_size"]), int(ctx.meta.get("in_chans", 3)), fp32)
    def make(precision: str, path: Path) -> dict[str, Any]:
        if precision == "int8":
            x, what = select if select is not None else (calib, f"{len(calib)} calibration inputs")
            return {"int8": int8.build_int8(fp32, calib, x, what, path, ctx.cfg, _temperature(ctx.meta), ctx.work / "int8")}
        shutil.copyfile(fp32, path) if precision == "fp32" else ox.export_fp16(fp32, path)
        return {}

    for precision in ctx.cfg.onnx_variants:
        name = f"onnx_{precision}"
        folder = ctx.out_dir / name
        folder.mkdir(parents=True)
        try:
            extra = make(precision, folder / "model.onnx")
            logits, ms = ox.ort_logits(folder / "model.onnx", ctx.x)
        except Exception as exc:  # noqa: BLE001 - a variant that cannot be made or run is refused, others go on
            _admit(ctx, name, folder, {}, {"onnxruntime": f"{type(exc).__name__}: {exc}"[:500]}, {"layout": "NCHW"})
            continue
        ctx.metrics[f"{name}_onnxruntime_latency_ms"] = ms
        checks = {"onnxruntime": ctx.figures(logits)}
        extra.update({"layout": "NCHW", "input_name": ox.INPUT_NAME})
        if precision == "int8" and not gate.verdict(checks["onnxruntime"], ctx.cfg)[0]:
            extra["layer_errors"] = int8.layer_table(fp32, folder / "model.onnx", ctx.x[:16], ctx.work)
        _admit(ctx, name, folder, checks, {}, extra)
    return fp32


def _temperature(meta: dict[str, Any]) -> float:
    return float(meta.get("temperature") or 1.0)


def export_tfjs(ctx: Context, fp32_onnx: Path, runtime_cfg: Any) -> dict[str, str]:
    """TF.js variants through the TF environment, gated in Node and in Chromium; {variant: skip reason}."""
    from pipeline.export import runtimes

    variants = list(ctx.cfg.tfjs_variants)
    if not variants:
        return {}
    python, why = runtimes.tf_python(runtime_cfg)
    mods, why_node = runtimes.node_modules(runtime_cfg)
    if python is None or mods is None:
        return {f"tfjs_{v}": why or why_node for v in variants}
    staged = ctx.work / "tfjs"
    conv = runtimes.convert_tfjs(python, fp32_onnx, ctx.work / "tf", staged, variants, runtime_cfg.timeout_s,
                                 list(ctx.cfg.tfjs_uint8_weights))
    for v in variants:
        name, info = f"tfjs_{v}", conv["variants"].get(v, {"ok": False, "error": "not converted"})
        folder = ctx.out_dir / name
        if info.get("ok"):
            shutil.move(str(staged / v), str(folder))
        else:
            folder.mkdir(parents=True)
        checks, skipped = _tfjs_checks(ctx, name, folder, info, mods, runtime_cfg)
        _admit(ctx, name, folder, checks, skipped, {"layout": info.get("layout", "?"), "input_shape": info.get("input_shape"),
                                                   "quantized_weights": info.get("quantized_weights")})
    return {}


def _tfjs_checks(ctx: Context, name: str, folder: Path, info: dict[str, Any], mods: Path,
                 runtime_cfg: Any) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    from pipeline.export import browser, runtimes

    if not info.get("ok"):
        return {}, {"node": info.get("error", "conversion failed"), "chromium": "conversion failed"}
    checks: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    try:
        logits, timing = runtimes.node_logits(mods, folder, ctx.x, ctx.work / "node", runtime_cfg.timeout_s)
        checks["node"] = ctx.figures(logits)
        ctx.metrics[f"{name}_node_latency_ms"] = float(timing["median_ms"])
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        skipped["node"] = f"{type(exc).__name__}: {exc}"[:500]
    why = "disabled (export.browser=false)" if not runtime_cfg.browser else \
        browser.browser_missing(runtime_cfg.chromium, runtime_cfg.chromedriver)
    if why:
        skipped["chromium"] = why
        return checks, skipped
    site = browser.build_site(folder, card_for(name, {"layout": info["layout"]}, ctx.meta, ctx.source, ctx.cfg),
                              mods, ctx.work / "site")
    try:
        logits, timing = browser.chromium_logits(site, ctx.x, runtime_cfg)
        checks["chromium"] = ctx.figures(logits)
        ctx.metrics[f"{name}_chromium_latency_ms"] = timing["median_ms"]
    except Exception as exc:  # noqa: BLE001
        skipped["chromium"] = f"{type(exc).__name__}: {exc}"[:500]
    return checks, skipped


def _selection_inputs(split_path: Path, dataset_root: Path, meta: dict[str, Any], cfg: Any, items: Any
                      ) -> tuple[np.ndarray, str] | None:
    """The INT8 candidates' selection inputs: the validation items with the gate's views (None: no
    readable validation item; the calibration inputs are used)."""
    from pipeline.core.errors import DatasetError
    from pipeline.export import inputs

    try:
        x, _, counts = inputs.gate_inputs(split_path, dataset_root, meta, cfg.n_inputs, cfg.seed, items, split="val")
    except DatasetError:
        return None
    return x, f"{len(x)} inputs from {counts['test_images']} validation {counts['source']} (views added)"


def run_export(model_dir: Path, split_path: Path, dataset_root: Path, cfg: Any, out_dir: Path,
               source: dict[str, Any], runtime_cfg: Any | None = None, items: Any | None = None) -> dict[str, Any]:
    """Export, gate and card every configured variant of the model in `model_dir` (see the module
    docstring). `cfg` is the export section (thresholds); `runtime_cfg` the same section with this
    machine's runtime keys (defaults to cfg); `items` (inputs.ItemSets) the crops a crops-trained
    model was trained and tested on (gate and calibration inputs come from them, not from photos).
    Returns metrics and info strings."""
    from pipeline.export import inputs, onnx_export
    from pipeline.retrieval.crop_rule import rule_of
    from pipeline.models.classifier import load_classifier

    runtime_cfg = runtime_cfg or cfg
    model, meta = load_classifier(model_dir)
    if rule_of(meta) is not None and items is None:
        raise ValueError("the model was trained on crops: the export needs its crop items (inputs.ItemSets)")
    x, names, counts = inputs.gate_inputs(split_path, dataset_root, meta, cfg.n_inputs, cfg.seed, items)
    calib, select = x[:0], None
    if "int8" in cfg.onnx_variants:
        calib = inputs.calibration_inputs(split_path, dataset_root, meta, cfg.n_calibration, cfg.seed, items)
        select = _selection_inputs(split_path, dataset_root, meta, cfg, items)
    ref, torch_ms = onnx_export.torch_logits(model, x)
    out_dir = Path(out_dir)
    labels = np.asarray(counts.pop("labels"), dtype=int)
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        ctx = Context(model, meta, x, ref, cfg, out_dir, Path(tmp), source, labels)
        ctx.metrics.update({"torch_latency_ms": torch_ms, "n_inputs": float(len(x)),
                            "n_test_images": float(counts["test_images"]), "n_calibration": float(len(calib))})
        if (top := ctx.test_top1(ref)) is not None:
            counts["torch_test_top1"] = top
            ctx.metrics.update({"torch_test_top1": top["top1"], "n_test_labelled": float(top["n"])})
        fp32 = export_onnx(ctx, calib, select)
        skipped = export_tfjs(ctx, fp32, runtime_cfg) if fp32 is not None else {}
    summary = write_outputs(out_dir, ctx.results, skipped, meta, source, counts, names, cfg)
    passed = summary["passed"]
    return {**ctx.metrics, "n_passed": float(len(passed)), "n_browser_variants": float(len(summary["browser_variants"])),
            "passed_variants": ",".join(passed) or "none",
            "browser_variant": summary["browser_variants"][0] if summary["browser_variants"] else "none",
            "skipped_variants": ",".join(sorted(skipped)) or "none"}
