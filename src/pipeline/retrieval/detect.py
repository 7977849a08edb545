"""Vehicle detection: the box every crop of a photo lies in.

`resolve_detector(cfg, weights_dir)` decides which backend runs and why (cheap: file checks and
hashes, no model loaded; `detect_choice`), `choice_for(identity, ...)` finds that decision again from
the identity an artifact id holds; `make_detector(cfg, weights_dir, choice)` builds it (a table of
builders by backend, `BUILDERS`). A `Detector`'s
`.detect(img)` gives one `Detection`: the largest box of a vehicle class (cfg.classes) with
confidence >= cfg.conf, expanded by cfg.margin of its size on each side and clipped to the image.
Backends:

- `auto` (the default): `ultralytics` when cfg.weights resolves to a local file, else
  `opencv_dnn` when cfg.dnn_model is set, else `none`. A runnable default on any offline machine;
  a configured path that does not exist is an error, never a silent fallback.
- `ultralytics`: a YOLO model, kept off the network (YOLO_OFFLINE, YOLO_AUTOINSTALL=false,
  settings sync off, no plotting). cfg.weights is a local path, or a bare file name looked up in
  the weights dir (`Workspace.weights`, <workdir>/.cache/weights; never the current directory).
  Otherwise `ModelUnavailable`, unless cfg.allow_random_init builds the architecture from its yaml
  with random weights (tests/demo: the boxes are meaningless, but loading, preprocessing and
  output parsing run for real; the choice's `random_init` says so).
- `opencv_dnn`: OpenCV DNN on cfg.dnn_model: a TensorFlow SSD (`.pb` + cfg.dnn_config `.pbtxt`,
  COCO 90-id labels) or a YOLOv8-layout ONNX export (output [1, 4 + nc, N], NMS by OpenCV).
- `none`: the whole image, found, confidence 1.

Finding no vehicle is not an error: the Detection has found=False and the whole image as its
box; the caller applies cfg.on_miss.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
from PIL import Image

from pipeline.core.config import DetectConfig
from pipeline.core.errors import ModelUnavailable  # noqa: F401  (re-exported)
from pipeline.retrieval.detect_choice import (  # noqa: F401  (re-exported)
    DetectorChoice,
    choice_for,
    resolve_detector,
    resolve_yolo_weights,
)
from pipeline.retrieval.detect_outputs import (  # noqa: F401  (re-exported)
    COCO80_NAMES,
    COCO90_NAMES,
    SSD_INPUT,
    Box,
    Scored,
    onnx_class_names,
    parse_ssd,
    parse_yolo,
    ultralytics_candidates,
)

LETTERBOX_FILL = 114


@dataclass(frozen=True)
class Detection:
    """The vehicle box of one image: after the margin, in integer image pixels."""

    x0: int
    y0: int
    x1: int
    y1: int
    conf: float
    class_name: str
    area_ratio: float  # raw box area / image area
    raw_box: Box  # the detector's box before the margin (the whole image on a miss)
    backend: str
    found: bool

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)

    @classmethod
    def miss(cls, size: tuple[int, int], backend: str) -> "Detection":
        """No vehicle: the whole image, found=False."""
        w, h = size
        return cls(0, 0, w, h, 0.0, "", 1.0, (0.0, 0.0, float(w), float(h)), backend, False)


class Detector(Protocol):
    def detect(self, img: Image.Image) -> Detection: ...

    def describe(self) -> dict[str, Any]: ...


def expand_box(raw: Box, margin: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """`raw` grown by `margin` of its width/height on each side, rounded outwards, clipped to the image."""
    w, h = size
    x0, y0, x1, y1 = raw
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    bx0, by0 = max(0, math.floor(x0 - mx)), max(0, math.floor(y0 - my))
    bx1, by1 = min(w, math.ceil(x1 + mx)), min(h, math.ceil(y1 + my))
    return bx0, by0, max(bx1, min(w, bx0 + 1)), max(by1, min(h, by0 + 1))


def select_vehicle(cands: list[Scored], size: tuple[int, int], cfg: DetectConfig, backend: str) -> Detection:
    """The largest candidate of a vehicle class at >= cfg.conf (ties: higher confidence), with margin."""
    w, h = size
    keep = [
        ((max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)), conf, name)
        for (x0, y0, x1, y1), conf, name in cands
        if name in cfg.classes and conf >= cfg.conf
    ]
    keep = [c for c in keep if c[0][2] > c[0][0] and c[0][3] > c[0][1]]
    if not keep:
        return Detection.miss(size, backend)
    raw, conf, name = max(keep, key=lambda c: ((c[0][2] - c[0][0]) * (c[0][3] - c[0][1]), c[1]))
    x0, y0, x1, y1 = expand_box(raw, cfg.margin, size)
    area = (raw[2] - raw[0]) * (raw[3] - raw[1]) / float(w * h)
    return Detection(x0, y0, x1, y1, float(conf), name, area, tuple(float(v) for v in raw), backend, True)


# -- none ------------------------------------------------------------------------------------------


class WholeImageDetector:
    """backend 'none': the whole image is the vehicle."""

    def __init__(self, cfg: DetectConfig):
        self.cfg = cfg

    def detect(self, img: Image.Image) -> Detection:
        w, h = img.size
        return Detection(0, 0, w, h, 1.0, "", 1.0, (0.0, 0.0, float(w), float(h)), "none", True)

    def describe(self) -> dict[str, Any]:
        return {"backend": "none", "weights": None, "random_init": False}


# -- ultralytics -----------------------------------------------------------------------------------


def ultralytics_offline() -> Any:
    """Import Ultralytics with downloads, auto-install, telemetry and integrations off; return the module."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    import ultralytics
    from PIL import Image as _pil

    # Ultralytics replaces PIL.Image.open process-wide with a wrapper that, on an unidentified file, tries to
    # install and import pi-heif (absent offline): every later PIL open of a bad file then raised
    # ModuleNotFoundError instead of UnidentifiedImageError. Put Pillow's own function back.
    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None)
    if original is not None and getattr(_pil.open, "__module__", "") == "ultralytics.utils.patches":
        _pil.open = original

    off = {"sync": False, "mlflow": False, "clearml": False, "comet": False, "dvc": False, "raytune": False,
           "tensorboard": False, "wandb": False, "hub": False}
    changes = {k: v for k, v in off.items() if k in ultralytics.settings and ultralytics.settings[k] != v}
    if changes:
        ultralytics.settings.update(changes)
    return ultralytics


