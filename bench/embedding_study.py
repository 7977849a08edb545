"""Bench: the embedding study's cells and comparison as library calls on a prepared split + crops.

    python bench/embedding_study.py --split DIR --crops DIR --out DIR [--config configs/demo.yaml] [--set k=v ...]

Runs every grid cell of `study` (per backbone: the frozen GAP baseline, then each loss, staged) and the
comparison, the way the `embedding-study` flow's phases do (same functions, no Prefect/MLflow), and prints
each cell's wall time, the total, and the comparison table. The flow's budget on the demo crops with the
CPU defaults is 10 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from pipeline.core.config import load_config
from pipeline.study.cell import run_cell
from pipeline.study.compare import run_study
from pipeline.study.phases import grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", required=True, type=Path)
    ap.add_argument("--crops", type=Path)
    ap.add_argument("--dataset-root", type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    cfg = load_config(a.config, a.set)
    shutil.rmtree(a.out, ignore_errors=True)
    t0, cells, times = time.perf_counter(), {}, {}
    for inst in grid(cfg):
        t = time.perf_counter()
        name = f"embedding_cell_{inst['name']}"
        run_cell(a.split, a.crops, cfg, inst["backbone"], inst["loss"], a.out / name, dataset_root=a.dataset_root,
                 checkpoint_dir=a.out / "ckpt" / name, device=a.device)
        cells[name] = a.out / name
        times[name] = round(time.perf_counter() - t, 1)
        print(f"{name}: {times[name]} s", flush=True)
    m = run_study(cells, a.out / "study", k=cfg.study.k)
    total = round(time.perf_counter() - t0, 1)
    print(json.dumps({"seconds_total": total, "cells": times, "best": m.get("best_cell")}))
    print((a.out / "study" / "comparison.md").read_text())


if __name__ == "__main__":
    main()
