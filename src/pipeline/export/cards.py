"""Model cards (one JSON per variant), export.json, report.md and the printed gate table."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# The variant the page serves: the smallest download among the admitted TF.js variants.
BROWSER_ORDER = ("tfjs_uint8", "tfjs_fp16", "tfjs_fp32")
FIGURES = ("corr", "min_image_corr", "max_abs", "top1_agreement", "conf_max_diff")


def card_for(name: str, result: dict[str, Any], meta: dict[str, Any], source: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """What a consumer of the variant needs: input contract, classes, calibration, provenance, gate."""
    kind, precision = name.split("_", 1)
    return {"variant": name, "format": "onnx" if kind == "onnx" else "tfjs_graph_model", "precision": precision,
            "arch": meta["arch"], "image_size": int(meta["image_size"]),
            "resize_size": int(meta.get("resize_size") or meta["image_size"]), "in_chans": int(meta.get("in_chans", 3)),
            "mean": [float(v) for v in meta["mean"]], "std": [float(v) for v in meta["std"]],
            "layout": result.get("layout", "NCHW"), "input_shape": result.get("input_shape"),
            "preprocess": "RGB, resize short side to resize_size (bicubic), centre crop image_size, /255, (x-mean)/std",
            "class_names": list(meta["class_names"]), "temperature": float(meta.get("temperature") or 1.0),
            "threshold": meta.get("threshold"), "source": source, "size_bytes": result.get("size_bytes"),
            "gate": {"passed": result.get("passed"), "reason": result.get("reason"), "checks": result.get("checks", {}),
                     "skipped": result.get("skipped", {}),
                     "thresholds": {"min_corr": cfg.min_corr, "min_image_corr": cfg.min_image_corr,
                                    "min_top1_agreement": cfg.min_top1_agreement}}}


def write_outputs(out_dir: Path, results: dict[str, dict[str, Any]], skipped: dict[str, str], meta: dict[str, Any],
                  source: dict[str, Any], counts: dict[str, int], names: list[str], cfg: Any) -> dict[str, Any]:
    passed = sorted(k for k, r in results.items() if r["passed"])
    browser = [v for v in BROWSER_ORDER if v in passed]
    summary = {"source": source, "inputs": {**counts, "names": names}, "passed": passed, "browser_variants": browser,
               "skipped": skipped, "variants": {k: card_for(k, r, meta, source, cfg) | {"dir": r["dir"]}
                                                for k, r in sorted(results.items())}}
    (out_dir / "export.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out_dir / "report.md").write_text(report_md(summary, cfg))
    return summary


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def report_md(summary: dict[str, Any], cfg: Any) -> str:
    src = summary["source"]
    lines = [f"# Export of the calibrated student ({src.get('arch')}, calibration {src.get('calibration_artifact')})", "",
             f"Gate inputs: {summary['inputs']['inputs']} held-back inputs from {summary['inputs']['test_images']} test "
             f"images (flips and crops added to reach export.n_inputs). Thresholds: pooled corr > {cfg.min_corr}, "
             f"lowest per-image corr > {cfg.min_image_corr}, top-1 agreement >= {cfg.min_top1_agreement}.", "",
             "| variant | size MB | check | corr | min image corr | max abs | top-1 agree | conf diff | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, card in summary["variants"].items():
        checks = card["gate"]["checks"] or {"-": {}}
        for check, f in checks.items():
            lines.append(f"| {name} | {_fmt(card['size_bytes'] / 1e6, '.2f')} | {check} | {_fmt(f.get('corr'), '.6f')} | "
                         f"{_fmt(f.get('min_image_corr'), '.5f')} | {_fmt(f.get('max_abs'), '.2e')} | "
                         f"{_fmt(f.get('top1_agreement'), '.4f')} | {_fmt(f.get('conf_max_diff'), '.2e')} | "
                         f"{'pass' if card['gate']['passed'] else 'REFUSED'} |")
        for check, why in card["gate"]["skipped"].items():
            lines.append(f"| {name} | | {check} | skipped: {why} | | | | | |")
    lines += ["", f"Admitted: {', '.join(summary['passed']) or 'none'}. Browser variant served: "
              f"{(summary['browser_variants'] or ['none'])[0]}."]
    refused = {k: c["gate"]["reason"] for k, c in summary["variants"].items() if not c["gate"]["passed"]}
    lines += [f"- refused {k}: {r}" for k, r in refused.items()]
    lines += [f"- not exported {k}: {r}" for k, r in sorted(summary["skipped"].items())]
    return "\n".join(lines) + "\n"


def gate_table(export_dir: Path, metrics: dict[str, Any]) -> str:
    """The printed table: size, correlation, top-1 agreement and latency per runtime, per variant."""
    summary = json.loads((Path(export_dir) / "export.json").read_text())
    head = f"{'variant':<11} {'MB':>6} {'corr':>9} {'top1':>6} {'torch ms':>9} {'ort ms':>7} {'node ms':>8} {'chrome ms':>9}  verdict"
    rows = [head]
    for name, card in summary["variants"].items():
        checks = card["gate"]["checks"]
        worst = min((c["corr"] for c in checks.values()), default=math.nan)
        top1 = min((c["top1_agreement"] for c in checks.values()), default=math.nan)
        lat = [metrics.get("torch_latency_ms")] + [metrics.get(f"{name}_{r}_latency_ms") for r in ("onnxruntime", "node", "chromium")]
        verdict = "pass" if card["gate"]["passed"] else f"REFUSED ({card['gate']['reason']})"
        if "chromium" in card["gate"]["skipped"]:
            verdict += f"; chromium skipped: {card['gate']['skipped']['chromium']}"
        rows.append(f"{name:<11} {card['size_bytes'] / 1e6:>6.2f} {_fmt(worst, '.6f'):>9} {_fmt(top1, '.3f'):>6} "
                    + " ".join(f"{_fmt(v, '.1f'):>{w}}" for v, w in zip(lat, (9, 7, 8, 9))) + f"  {verdict}")
    rows += [f"{k:<11} skipped: {why}" for k, why in sorted(summary["skipped"].items())]
    return "\n".join(rows)
