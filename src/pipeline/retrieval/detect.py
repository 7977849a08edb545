"""Vehicle detection: the box every crop of a photo lies in.

`make_detector(cfg)` returns a `Detector` whose `.detect(img)` gives one `Detection`: the largest
box of a vehicle class (cfg.classes) with confidence >= cfg.conf, expanded by cfg.margin of its
size on each side and clipped to the image. Backends:

- `ultralytics`: a YOLO model, by weights name or path, kept off the network (YOLO_OFFLINE,
  YOLO_AUTOINSTALL=false, settings sync off, no plotting). Weights resolve from a local path or the
  Ultralytics weights dir; otherwise `ModelUnavailable`, unless cfg.allow_random_init builds the
  architecture from its yaml with random weights (tests/demo: the detections are meaningless, but
  loading, preprocessing and output parsing run for real; `describe()['random_init']` says so).
- `opencv_dnn`: OpenCV DNN with a TensorFlow SSD (`.pb` + cfg.config_file `.pbtxt`, COCO 90-id
  labels) or a YOLOv8-layout ONNX export (output [1, 4 + nc, N], NMS by cv2.dnn.NMSBoxes).
- `none`: the whole image, found, confidence 1.

Finding no vehicle is not an error: the Detection has found=False and the whole image as its
box; the caller applies cfg.on_miss.
"""
from __future__ import annotations

from pipeline.core.errors import ModelUnavailable  # noqa: F401

import ast
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from pipeline.core.config import DetectConfig

# The 80 COCO class names (Ultralytics / YOLO order) and their ids in the 90-id TF label map.
COCO80_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)
_COCO90_IDS = (
    list(range(1, 12)) + list(range(13, 26)) + [27, 28] + list(range(31, 45)) + list(range(46, 66))
    + [67, 70] + list(range(72, 83)) + list(range(84, 91))
)
COCO90_NAMES: dict[int, str] = dict(zip(_COCO90_IDS, COCO80_NAMES))

SSD_INPUT = 300  # the TF SSD MobileNet graphs take 300x300
NMS_IOU = 0.45
LETTERBOX_FILL = 114

Box = tuple[float, float, float, float]
Scored = tuple[Box, float, str]  # (x0, y0, x1, y1) in image px, confidence, class name




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


def _np(t: Any) -> np.ndarray:
    """A torch tensor or array-like as a numpy array."""
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


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

    off = {"sync": False, "mlflow": False, "clearml": False, "comet": False, "dvc": False, "raytune": False,
           "tensorboard": False, "wandb": False, "hub": False}
    changes = {k: v for k, v in off.items() if k in ultralytics.settings and ultralytics.settings[k] != v}
    if changes:
        ultralytics.settings.update(changes)
    return ultralytics


def ultralytics_candidates(result: Any) -> list[Scored]:
    """(box, conf, name) of every box in one Ultralytics `Results` (or an object shaped like it)."""
    boxes = result.boxes
    xyxy, conf, cls = _np(boxes.xyxy), _np(boxes.conf), _np(boxes.cls)
    return [
        (tuple(float(v) for v in xyxy[i]), float(conf[i]), str(result.names[int(cls[i])])) for i in range(len(conf))
    ]


class UltralyticsDetector:
    """A YOLO model through Ultralytics' own predict path (preprocessing, NMS, scaling)."""

    def __init__(self, cfg: DetectConfig):
        self.cfg = cfg
        ul = ultralytics_offline()
        weights_dir = Path(ul.settings["weights_dir"])
        path = resolve_yolo_weights(cfg.weights, weights_dir)
        if path is not None:
            self.model, self.weights, self.random_init = ul.YOLO(str(path), task="detect"), str(path), False
        elif cfg.allow_random_init:
            arch = str(Path(cfg.weights).with_suffix(".yaml").name)
            try:
                self.model, self.weights, self.random_init = ul.YOLO(arch, task="detect"), arch, True
            except FileNotFoundError as exc:
                raise ModelUnavailable(
                    f"detect.allow_random_init builds the architecture {arch!r} named after detect.weights, and "
                    f"Ultralytics has no such model yaml; use a standard name such as 'yolov8n.pt'"
                ) from exc
            if len(self.model.names) == len(COCO80_NAMES):  # the yaml's nc=80 head: give it the COCO names
                self.model.model.names = dict(enumerate(COCO80_NAMES))
        else:
            raise ModelUnavailable(
                f"YOLO weights {cfg.weights!r} not found and runs are offline. Provide them one of three ways: "
                f"set detect.weights to a local file path; put {Path(cfg.weights).name!r} into the Ultralytics "
                f"weights dir {weights_dir} (settings 'weights_dir', under YOLO_CONFIG_DIR); or, for tests and "
                f"demos only, set detect.allow_random_init=true (random weights: meaningless boxes). "
                f"detect.backend=none or opencv_dnn avoid Ultralytics weights."
            )
        self.class_ids = [i for i, n in self.model.names.items() if n in cfg.classes]

    def detect(self, img: Image.Image) -> Detection:
        results = self.model.predict(
            img, imgsz=self.cfg.imgsz, conf=self.cfg.conf, classes=self.class_ids or None,
            verbose=False, save=False,
        )
        return select_vehicle(ultralytics_candidates(results[0]), img.size, self.cfg, "ultralytics")

    def describe(self) -> dict[str, Any]:
        return {"backend": "ultralytics", "weights": self.weights, "random_init": self.random_init,
                "classes": list(self.cfg.classes), "imgsz": self.cfg.imgsz}


