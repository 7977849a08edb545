"""Training images per second of the teacher phase's loop (`training.loop.fit` with the phase's
items, transforms and DataLoader, checkpoints every epoch) against a bare timm training loop on
the same model, batch, data, DataLoader and device (AdamW, cross-entropy, the same AMP and
channels_last on CUDA), and their ratio (target >= 0.9).

    python bench/train_throughput.py [--n 256] [--size 96] [--arch tf_efficientnet_lite2]
        [--batch-size 32] [--epochs 2] [--workers 0] [--device auto] [--repeats 3] [--mixup]

Validation is left out of both (an empty val split), so the figure is the training step itself.
An untimed warm-up epoch of the bare loop runs first (allocator, cuDNN autotuning).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_split(root: Path, n: int, size: int, classes: int = 4) -> Path:
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        rel = f"img/{i:05d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / rel, quality=90)
        rows.append({"item_id": f"{i:05d}", "path": rel, "label": f"c{i % classes}", "split": "train",
                     "source_format": "folders"})
    rows.append({**rows[0], "item_id": "val0", "split": "val"})  # dropped from val below: no val cost
    path = root / "split.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def bare_epoch(model, loader, opt, device: str, dtype, channels_last: bool) -> int:
    import torch
    import torch.nn.functional as F

    model.train()
    seen = 0
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    for x, y, _ in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type="cuda", dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        seen += x.shape[0]
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=96, help="input side (train.image_size)")
    ap.add_argument("--arch", default="tf_efficientnet_lite2")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved bare/phase runs; medians reported")
    ap.add_argument("--mixup", action="store_true", help="the recipe's Mixup/CutMix in the phase (bare loop: none)")
    args = ap.parse_args()

    import torch
    from timm.optim import create_optimizer_v2

    from pipeline.core.config import build_config
    from pipeline.core.device import pick_device
    from pipeline.training.items import build_items
    from pipeline.training.loop import amp_dtype, fit
    from pipeline.models.classifier import create_classifier
    from pipeline.training.trainer import make_loaders

    device = pick_device(args.device)
    mix = [] if args.mixup else ["teacher.mixup_alpha=0", "teacher.cutmix_alpha=0"]
    cfg = build_config({}, [f"train.image_size={args.size}", f"train.batch_size={args.batch_size}",
                            f"train.epochs={args.epochs}", f"train.num_workers={args.workers}", f"teacher.arch={args.arch}",
                            "train.allow_random_init=true", "teacher.patience=null", *mix])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        split = make_split(root, args.n, int(args.size * 1.25))
        data = build_items(split, cfg.train, root)
        data.frame = data.frame[data.frame["split"] == "train"].reset_index(drop=True)
        dtype, cl = amp_dtype(device, cfg.train.amp), device.startswith("cuda") and cfg.train.channels_last

        def fresh():
            model, info = create_classifier(args.arch, len(data.class_names), True, cfg.teacher.drop_rate,
                                            allow_random_init=True, seed=0)
            return model, make_loaders(data, cfg.teacher, cfg, info["pretrained_cfg"], device), info

        model, loaders, info = fresh()
        model.to(device)
        if cl:
            model.to(memory_format=torch.channels_last)
        opt = create_optimizer_v2(model, opt="adamw", lr=cfg.teacher.lr, weight_decay=cfg.teacher.weight_decay)
        bare_epoch(model, loaders.train, opt, device, dtype, cl)  # warm-up, untimed
        bare_runs, phase_runs = [], []
        for r in range(args.repeats):  # interleaved, so a busy neighbour slows both alike
            t0 = time.perf_counter()
            seen = sum(bare_epoch(model, loaders.train, opt, device, dtype, cl) for _ in range(args.epochs))
            bare_runs.append(seen / (time.perf_counter() - t0))
            pmodel, ploaders, _ = fresh()
            t0 = time.perf_counter()
            fit(pmodel, ploaders.train, ploaders.val, cfg.teacher, epochs=args.epochs, seed=0,
                checkpoint_dir=root / f"ckpt{r}", device=device, amp=cfg.train.amp,
                channels_last=cfg.train.channels_last)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            phase_runs.append(args.epochs * len(ploaders.train) * args.batch_size / (time.perf_counter() - t0))
        bare, phase = float(np.median(bare_runs)), float(np.median(phase_runs))
    print(f"device {device} arch {args.arch} ({info['weights_source']}) size {args.size} batch {args.batch_size} "
          f"n {args.n} epochs {args.epochs} amp {dtype} channels_last {cl} mixup {args.mixup}")
    print(f"bare timm loop   {bare:9.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in bare_runs)})")
    print(f"teacher phase    {phase:9.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in phase_runs)})")
    print(f"ratio            {phase / bare:9.3f}")


if __name__ == "__main__":
    main()
