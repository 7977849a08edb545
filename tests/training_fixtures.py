"""Tiny labelled images and tiny classifiers for the calibration / registry tests.

Images are flat colours with noise (one colour per class); a classifier is timm's 100k-parameter
`test_efficientnet` at 32 px, random-initialised, whose head is fitted in closed form (logistic
regression on the pooled features), so a "good" model is accurate and a "bad" one (head fitted to
shifted labels) is systematically wrong, both in well under a second.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("blue", "green", "red")
RGB = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def colour_images(root: Path, n_per_class: int, seed: int = 0, prefix: str = "img") -> list[dict[str, str]]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for label in CLASSES:
        for i in range(n_per_class):
            base = np.array(RGB[label], dtype=float) + rng.normal(0, 70, size=3)  # classes overlap
            arr = np.clip(base + rng.normal(0, 45, size=(36, 36, 3)), 0, 255).astype(np.uint8)
            path = root / f"{prefix}_{label}_{i:03d}.png"
            Image.fromarray(arr, "RGB").save(path)
            records.append({"item_id": path.stem, "path": str(path), "label": label})
    return records


def tiny_model_dir(out: Path, train: list[dict[str, str]], shift: int = 0, seed: int = 0, scale: float = 1.0,
                   classes: tuple[str, ...] = CLASSES, temperature: float = 1.0, threshold: float | None = None) -> Path:
    """A test_efficientnet classifier over `classes` whose head predicts label index + `shift` (0: a good
    model), with logits multiplied by `scale`, and the given temperature / threshold in model.json."""
    import torch
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    from pipeline.models.classifier import create_classifier, model_meta, preprocess, save_classifier

    train = [r for r in train if r["label"] in classes]
    model, info = create_classifier("test_efficientnet", len(classes), pretrained=False, seed=seed)
    meta = model_meta("test_efficientnet", list(classes), 32, 32, (0.5,) * 3, (0.5,) * 3, info)
    meta.update(temperature=temperature, threshold=threshold)
    model.eval()
    with torch.no_grad():
        x = preprocess([Image.open(r["path"]) for r in train], meta)
        feats = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    y = (np.array([classes.index(r["label"]) for r in train]) + shift) % len(classes)
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(feats, y)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.as_tensor(clf.coef_ * scale, dtype=torch.float32))
        model.classifier.bias.copy_(torch.as_tensor(clf.intercept_ * scale, dtype=torch.float32))
    return save_classifier(model, meta, out)
