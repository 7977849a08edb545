"""Answering with a trained classifier: label, calibrated confidence and "not conclusive".

`batched_logits` is the one way the training side runs a saved classifier over images (calibration,
promotion scoring and prediction all use it). `Predictor` wraps a model dir (`model.safetensors` +
`model.json`, see `pipeline.models.classifier`) and applies the temperature and threshold stored
with the model. A model trained on crops (its model.json's `crop_rule`, see
`pipeline.retrieval.crop_rule`) answers a whole photo the way its training data was made: the vehicle
box, grid windows, one answer per window and one for the photo (`windows` column); a model trained
on whole images answers on the whole image. `pipeline.registry.predict` answers from the MLflow
registry with it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

MAX_PIXELS = 89_478_485


def item_records(items: Iterable[Any]) -> list[dict[str, str]]:
    """Normalise items to [{"item_id", "path", "label"}]: accepts (path, label[, item_id]) tuples,
    mappings or DataFrame rows with those keys or `training.data`'s `key` / `target`, or objects
    with those attributes. item_id defaults to the path. A training frame's `target` (the class the
    model learnt) and `key` (crop id for crops) win over its `label` / `item_id` columns, which there
    hold the source image's label and id."""
    if hasattr(items, "to_dict"):  # a DataFrame (training.data.TrainingData.frame)
        items = items.to_dict("records")
    out = []
    for it in items:
        if isinstance(it, dict):
            path, label = it["path"], it["target"] if "target" in it else it.get("label")
            iid = it["key"] if "key" in it else it.get("item_id")
        elif isinstance(it, (tuple, list)):
            path, label, iid = it[0], it[1], it[2] if len(it) > 2 else None
        else:
            path, label, iid = it.path, getattr(it, "label", None), getattr(it, "item_id", None)
        out.append({"item_id": str(iid if iid is not None else path), "path": str(path),
                    "label": None if label is None else str(label)})
    return out


def _load_images(sources: Sequence[Any]) -> tuple[list[Any], list[str | None]]:
    from pipeline.data.images import ImageLoadError, load_rgb

    images, errors = [], []
    for src in sources:
        try:
            images.append(load_rgb(src if isinstance(src, bytes) else str(src), MAX_PIXELS)[0])
            errors.append(None)
        except (ImageLoadError, OSError) as exc:
            images.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    return images, errors


def batched_logits(model: Any, meta: dict, sources: Sequence[Any], batch_size: int = 32,
                   device: str = "cpu") -> tuple[np.ndarray, list[str | None]]:
    """Logits [N, C] (float32) of `model` on images given as paths or encoded bytes, preprocessed
    the model's way (`models.classifier.preprocess`). Unreadable images get a NaN row and an error message."""
    import torch

    from pipeline.models.classifier import preprocess

    n_classes = len(meta["class_names"])
    logits = np.full((len(sources), n_classes), np.nan, dtype=np.float32)
    errors: list[str | None] = []
    model = model.to(device).eval()
    for start in range(0, len(sources), batch_size):
        images, errs = _load_images(sources[start:start + batch_size])
        errors.extend(errs)
        ok = [i for i, im in enumerate(images) if im is not None]
        if not ok:
            continue
        batch = preprocess([images[i] for i in ok], meta).to(device)
        with torch.inference_mode():
            out = model(batch).float().cpu().numpy()
        logits[[start + i for i in ok]] = out
    return logits, errors


