"""Inputs of the export phase: held-back gate inputs and the INT8 calibration sample, drawn from
what the model is trained and served on.

A model trained on whole images gets the split's photos; a model trained on crops (its model.json's
`crop_rule`) gets the crops of its training selection (`ItemSets`: paths and labels per split, built
by the phase with the training side's own item builder). Gate inputs are the test items (never
trained on), preprocessed the model's way (`models.classifier.preprocess`: resize, centre crop, mean/std),
then, while fewer than `n` were made, deterministic variants of them: horizontal flip, four corner
crops at 80 %, a centre crop at 70 % and their flips. Calibration uses a seeded sample of the train
items and their flips. Unreadable images are skipped and counted. Items are ordered by a seeded
hash of their id, so the inputs depend only on the selection.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
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


def _load(paths: list[Path]) -> tuple[list[Any], list[str], int, list[int]]:
    """(images, file names, unreadable count, indices of the readable paths)."""
    from pipeline.data.images import ImageLoadError, load_rgb

    images, names, bad, kept = [], [], 0, []
    for i, p in enumerate(paths):
        try:
            images.append(load_rgb(str(p), MAX_PIXELS)[0])
            names.append(p.name)
            kept.append(i)
        except (ImageLoadError, OSError):
            bad += 1
    return images, names, bad, kept


@dataclass
class ItemSets:
    """Items per split: {split: [(item_id, path, label or None)]} (the training selection of a crops model)."""

    items: dict[str, list[tuple[str, str, str | None]]]
    source: str = "crops"

    def ordered(self, split: str, seed: int) -> list[tuple[str, str, str | None]]:
        rows = self.items.get(split, [])
        return sorted(rows, key=lambda r: hashlib.sha256(f"{seed}:{r[0]}".encode()).hexdigest())


def split_items(split_path: Path, dataset_root: Path, split: str, seed: int) -> list[Path]:
    frame = pd.read_parquet(split_path, columns=["item_id", "path", "split"])
    part = _ordered(frame[frame["split"] == split].drop_duplicates("item_id"), seed)
    return [Path(dataset_root) / p for p in part["path"]]


def _split_rows(split_path: Path, dataset_root: Path, split: str, seed: int) -> list[tuple[str, str, str | None]]:
    frame = pd.read_parquet(split_path)
    part = _ordered(frame[frame["split"] == split].drop_duplicates("item_id"), seed)
    labels = part["label"] if "label" in part.columns else [None] * len(part)
    return [(str(i), str(Path(dataset_root) / p), None if lab is None or pd.isna(lab) else str(lab))
            for i, p, lab in zip(part["item_id"], part["path"], labels)]


def _rows(split_path: Path, dataset_root: Path, items: ItemSets | None, split: str, seed: int
          ) -> list[tuple[str, str, str | None]]:
    return items.ordered(split, seed) if items is not None else _split_rows(split_path, dataset_root, split, seed)


def gate_inputs(split_path: Path, dataset_root: Path, meta: dict, n: int, seed: int = 0, items: ItemSets | None = None,
                split: str = "test") -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """(inputs [M, C, S, S] float32 with M = n when the split allows, "item:view" names, counts) of the
    held-out `split` (test: the gate; val: the INT8 candidates' selection). counts["labels"] holds the
    class index of each unaltered item (the first counts["test_images"] inputs), or -1 where the
    label is unknown or not a class of the model."""
    from pipeline.models.classifier import preprocess

    rows = _rows(split_path, dataset_root, items, split, seed)
    images, names, bad, kept = _load([Path(p) for _, p, _ in rows])
    what = "crops" if items is not None else "images"
    if not images:
        raise DatasetError(f"the export gate needs readable {split} {what}; the split has none ({bad} unreadable)")
    readable = [rows[i] for i in kept]
    index = {c: i for i, c in enumerate(meta["class_names"])}
    chosen, labels = [], []
    for view, f in _views():
        for im, name in zip(images, names):
            if len(chosen) >= n:
                break
            chosen.append(f(im))
            labels.append(f"{name}:{view}")
    x = preprocess(chosen, meta).numpy().astype(np.float32)
    truth = [index.get(lab, -1) if lab is not None else -1 for _, _, lab in readable][: len(chosen)]
    return x, labels, {"test_images": len(images), "test_unreadable": bad, "inputs": len(chosen), "source": what,
                       "labels": truth}


def calibration_inputs(split_path: Path, dataset_root: Path, meta: dict, n: int, seed: int = 0,
                       items: ItemSets | None = None) -> np.ndarray:
    """A seeded sample of n train items, preprocessed: the INT8 calibration data. A train split with
    fewer than n items gives all of them, then their flips, then the gate's other views, up to n."""
    from pipeline.models.classifier import preprocess

    rows = _rows(split_path, dataset_root, items, "train", seed)
    images = _load([Path(p) for _, p, _ in rows[:n]])[0]
    if not images:
        raise DatasetError("INT8 calibration needs readable train items; the split has none")
    chosen = [f(im) for _, f in _views() for im in images][:n]
    return preprocess(chosen, meta).numpy().astype(np.float32)
