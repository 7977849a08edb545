"""The crop rule a classifier was trained under, and the same rule applied to a whole photo.

A model trained on crops (`train.source` crops: damage crops and grid windows of clean surface
inside the vehicle box, see retrieval/crops.py) never saw a whole photo. Its model.json records the
rule as `crop_rule` (`training_rule`, called where the training side assembles model.json):

    {"source": "crops", "target": "damage_class", "grid_size": 448, "grid_overlap": 0.25,
     "min_vehicle_fraction": 0.7, "target_size": 448, "clean_class": "clean",
     "detector": {"backend": "none" | "opencv_dnn" | "ultralytics", "reason": ..., "weights": ...},
     "detect": {the detect section the crops were made with}}

A whole-image model records {"source": "images"} and answers on the whole image as before.

Given a photo, `PhotoWindows` runs the rule: the vehicle box from the detector the crops were made
with (the whole photo when that was `none`; when the detector cannot be built here, the whole photo
and a note saying so), the grid windows over it (`retrieval.crop_item.grid_windows`: the same
stride, filter and image clamping as the crops phase), each window cut out and fitted to
target_size like a training crop. `photo_answer` turns the windows' calibrated probabilities into
the photo's answer: with a clean class, the photo is damaged when any window's top class is a
damage class, labelled and scored by the most confident damaged window; otherwise clean, scored by
its least confident window's p(clean) (a photo is only as surely clean as its least sure window);
without a clean class, the most confident window answers. The browser page (web/app.js) does the
same arithmetic in JS (Python's round-half-even included).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

CLEAN = "clean"
RULE_KEYS = ("grid_size", "grid_overlap", "min_vehicle_fraction", "target_size")


def _crops_dir(frame: Any) -> Path | None:
    """The crops artifact a training frame's paths point into (path = <crops_dir>/<crop_path>)."""
    if "crop_path" not in frame.columns or not len(frame):
        return None
    path, rel = str(frame["path"].iloc[0]), str(frame["crop_path"].iloc[0])
    return Path(path[: -len(rel)]) if path.endswith(rel) else None


def _detector_used(crops_dir: Path | None) -> dict[str, Any]:
    """Which detector the crops phase resolved (its lineage's info), "unknown" when unrecorded."""
    lineage = crops_dir / "lineage.json" if crops_dir is not None else None
    info = json.loads(lineage.read_text()).get("info", {}) if lineage is not None and lineage.is_file() else {}
    return {"backend": info.get("detector", "unknown"), "reason": info.get("detector_reason", "not recorded"),
            "weights": info.get("detector_weights")}


def training_rule(data: Any, cfg: Any) -> dict[str, Any]:
    """The `crop_rule` entry of model.json for a model trained on `data` (training.data.TrainingData)
    under the run's config `cfg` (its crops and detect sections made the crops)."""
    if data.source != "crops":
        return {"source": str(data.source)}
    crops = cfg.crops
    return {"source": "crops", "target": str(data.target), **{k: getattr(crops, k) for k in RULE_KEYS},
            "clean_class": CLEAN if CLEAN in data.class_names else None,
            "detector": _detector_used(_crops_dir(data.frame)), "detect": cfg.detect.model_dump(mode="json")}


def rule_of(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The crop rule of a model that was trained on crops, else None (it answers on whole images)."""
    rule = meta.get("crop_rule") or {}
    return rule if rule.get("source") == "crops" else None


@dataclass
class Window:
    row: int
    col: int
    box: tuple[int, int, int, int]  # in photo pixels
    image: Any  # PIL image fitted to target_size, as a training crop


class PhotoWindows:
    """The crop rule of one model applied to photos (detector built once, lazily)."""

    def __init__(self, rule: dict[str, Any], weights_dir: Path | None = None):
        from pipeline.core.config import CropsConfig

        self.rule = rule
        self.crops_cfg = CropsConfig(**{k: rule[k] for k in RULE_KEYS})
        self.weights_dir = weights_dir
        self._detector: Any = None
        self.note = ""  # why the vehicle box is not what training used ("" when it is)

    def detector(self) -> Any:
        """The detector of the rule; the whole image (with `note` set) when it cannot run here."""
        if self._detector is not None:
            return self._detector
        from pipeline.core.config import DetectConfig
        from pipeline.core.errors import ModelUnavailable
        from pipeline.retrieval.detect import WholeImageDetector, make_detector, resolve_detector

        named = self.rule.get("detector") or {}
        used = named.get("backend", "unknown")
        detect = DetectConfig(**{**(self.rule.get("detect") or {}), "backend": used if used != "unknown" else "auto"})
        try:  # the backend the crops used, built from the table of builders (`none`: the whole image)
            choice = resolve_detector(detect, self.weights_dir)
            if named.get("weights") and choice.file_name != named["weights"]:
                raise ModelUnavailable(f"the crops were made with {named['weights']!r}, here it would be "
                                       f"{choice.file_name!r}")
            self._detector = make_detector(detect, self.weights_dir, choice)
        except (ModelUnavailable, ImportError, OSError) as exc:
            self.note = f"the crops' detector ({used}) cannot run here, so the whole photo is the vehicle box: {exc}"
            self._detector = WholeImageDetector(detect)
        return self._detector

    def windows(self, img: Any) -> tuple[list[Window], tuple[int, int, int, int], bool]:
        """(windows, vehicle box, vehicle found) of one RGB photo."""
        from pipeline.retrieval.crop_item import fit_size, grid_windows

        det = self.detector().detect(img)
        box = det.box
        cells = grid_windows(box, img.size, self.crops_cfg) or [(0, 0, box)]
        return ([Window(r, c, b, fit_size(img.crop(b), self.crops_cfg.target_size)) for r, c, b in cells],
                box, bool(det.found))


def photo_answer(probs: np.ndarray, class_names: Sequence[str], threshold: float | None,
                 clean_class: str | None) -> dict[str, Any]:
    """The photo's answer from its windows' calibrated probabilities [W, K] (module docstring)."""
    if not len(probs):
        return {"label": None, "confidence": math.nan, "not_conclusive": True, "damaged": None, "window": None}
    top = probs.argmax(axis=1)
    conf = probs[np.arange(len(probs)), top]
    if clean_class is not None and clean_class in class_names:
        clean = list(class_names).index(clean_class)
        damaged = np.flatnonzero(top != clean)
        if len(damaged):
            w = int(damaged[np.argmax(conf[damaged])])
            answer = {"label": class_names[int(top[w])], "confidence": float(conf[w]), "damaged": True, "window": w}
        else:
            w = int(np.argmin(probs[:, clean]))
            answer = {"label": clean_class, "confidence": float(probs[w, clean]), "damaged": False, "window": w}
    else:
        w = int(np.argmax(conf))
        answer = {"label": class_names[int(top[w])], "confidence": float(conf[w]), "damaged": None, "window": w}
    answer["not_conclusive"] = threshold is not None and answer["confidence"] < threshold
    return answer