def image_logits(model: Any, meta: dict, images: Sequence[Any], batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """Logits [N, C] (float32) of `model` on decoded PIL images, preprocessed the model's way."""
    import torch

    from pipeline.models.classifier import preprocess

    out = np.zeros((len(images), len(meta["class_names"])), dtype=np.float32)
    model = model.to(device).eval()
    for start in range(0, len(images), batch_size):
        batch = preprocess(list(images[start:start + batch_size]), meta).to(device)
        with torch.inference_mode():
            out[start:start + len(batch)] = model(batch).float().cpu().numpy()
    return out


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / float(temperature)
    z = z - np.nanmax(z, axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def conclusive_answers(probs: np.ndarray, class_names: Sequence[str], threshold: float | None) -> dict[str, list]:
    """label, confidence and not_conclusive per row (NaN rows: no label, not conclusive)."""
    labels, confs, flags = [], [], []
    for row in probs:
        if np.isnan(row).any():
            labels.append(None), confs.append(math.nan), flags.append(True)
            continue
        k = int(np.argmax(row))
        labels.append(class_names[k])
        confs.append(float(row[k]))
        flags.append(threshold is not None and float(row[k]) < threshold)
    return {"label": labels, "confidence": confs, "not_conclusive": flags}


class Predictor:
    """A saved classifier with its temperature, threshold and (trained on crops) crop rule."""

    def __init__(self, model: Any, meta: dict, device: str = "cpu", batch_size: int = 32,
                 weights_dir: Path | None = None):
        from pipeline.retrieval.crop_rule import PhotoWindows, rule_of

        self.model, self.meta, self.device, self.batch_size = model, meta, device, batch_size
        self.class_names: list[str] = list(meta["class_names"])
        self.temperature = float(meta.get("temperature") or 1.0)
        threshold = meta.get("threshold")
        self.threshold = None if threshold is None else float(threshold)
        rule = rule_of(meta)
        self.windows = PhotoWindows(rule, weights_dir) if rule is not None else None

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str = "cpu", batch_size: int = 32,
                 weights_dir: Path | None = None) -> "Predictor":
        from pipeline.models.classifier import load_classifier

        model, meta = load_classifier(Path(model_dir), device=device)
        return cls(model, meta, device=device, batch_size=batch_size, weights_dir=weights_dir)

    def predict(self, sources: Sequence[Any], whole_image: bool | Sequence[bool] = False):
        """DataFrame: source, label, confidence (calibrated), not_conclusive, error; for a model
        trained on crops also damaged, n_windows, windows (JSON: row, col, box, label, confidence
        per window), vehicle_box and note, unless `whole_image` (per source or for all) says the
        source is to be answered whole (e.g. it is a crop already)."""
        import pandas as pd

        sources = list(sources)
        whole = [bool(whole_image)] * len(sources) if isinstance(whole_image, bool) else [bool(w) for w in whole_image]
        names = [f"<bytes #{i}>" if isinstance(s, bytes) else str(s) for i, s in enumerate(sources)]
        logits, errors = batched_logits(self.model, self.meta, [s for s, w in zip(sources, whole) if w or not self.windows],
                                        self.batch_size, self.device)
        answers = conclusive_answers(softmax(logits, self.temperature), self.class_names, self.threshold)
        if self.windows is None:
            return pd.DataFrame({"source": names, **answers, "error": errors})
        plain = iter(pd.DataFrame({**answers, "error": errors}).to_dict("records"))
        rows = [{"source": n, **(next(plain) if w else self.photo(s))} for n, s, w in zip(names, sources, whole)]
        return pd.DataFrame(rows, columns=["source", "label", "confidence", "not_conclusive", "error", "damaged",
                                           "n_windows", "windows", "vehicle_box", "note"])

    def window_probs(self, image: Any) -> tuple[list[Any], np.ndarray, tuple[int, int, int, int]]:
        """(windows, calibrated probabilities [W, K], vehicle box) of one decoded photo under the crop rule."""
        windows, box, _ = self.windows.windows(image)
        logits = image_logits(self.model, self.meta, [w.image for w in windows], self.batch_size, self.device)
        return windows, softmax(logits, self.temperature), box

    def photo(self, source: Any) -> dict[str, Any]:
        """The photo's answer and its windows' (a model trained on crops)."""
        import json

        from pipeline.retrieval.crop_rule import photo_answer

        images, errors = _load_images([source])
        if images[0] is None:
            return {"label": None, "confidence": math.nan, "not_conclusive": True, "error": errors[0], "damaged": None,
                    "n_windows": 0, "windows": "[]", "vehicle_box": None, "note": ""}
        windows, probs, box = self.window_probs(images[0])
        rule = self.windows.rule
        answer = photo_answer(probs, self.class_names, self.threshold, rule.get("clean_class"))
        top = probs.argmax(axis=1)
        per = [{"row": w.row, "col": w.col, "box": list(w.box), "label": self.class_names[int(k)],
                "confidence": round(float(p[k]), 6)} for w, p, k in zip(windows, probs, top)]
        return {"label": answer["label"], "confidence": answer["confidence"], "not_conclusive": answer["not_conclusive"],
                "error": None, "damaged": answer["damaged"], "n_windows": len(windows), "windows": json.dumps(per),
                "vehicle_box": list(box), "note": self.windows.note}
