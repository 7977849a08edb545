"""Detector outputs: the COCO class names and the parsers from raw model outputs to scored boxes.

A `Scored` is ((x0, y0, x1, y1) in image px, confidence, class name); `detect.select_vehicle`
picks the vehicle among them.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np

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

NMS_IOU = 0.45
SSD_INPUT = 300  # the TF SSD MobileNet graphs take 300x300

Box = tuple[float, float, float, float]
Scored = tuple[Box, float, str]  # (x0, y0, x1, y1) in image px, confidence, class name


def _np(t: Any) -> np.ndarray:
    """A torch tensor or array-like as a numpy array."""
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def ultralytics_candidates(result: Any) -> list[Scored]:
    """(box, conf, name) of every box in one Ultralytics `Results` (or an object shaped like it)."""
    boxes = result.boxes
    xyxy, conf, cls = _np(boxes.xyxy), _np(boxes.conf), _np(boxes.cls)
    return [
        (tuple(float(v) for v in xyxy[i]), float(conf[i]), str(result.names[int(cls[i])])) for i in range(len(conf))
    ]


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