def resolve_yolo_weights(weights: str, weights_dir: Path) -> Path | None:
    """A local weights file: `weights` as a path, else by name in the Ultralytics weights dir."""
    if weights.endswith((".yaml", ".yml")):
        return None  # an architecture, not weights
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    cached = weights_dir / path.name
    return cached if path.name == weights and cached.is_file() else None


# -- OpenCV DNN ------------------------------------------------------------------------------------


def parse_ssd(out: np.ndarray, size: tuple[int, int]) -> list[Scored]:
    """TF Object Detection API SSD output [1, 1, N, 7] (image, class id, score, normalised x0 y0 x1 y1)."""
    w, h = size
    cands = []
    for _, cid, score, x0, y0, x1, y1 in out.reshape(-1, 7):
        name = COCO90_NAMES.get(int(cid))
        if name is not None:
            cands.append(((float(x0) * w, float(y0) * h, float(x1) * w, float(y1) * h), float(score), name))
    return cands


def parse_yolo(out: np.ndarray, scale: float, names: list[str], conf: float) -> list[Scored]:
    """YOLOv8 ONNX output [1, 4 + nc, N] (cx, cy, w, h in input px, then class scores), NMS per class.

    `scale` maps input px back to image px (the letterbox factor).
    """
    pred = out.reshape(out.shape[-2], out.shape[-1]).T  # N x (4 + nc)
    scores = pred[:, 4:]
    cls = scores.argmax(axis=1)
    best = scores[np.arange(len(cls)), cls]
    keep = best >= conf
    pred, cls, best = pred[keep], cls[keep], best[keep]
    if not len(best):
        return []
    import cv2

    xywh = np.column_stack([pred[:, 0] - pred[:, 2] / 2, pred[:, 1] - pred[:, 3] / 2, pred[:, 2], pred[:, 3]])
    idx = cv2.dnn.NMSBoxesBatched(xywh.tolist(), best.tolist(), cls.tolist(), conf, NMS_IOU)
    cands = []
    for i in np.asarray(idx, dtype=int).reshape(-1):
        x, y, bw, bh = (float(v) / scale for v in xywh[i])
        name = names[cls[i]] if cls[i] < len(names) else str(cls[i])
        cands.append(((x, y, x + bw, y + bh), float(best[i]), name))
    return cands


def onnx_class_names(path: Path, nc: int) -> list[str]:
    """Class names from an Ultralytics ONNX export's metadata, else COCO (nc == 80), else '0'..'nc-1'."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "names" in meta:
        names = ast.literal_eval(meta["names"])
        return [str(names[i]) for i in sorted(names)]
    return list(COCO80_NAMES) if nc == len(COCO80_NAMES) else [str(i) for i in range(nc)]


class OpenCVDetector:
    """OpenCV DNN: a TensorFlow SSD (.pb + .pbtxt) or a YOLOv8 ONNX export (.onnx)."""

    def __init__(self, cfg: DetectConfig):
        import cv2

        self.cfg = cfg
        self.path = Path(cfg.weights).expanduser()
        if not self.path.is_file():
            raise ModelUnavailable(
                f"OpenCV DNN model {cfg.weights!r} is not a local file. Set detect.weights to the model file "
                f"(a TensorFlow SSD frozen_inference_graph.pb with detect.config_file=<its .pbtxt>, or a YOLOv8 "
                f".onnx export); OpenCV has no model cache and runs are offline."
            )
        self.kind = "yolo_onnx" if self.path.suffix.lower() == ".onnx" else "ssd"
        if self.kind == "ssd":
            if not cfg.config_file or not Path(cfg.config_file).is_file():
                raise ModelUnavailable(f"OpenCV DNN SSD {self.path} needs detect.config_file (its .pbtxt text graph)")
            self.net = cv2.dnn.readNetFromTensorflow(str(self.path), str(cfg.config_file))
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
        return {"backend": "opencv_dnn", "weights": str(self.path), "config_file": self.cfg.config_file,
                "model_kind": self.kind, "random_init": False, "classes": list(self.cfg.classes)}


def make_detector(cfg: DetectConfig) -> Detector:
    """The detector of cfg.backend (loads the model now; raises ModelUnavailable when it cannot)."""
    if cfg.backend == "none":
        return WholeImageDetector(cfg)
    if cfg.backend == "opencv_dnn":
        return OpenCVDetector(cfg)
    return UltralyticsDetector(cfg)
