"""Inputs of the export phase: held-back gate inputs and the INT8 calibration sample.

Gate inputs are the split's test images (never trained on), preprocessed the model's way
(`modeling.preprocess`: resize, centre crop, mean/std), then, while fewer than `n` were made,
deterministic variants of them: horizontal flip, four corner crops at 80 %, a centre crop at 70 %
and their flips. Calibration uses a seeded sample of the train images. Unreadable images are
skipped and counted. Everything is sorted by item_id first, so the inputs depend only on the split.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.core.errors import DatasetError

MAX_PIXELS = 89_478_485


def _views() -> list[tuple[str, Callable[[Any], Any]]]:
    from PIL import ImageOps

    def crop(fx: float, fy: float, frac: float) -> Callable[[Any], Any]:
        def f(im: Any) -> Any:
            w, h = im.size
            cw, ch = max(1, int(w * frac)), max(1, int(h * frac))
            x0, y0 = int((w - cw) * fx), int((h - ch) * fy)
            return im.crop((x0, y0, x0 + cw, y0 + ch))
        return f

    base = [("orig", lambda im: im), ("tl80", crop(0, 0, .8)), ("tr80", crop(1, 0, .8)), ("bl80", crop(0, 1, .8)),
            ("br80", crop(1, 1, .8)), ("c70", crop(.5, .5, .7))]
    flipped = [(f"{n}_flip", (lambda g: lambda im: ImageOps.mirror(g(im)))(g)) for n, g in base]
    return [v for pair in zip(base, flipped) for v in pair]


def _ordered(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    key = [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in frame["item_id"]]
    return frame.assign(_k=key).sort_values("_k").drop(columns="_k")


def _load(paths: list[Path]) -> tuple[list[Any], list[str], int]:
    from pipeline.data.images import ImageLoadError, load_rgb

    images, names, bad = [], [], 0
    for p in paths:
        try:
            images.append(load_rgb(str(p), MAX_PIXELS)[0])
            names.append(p.name)
        except (ImageLoadError, OSError):
            bad += 1
    return images, names, bad


def split_items(split_path: Path, dataset_root: Path, split: str, seed: int) -> list[Path]:
    frame = pd.read_parquet(split_path, columns=["item_id", "path", "split"])
    part = _ordered(frame[frame["split"] == split].drop_duplicates("item_id"), seed)
    return [Path(dataset_root) / p for p in part["path"]]


def gate_inputs(split_path: Path, dataset_root: Path, meta: dict, n: int, seed: int = 0,
                ) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """(inputs [M, C, S, S] float32 with M = n when the test split allows, "image:view" names, counts)."""
    from pipeline.training.modeling import preprocess

    images, names, bad = _load(split_items(split_path, dataset_root, "test", seed))
    if not images:
        raise DatasetError(f"the export gate needs readable test images; the split has none ({bad} unreadable)")
    chosen, labels = [], []
    for view, f in _views():
        for im, name in zip(images, names):
            if len(chosen) >= n:
                break
            chosen.append(f(im))
            labels.append(f"{name}:{view}")
    x = preprocess(chosen, meta).numpy().astype(np.float32)
    return x, labels, {"test_images": len(images), "test_unreadable": bad, "inputs": len(chosen)}


def calibration_inputs(split_path: Path, dataset_root: Path, meta: dict, n: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of n train images, preprocessed: the INT8 calibration data."""
    from pipeline.training.modeling import preprocess

    images, _, _ = _load(split_items(split_path, dataset_root, "train", seed)[: n * 2])
    if not images:
        raise DatasetError("INT8 calibration needs readable train images; the split has none")
    return preprocess(images[:n], meta).numpy().astype(np.float32)
