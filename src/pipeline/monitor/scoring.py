"""The model that scores photos for drift and review: the registry's champion (or a model dir), its
calibrated probabilities and its own features.

`find_registry_model` names the registered version an alias or number points to (without loading
it); `Scorer` loads a model dir (`model.safetensors` + `model.json`, as the registry stores it) and
returns, per image, the calibrated probabilities softmax(logits / T), the pooled pre-logit features
(L2-normalised: the space the review's diversity is measured in) and an error for unreadable images.

A crops model (trained on the crops phase's crops, with the `clean` class) sees a photo through the
crops phase's grid windows inside the vehicle box, at one or more scales of its grid size (`score_photos`
with mode `windows`): every window is scored, and the window most likely damaged (lowest P(clean)) decides the photo's probabilities;
the photo's feature is the mean of its windows' features.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

CLEAN = "clean"  # the crops target's class of windows without damage (pipeline.training.items.CLEAN)
MAX_PIXELS = 89_478_485


@dataclass
class ModelRef:
    """Which model scores: a registered version, or a model dir (e.g. the run's calibration artifact)."""

    source: str  # "registry" or "dir"
    model_dir: Path | None
    name: str = ""
    version: str = ""
    alias: str = ""
    run_id: str = ""
    sha256: str = ""
    trained: frozenset = frozenset()  # keys of the items the version trained on (registry's training_items.json)

    def identity(self) -> dict[str, str]:
        """What goes into an artifact id: the registered version and its weights' hash, or the dir's name."""
        if self.source == "registry":
            return {"name": self.name, "version": self.version, "sha256": self.sha256}
        return {"dir": Path(self.model_dir).name if self.model_dir else ""}

    def describe(self) -> str:
        if self.source == "registry":
            alias = f" ({self.alias})" if self.alias and not self.alias.isdigit() else ""
            return f"{self.name} version {self.version}{alias}"
        return f"model dir {self.model_dir}"


def find_registry_model(tracking_uri: str, name: str, ref: str, cache_dir: Path,
                        download: bool = False) -> ModelRef | str:
    """The registered version `ref` (alias or number) of `name`, or why there is none (a message). With
    `download`, its model dir and the keys of the items it trained on are fetched too."""
    from pipeline.core.errors import ConfigError
    from pipeline.registry.versions import SHA_TAG, registry_client, resolve_version, trained_items, version_model_dir

    try:
        client = registry_client(tracking_uri)
        mv = resolve_version(client, name, ref)
    except ConfigError as exc:
        return f"no model {ref!r} in the registry ({exc})"
    except Exception as exc:  # noqa: BLE001 - a registry that cannot be read is a reason, not a crash
        return f"the registry at {tracking_uri} cannot be read: {type(exc).__name__}: {exc}"
    model_dir = version_model_dir(client, mv, Path(cache_dir)) if download else None
    trained = frozenset(trained_items(client, mv)) if download else frozenset()
    return ModelRef("registry", model_dir, name=name, version=str(mv.version), alias=str(ref), run_id=mv.run_id or "",
                    sha256=str((mv.tags or {}).get(SHA_TAG, "")), trained=trained)


def download(ref: ModelRef, tracking_uri: str, cache_dir: Path) -> ModelRef:
    """The same ref with its model dir downloaded (registry refs)."""
    if ref.model_dir is not None or ref.source != "registry":
        return ref
    from pipeline.registry.versions import registry_client, resolve_version, version_model_dir

    client = registry_client(tracking_uri)
    ref.model_dir = version_model_dir(client, resolve_version(client, ref.name, ref.version), Path(cache_dir))
    return ref


def _load(source: Any):
    from pipeline.data.images import ImageLoadError, load_rgb

    try:
        return load_rgb(source if isinstance(source, bytes) else str(source), MAX_PIXELS)[0], None
    except (ImageLoadError, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


@dataclass
class Scored:
    probs: np.ndarray  # [N, C] calibrated, NaN rows for unreadable images
    features: np.ndarray  # [N, D] L2-normalised, NaN rows for unreadable images
    errors: list[str | None]


class Scorer:
    """A saved classifier with its temperature and threshold; probabilities and features per image."""

    def __init__(self, model_dir: Path, device: str = "cpu", batch_size: int = 32):
        from pipeline.models.classifier import load_classifier

        self.model, self.meta = load_classifier(Path(model_dir), device=device)
        self.device, self.batch_size = device, batch_size
        self.class_names: list[str] = list(self.meta["class_names"])
        self.temperature = float(self.meta.get("temperature") or 1.0)
        t = self.meta.get("threshold")
        self.threshold = None if t is None else float(t)

    def is_crops_model(self) -> bool:
        return CLEAN in self.class_names

    def score_images(self, images: Sequence[Any]) -> Scored:
        """Images as PIL images, paths or encoded bytes."""
        import torch

        from pipeline.models.classifier import preprocess
        from pipeline.training.inference import softmax

        n, c = len(images), len(self.class_names)
        probs, feats, errors = np.full((n, c), np.nan), None, [None] * n
        for start in range(0, n, self.batch_size):
            batch, ok = [], []
            for i in range(start, min(n, start + self.batch_size)):
                im, err = (images[i], None) if hasattr(images[i], "convert") else _load(images[i])
                if im is None:
                    errors[i] = err
                    continue
                batch.append(im)
                ok.append(i)
            if not ok:
                continue
            x = preprocess(batch, self.meta).to(self.device)
            with torch.inference_mode():
                pooled = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
                logits = self.model.get_classifier()(pooled)
            f = pooled.float().cpu().numpy().reshape(len(ok), -1)
            if feats is None:
                feats = np.full((n, f.shape[1]), np.nan)
            feats[ok] = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
            probs[ok] = softmax(logits.float().cpu().numpy(), self.temperature)
        return Scored(probs, feats if feats is not None else np.full((n, 1), np.nan), errors)


@dataclass
class PhotoScore:
    probs: np.ndarray | None  # [C] calibrated (the deciding window's for a crops model)
    feature: np.ndarray | None  # [D] L2-normalised
    windows: list[dict[str, Any]] = field(default_factory=list)  # box, label, confidence (windows mode)
    error: str | None = None


def _windows(img: Any, detector: Any, crops_cfg: Any, scales: Sequence[float] = (1.0,)) -> list[tuple[int, int, int, int]]:
    """The crops phase's grid windows inside the vehicle box, one grid per scale of crops.grid_size."""
    from pipeline.retrieval.crop_item import grid_windows

    det = detector.detect(img)
    boxes: list[tuple[int, int, int, int]] = []
    for scale in scales:
        grid = crops_cfg.model_copy(update={"grid_size": max(32, round(crops_cfg.grid_size * scale))})
        boxes += [box for _, _, box in grid_windows(det.box, img.size, grid) if box not in boxes]
    return boxes or [(0, 0, img.width, img.height)]


def _jpeg(img: Any, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def score_photos(scorer: Scorer, paths: Sequence[Path], mode: str, detector: Any = None,
                 crops_cfg: Any = None, scales: Sequence[float] = (1.0,)) -> list[PhotoScore]:
    """Each photo scored whole (`image`) or through its grid windows (`windows`, see the module doc)."""
    if mode == "image":
        s = scorer.score_images(list(paths))
        return [PhotoScore(None if e else s.probs[i], None if e else s.features[i], [], e)
                for i, e in enumerate(s.errors)]
    out = []
    clean = scorer.class_names.index(CLEAN) if CLEAN in scorer.class_names else None
    for path in paths:
        img, err = _load(path)
        if img is None:
            out.append(PhotoScore(None, None, [], err))
            continue
        boxes = _windows(img, detector, crops_cfg, scales)
        # the crops phase stores windows as JPEG: score them the way the model saw its training crops
        crops = [_jpeg(img.crop(b), crops_cfg.jpeg_quality) for b in boxes]
        s = scorer.score_images(crops)
        good = [i for i, e in enumerate(s.errors) if e is None]
        if not good:
            out.append(PhotoScore(None, None, [], s.errors[0]))
            continue
        p = s.probs[good]
        deciding = int(np.argmin(p[:, clean])) if clean is not None else int(np.argmin(p.max(axis=1)))
        feature = s.features[good].mean(axis=0)
        windows = [{"box": [int(v) for v in boxes[i]], "label": scorer.class_names[int(np.argmax(s.probs[i]))],
                    "confidence": float(np.max(s.probs[i])), "deciding": j == deciding} for j, i in enumerate(good)]
        out.append(PhotoScore(p[deciding], feature / max(float(np.linalg.norm(feature)), 1e-12), windows))
    return out
