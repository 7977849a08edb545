"""A shifted copy of a dataset, to see what `pipeline drift` names: photos darkened or resized (their
annotations scaled with them), the photos of a label left out, bad inputs added.

Formats: labelme (points, imageWidth and imageHeight of every LabelMe JSON scaled), coco (polygons, boxes,
areas and image sizes of every `annotations.json` scaled), folders and jsonl (images only). Leaving a label
out reads the dataset with its own adapter and drops each matching photo with the files it consumed
(labelme, folders). The copy is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import ConfigError


def _image(path: Path, darken: float | None, resize: float | None) -> bool:
    """Rewrite one image in place; False when it cannot be read (a bad example stays as it is)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            fmt = im.format or ("PNG" if path.suffix.lower() == ".png" else "JPEG")
            mode = im.mode if im.mode in ("L", "RGB") else "RGB"
            im = im.convert(mode)
            if resize:
                im = im.resize((max(1, round(im.width * resize)), max(1, round(im.height * resize))),
                               Image.Resampling.LANCZOS)
            if darken is not None:
                im = Image.fromarray((np.asarray(im, dtype=np.float32) * darken).clip(0, 255).astype(np.uint8), mode)
            im.save(path, format="JPEG" if fmt in ("JPEG", "MPO") else fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        return True
    except Exception:  # noqa: BLE001 - an unreadable file is copied unchanged
        return False


def _scale_points(points: Any, f: float) -> Any:
    return [[float(x) * f, float(y) * f] for x, y in points] if isinstance(points, list) else points


def _scale_labelme(path: Path, f: float) -> None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return
    if not isinstance(doc, dict):
        return
    for s in doc.get("shapes") or []:
        if isinstance(s, dict):
            s["points"] = _scale_points(s.get("points"), f)
    for key in ("imageWidth", "imageHeight"):
        if isinstance(doc.get(key), (int, float)):
            doc[key] = round(doc[key] * f)
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")


def _scale_coco(path: Path, f: float) -> None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return
    for im in doc.get("images", []):
        for key in ("width", "height"):
            if isinstance(im.get(key), (int, float)):
                im[key] = round(im[key] * f)
    for a in doc.get("annotations", []):
        if isinstance(a.get("segmentation"), list):
            a["segmentation"] = [[float(v) * f for v in poly] for poly in a["segmentation"] if isinstance(poly, list)]
        if isinstance(a.get("bbox"), list):
            a["bbox"] = [float(v) * f for v in a["bbox"]]
        if isinstance(a.get("area"), (int, float)):
            a["area"] = float(a["area"]) * f * f
    path.write_text(json.dumps(doc), encoding="utf-8")


def _drop(root: Path, fmt: str, data_cfg: Any, labels: list[str]) -> int:
    from pipeline.data.adapters import scan

    if fmt not in ("labelme", "folders"):
        raise ConfigError(f"--drop-class works on labelme and folders data (a {fmt} file lists many photos)")
    wanted, dropped = set(labels), 0
    for c in scan(root, fmt, data_cfg).candidates:
        if c.label in wanted:
            for rel in [c.path, c.annotation_path, *(c.extra_paths or [])]:
                if rel:
                    (root / rel).unlink(missing_ok=True)
            dropped += 1
    if not dropped:
        raise ConfigError(f"no photo is labelled {', '.join(sorted(wanted))} in {root}")
    return dropped


def _bad_files(root: Path, n: int) -> list[str]:
    """n bad inputs, in turn: a photo outside the naming scheme, a truncated JPEG, a stray text file."""
    from PIL import Image

    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            name = f"IMG_{i:04d}.jpg"
            Image.new("RGB", (320, 240), (90, 90 + i % 100, 90)).save(root / name, quality=90)
        elif kind == 1:
            name = f"zona1_ok_9_9_20990101T0000{i % 60:02d}_zona_1_imageDANO_original.jpg"
            (root / name).write_bytes(b"\xff\xd8\xff\xe0" + bytes(64))  # a JPEG header and nothing else
        else:
            name = f"notes_{i}.txt"
            (root / name).write_text("not a photo\n")
        out.append(name)
    return out


def shift_dataset(src: Path, out: Path, fmt: str, data_cfg: Any, darken: float | None = None,
                  resize: float | None = None, drop_labels: list[str] | None = None, bad_files: int = 0) -> dict[str, Any]:
    """Copy `src` to `out` with the shifts applied (see the module doc); returns counts."""
    src, out = Path(src), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose a new folder")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    summary: dict[str, Any] = {}
    if drop_labels:
        summary["photos_dropped"] = _drop(tmp, fmt, data_cfg, drop_labels)
    exts = {e.lower() for e in data_cfg.image_extensions}
    if darken is not None or resize:
        images = [p for p in tmp.rglob("*") if p.is_file() and p.suffix.lower() in exts]
        summary["images_rewritten"] = sum(_image(p, darken, resize) for p in images)
    if resize and fmt == "labelme":
        for p in tmp.rglob("*.json"):
            _scale_labelme(p, resize)
    if resize and fmt == "coco":
        for p in tmp.rglob("*.json"):
            _scale_coco(p, resize)
    if bad_files:
        summary["bad_files_added"] = len(_bad_files(tmp, bad_files))
    tmp.rename(out)
    return summary
