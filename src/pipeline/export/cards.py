"""Model cards (one JSON per variant), export.json, report.md and the printed gate table."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# The variant the page serves: FP16 (near-lossless, half the download) when admitted, else uint8, else FP32.
BROWSER_ORDER = ("tfjs_fp16", "tfjs_uint8", "tfjs_fp32")
FIGURES = ("corr", "raw_corr", "min_image_corr", "max_abs", "top1_agreement", "conf_max_diff", "prob_max_diff",
           "mean_kl", "test_top1")
THRESHOLDS = ("min_corr", "min_image_corr", "min_top1_agreement", "max_prob_diff", "max_kl")


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
            "threshold": meta.get("threshold"), "crop_rule": meta.get("crop_rule") or {"source": "images"},
            "source": source, "size_bytes": result.get("size_bytes"),
            **{k: result[k] for k in ("int8", "quantized_weights", "layer_errors") if result.get(k) is not None},
            "gate": {"passed": result.get("passed"), "reason": result.get("reason"), "checks": result.get("checks", {}),
                     "skipped": result.get("skipped", {}), "thresholds": {k: getattr(cfg, k) for k in THRESHOLDS}}}


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
    src, inputs = summary["source"], summary["inputs"]
    what = inputs.get("source", "images")
    lines = [f"# Export of the calibrated student ({src.get('arch')}, calibration {src.get('calibration_artifact')})", "",
             f"Gate inputs: {inputs['inputs']} held-back inputs from {inputs['test_images']} test {what} (flips and "
             f"crops added to reach export.n_inputs). Thresholds: top-1 agreement >= {cfg.min_top1_agreement}, "
             f"max |dp| <= {cfg.max_prob_diff}, mean KL <= {cfg.max_kl}, centred logit corr > {cfg.min_corr}, "
             f"lowest per-image corr > {cfg.min_image_corr} (3+ classes). Probabilities are calibrated (softmax(z / T)).",
             ""]
    if top := inputs.get("torch_test_top1"):
        lines += [f"Torch test top-1 on the {top['n']} unaltered test {what}: {top['top1']:.4f}.", ""]
    lines += ["| variant | size MB | check | top-1 agree | max abs dp | mean KL | centred corr | min image corr | "
              "raw corr | max abs logit | test top-1 | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, card in summary["variants"].items():
        checks = card["gate"]["checks"] or {"-": {}}
        for check, f in checks.items():
            lines.append(f"| {name} | {_fmt(card['size_bytes'] / 1e6, '.2f')} | {check} | "
                         f"{_fmt(f.get('top1_agreement'), '.4f')} | {_fmt(f.get('prob_max_diff'), '.2e')} | "
                         f"{_fmt(f.get('mean_kl'), '.2e')} | {_fmt(f.get('corr'), '.6f')} | "
                         f"{_fmt(f.get('min_image_corr'), '.5f')} | {_fmt(f.get('raw_corr'), '.6f')} | "
                         f"{_fmt(f.get('max_abs'), '.2e')} | {_fmt(f.get('test_top1'), '.4f')} | "
                         f"{'pass' if card['gate']['passed'] else 'REFUSED'} |")
        for check, why in card["gate"]["skipped"].items():
            lines.append(f"| {name} | | {check} | skipped: {why} | | | | | | | | |")
    lines += ["", f"Admitted: {', '.join(summary['passed']) or 'none'}. Browser variant served: "
              f"{(summary['browser_variants'] or ['none'])[0]}."]
    refused = {k: c["gate"]["reason"] for k, c in summary["variants"].items() if not c["gate"]["passed"]}
    lines += [f"- refused {k}: {r}" for k, r in refused.items()]
    lines += [f"- not exported {k}: {r}" for k, r in sorted(summary["skipped"].items())]
    for name, card in summary["variants"].items():
        lines += _int8_lines(name, card) + _uint8_lines(name, card)
    return "\n".join(lines) + "\n"


def _int8_lines(name: str, card: dict[str, Any]) -> list[str]:
    info = card.get("int8")
    if not info:
        return []
    cpu, st = info["cpu"], info["settings"]
    lines = ["", f"## {name}: quantisation", "",
             f"CPU: {cpu.get('arch')}, VNNI {cpu.get('vnni')} ({', '.join(cpu.get('flags') or []) or 'no VNNI flags'}); "
             f"weights {info.get('weight_type', 'int8')}: {info.get('weight_type_reason', '')}; "
             f"reduce_range {info['reduce_range']}: {info['reduce_range_reason']}.",
             f"Kept: {st['method']} calibration on {st['n_calibration']} inputs, per-channel {st['per_channel']}, "
             f"float layers: first {st.get('float_convs', 0)} convolutions, classifier "
             f"{'float' if st.get('float_head') else 'INT8'}; chosen on {info['selected_on']}.", "",
             "| calibration | float convs | head | top-1 agree | max abs dp | mean KL | centred corr | on the selection inputs |",
             "|---|---|---|---|---|---|---|---|"]
    for t in info["search"]:
        f = t.get("figures") or {}
        lines.append(f"| {t['method']} | {t.get('float_convs', 0)} | {'float' if t['keep_head_float'] else 'int8'} | "
                     f"{_fmt(f.get('top1_agreement'), '.4f')} | {_fmt(f.get('prob_max_diff'), '.2e')} | "
                     f"{_fmt(f.get('mean_kl'), '.2e')} | {_fmt(f.get('corr'), '.5f')} | "
                     f"{t.get('reason') or t.get('error', '')} |")
    if card.get("layer_errors"):
        lines += ["", f"### {name}: per-layer error (onnxruntime qdq_loss_debug; SQNR in dB, higher is better)", "",
                  "`xmodel`: the INT8 model's tensor against the float model's (error accumulated up to it); `qdq`: "
                  "this tensor's own quantise-dequantise (- for a Clip/Relu fused into its producer). In graph order; "
                  "where xmodel drops most is where the answers are lost:", "",
                  "| tensor | xmodel SQNR | qdq SQNR |", "|---|---|---|"]
        lines += [f"| {r['tensor']}{' (' + r['weight'] + ')' if r.get('weight') else ''} | "
                  f"{_fmt(r.get('xmodel_sqnr'), '.1f')} | {_fmt(r.get('qdq_sqnr'), '.1f')} |" for r in card["layer_errors"]]
    return lines


def _uint8_lines(name: str, card: dict[str, Any]) -> list[str]:
    q = card.get("quantized_weights")
    if not q:
        return []
    return ["", f"## {name}: weights stored as uint8", "",
            f"{q.get('n_uint8', '?')} of {q.get('n_weights', '?')} weight tensors ({q.get('rule', '')}); the others fp16. "
            f"uint8 bytes {q.get('uint8_share', 0):.0%} of the weights."]


def gate_table(export_dir: Path, metrics: dict[str, Any]) -> str:
    """The printed table: size, correlation, top-1 agreement and latency per runtime, per variant."""
    summary = json.loads((Path(export_dir) / "export.json").read_text())
    head = (f"{'variant':<11} {'MB':>6} {'top1':>6} {'max|dp|':>8} {'KL':>8} {'corr':>9} {'torch ms':>9} {'ort ms':>7} "
            f"{'node ms':>8} {'chrome ms':>9}  verdict")
    rows = [head]
    for name, card in summary["variants"].items():
        checks = card["gate"]["checks"].values()
        worst = min((c["corr"] for c in checks), default=math.nan)
        top1 = min((c["top1_agreement"] for c in checks), default=math.nan)
        dp = max((c.get("prob_max_diff", math.nan) for c in checks), default=math.nan)
        kl = max((c.get("mean_kl", math.nan) for c in checks), default=math.nan)
        lat = [metrics.get("torch_latency_ms")] + [metrics.get(f"{name}_{r}_latency_ms") for r in ("onnxruntime", "node", "chromium")]
        verdict = "pass" if card["gate"]["passed"] else f"REFUSED ({card['gate']['reason']})"
        if "chromium" in card["gate"]["skipped"]:
            verdict += f"; chromium skipped: {card['gate']['skipped']['chromium']}"
        rows.append(f"{name:<11} {card['size_bytes'] / 1e6:>6.2f} {_fmt(top1, '.3f'):>6} {_fmt(dp, '.4f'):>8} "
                    f"{_fmt(kl, '.1e'):>8} {_fmt(worst, '.6f'):>9} "
                    + " ".join(f"{_fmt(v, '.1f'):>{w}}" for v, w in zip(lat, (9, 7, 8, 9))) + f"  {verdict}")
    rows += [f"{k:<11} skipped: {why}" for k, why in sorted(summary["skipped"].items())]
    return "\n".join(rows)