class UltralyticsDetector:
    """A YOLO model through Ultralytics' own predict path (preprocessing, NMS, scaling)."""

    def __init__(self, cfg: DetectConfig, choice: DetectorChoice):
        self.cfg, self.choice = cfg, choice
        ul = ultralytics_offline()
        if choice.weights is not None:
            self.model = ul.YOLO(str(choice.weights), task="detect")
        else:
            try:
                self.model = ul.YOLO(choice.arch, task="detect")
            except FileNotFoundError as exc:
                raise ModelUnavailable(
                    f"detect.allow_random_init builds the architecture {choice.arch!r} named after detect.weights, "
                    f"and Ultralytics has no such model yaml; use a standard name such as 'yolov8n.pt'"
                ) from exc
            if len(self.model.names) == len(COCO80_NAMES):  # the yaml's nc=80 head: give it the COCO names
                self.model.model.names = dict(enumerate(COCO80_NAMES))
        self.class_ids = [i for i, n in self.model.names.items() if n in cfg.classes]

    def detect(self, img: Image.Image) -> Detection:
        results = self.model.predict(
            img, imgsz=self.cfg.imgsz, conf=self.cfg.conf, classes=self.class_ids or None,
            verbose=False, save=False,
        )
        return select_vehicle(ultralytics_candidates(results[0]), img.size, self.cfg, "ultralytics")

    def describe(self) -> dict[str, Any]:
        return {"backend": "ultralytics", "weights": self.choice.file_name, "random_init": self.choice.random_init,
                "classes": list(self.cfg.classes), "imgsz": self.cfg.imgsz}


# -- OpenCV DNN ------------------------------------------------------------------------------------


class OpenCVDetector:
    """OpenCV DNN: a TensorFlow SSD (.pb + .pbtxt) or a YOLOv8 ONNX export (.onnx)."""

    def __init__(self, cfg: DetectConfig, choice: DetectorChoice):
        import cv2

        self.cfg, self.choice = cfg, choice
        self.path = choice.weights
        self.kind = "yolo_onnx" if self.path.suffix.lower() == ".onnx" else "ssd"
        if self.kind == "ssd":
            self.net = cv2.dnn.readNetFromTensorflow(str(self.path), str(choice.config))
        else:
            self.net = cv2.dnn.readNet(str(self.path))
        self.names: list[str] | None = None  # YOLO ONNX: known once the first output gives the class count

    def detect(self, img: Image.Image) -> Detection:
        import cv2

        bgr = np.ascontiguousarray(np.asarray(img)[:, :, ::-1])
        if self.kind == "ssd":
            self.net.setInput(cv2.dnn.blobFromImage(bgr, size=(SSD_INPUT, SSD_INPUT), swapRB=True, crop=False))
            cands = parse_ssd(self.net.forward(), img.size)
        else:
            blob, scale = self._letterbox(bgr)
            self.net.setInput(blob)
            out = self.net.forward()
            if self.names is None:
                self.names = onnx_class_names(self.path, out.shape[-2] - 4)
            cands = parse_yolo(out, scale, self.names, self.cfg.conf)
        return select_vehicle(cands, img.size, self.cfg, "opencv_dnn")

    def _letterbox(self, bgr: np.ndarray) -> tuple[np.ndarray, float]:
        """Resize the long side to cfg.imgsz, pad bottom/right with grey; the blob and the scale."""
        import cv2

        s = self.cfg.imgsz
        h, w = bgr.shape[:2]
        scale = s / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = np.full((s, s, 3), LETTERBOX_FILL, dtype=np.uint8)
        canvas[:nh, :nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
        return cv2.dnn.blobFromImage(canvas, 1 / 255.0, (s, s), swapRB=True, crop=False), scale

    def describe(self) -> dict[str, Any]:
        return {"backend": "opencv_dnn", "weights": self.path.name,
                "config_file": self.choice.config.name if self.choice.config else None,
                "model_kind": self.kind, "random_init": False, "classes": list(self.cfg.classes)}


# -- building the chosen backend -------------------------------------------------------------------

Builder = Callable[[DetectConfig, DetectorChoice], Detector]
BUILDERS: dict[str, Builder] = {  # DetectorChoice.backend -> the detector (the model loaded now)
    "none": lambda cfg, choice: WholeImageDetector(cfg),
    "opencv_dnn": OpenCVDetector,
    "ultralytics": UltralyticsDetector,
}


def make_detector(cfg: DetectConfig, weights_dir: Path | None = None,
                  choice: DetectorChoice | None = None) -> Detector:
    """The detector of `choice` (default: `resolve_detector(cfg, weights_dir)`); loads the model now."""
    choice = choice or resolve_detector(cfg, weights_dir)
    return BUILDERS[choice.backend](cfg, choice)
