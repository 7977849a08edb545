"""Tiny image datasets and configs for the training tests (3 pattern classes, 40 px, some grayscale)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.config import build_config

CLASSES = ("checker", "hstripes", "vstripes")
PER_SPLIT = {"train": 8, "val": 3, "test": 3}


def _pattern(kind: str, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    period = int(rng.integers(4, 9))
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "checker":
        base = ((yy // period + xx // period) % 2).astype(np.float32)
    elif kind == "hstripes":
        base = ((yy // period) % 2).astype(np.float32)
    else:
        base = ((xx // period) % 2).astype(np.float32)
    img = base * 180 + 40 + rng.normal(0, 20, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_split(root: Path, seed: int = 0) -> Path:
    """Images under root/images, root/split.parquet (folders-like, with region and zone_area); returns the split."""
    rng = np.random.default_rng(seed)
    rows = []
    for c_i, kind in enumerate(CLASSES):
        for split, n in PER_SPLIT.items():
            for i in range(n):
                gray = _pattern(kind, rng)
                rel = f"images/{kind}/{split}_{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                if i % 3 == 0:  # grayscale files are part of every class
                    Image.fromarray(gray, "L").save(root / rel)
                else:
                    tint = np.stack([gray, np.roll(gray, 1, 0), gray // 2 + 60], axis=-1)
                    Image.fromarray(tint.astype(np.uint8), "RGB").save(root / rel)
                rows.append({"item_id": f"{kind}-{split}-{i:02d}", "path": rel, "label": kind, "split": split,
                             "region": "north" if i % 2 == 0 else "south", "zone_area": None,
                             "group_id": f"{kind}-{split}-{i}", "source_format": "folders", "has_damage": False})
    path = root / "split.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def tiny_config(*overrides: str):
    """A config that trains in a few CPU steps: 32 px, random-init small nets, no patience."""
    base = ["train.image_size=32", "train.epochs=2", "train.batch_size=8", "train.eval_batch_size=16",
            "train.allow_random_init=true", "teacher.arch=mobilenetv3_small_050", "teacher.pretrained=false",
            "student.arch=mobilenetv3_small_050", "student.pretrained=false", "teacher.patience=null",
            "student.patience=null", "finetune.patience=null", "regional.patience=null",
            "teacher.lr=0.003", "student.lr=0.003", "teacher.warmup_epochs=0"]
    return build_config({}, base + list(overrides))
