"""Size and per-image latency of every export variant: torch, onnxruntime, TF.js wasm in Node and in
headless Chromium (batch 1, median over the gate inputs), with the gate's figures.

    .venv/bin/python bench/export_latency.py --model-dir <calibration artifact or model dir> \
        --split <split artifact>/split.parquet --dataset-root <dataset> [--crops <crops artifact>] [--n 200] [--out DIR]

A model trained on crops (its model.json's crop_rule) needs --crops: the gate and INT8 calibration
inputs are its test / train crops, as in the export phase.

Reference criteria (issue 12): model <= 150 MB, browser inference < 5 s per image on CPU (aim < 200 ms
with wasm for a MobileNetV2-class student). Prints the table and the verdict on the criteria.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--dataset-root", type=Path, required=True)
    ap.add_argument("--crops", type=Path, default=None, help="crops artifact (a model trained on crops)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from pipeline.core.config import PipelineConfig
    from pipeline.export.cards import gate_table
    from pipeline.export.phases import items_for, model_dir_of
    from pipeline.export.variants import run_export
    from pipeline.models.classifier import read_meta

    model_dir = model_dir_of(args.model_dir)
    meta = read_meta(model_dir)
    config = PipelineConfig()
    cfg = config.export.model_copy(update={"n_inputs": args.n})
    out = args.out or Path(tempfile.mkdtemp(prefix="export-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    items = items_for(meta, args.split, args.crops, config.train, args.dataset_root)
    metrics = run_export(model_dir, args.split, args.dataset_root, cfg, out,
                         {"calibration_artifact": model_dir.name, "arch": meta["arch"]}, items=items)
    print(gate_table(out, metrics))
    summary = json.loads((out / "export.json").read_text())
    for name in summary["browser_variants"]:
        mb = summary["variants"][name]["size_bytes"] / 1e6
        ms = metrics.get(f"{name}_chromium_latency_ms", metrics.get(f"{name}_node_latency_ms"))
        print(f"{name}: {mb:.1f} MB (<= 150: {mb <= 150}), browser {ms:.0f} ms/image (< 5000: {ms < 5000})")
    print(f"artifacts: {out}")


if __name__ == "__main__":
    main()
