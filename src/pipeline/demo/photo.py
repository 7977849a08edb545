"""One demo photo: the planned photo, its rendering (scene, damage marks, sticker, softening and
sensor noise) and its LabelMe file."""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from pipeline.data.manifest import DAMAGE_TYPES
from pipeline.demo.geometry import Color, Point, mask_polygon, polygon_area
from pipeline.demo.marks import MARKS, MarkFn, sticker
from pipeline.demo.scene import LAYOUTS, View, body, draw_layout, palette

IMAGE_SUFFIX = "_imageDANO_original.jpg"
LABEL_SUFFIX = "_labelDANO_modificado.json"
JPEG_QUALITY = 92
STICKER_LABEL = "9"
_SOFTEN = ImageFilter.Kernel((3, 3), [1, 2, 1, 2, 4, 2, 1, 2, 1], 16)  # a small Gaussian: softens drawn edges


@dataclass(frozen=True)
class Photo:
    """One planned photo."""

    index: int
    vehicle: str  # "<a>_<b>"
    timestamp: str
    zone: int
    damaged: bool
    dominant: int | None  # key of DAMAGE_TYPES for damaged photos
    color: Color

    @property
    def stem(self) -> str:
        status = "ko" if self.damaged else "ok"
        return f"zona1_{status}_{self.vehicle}_{self.timestamp}_zona_{self.zone}"




# -- one photo --------------------------------------------------------------------------------------


def shape(label: str, points: list[list[float]]) -> dict[str, Any]:
    return {"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}


def _place(img: Image.Image, rng: np.random.Generator, fn: MarkFn, box: tuple[float, float, float, float],
           r: float, taken: list[tuple[Point, float]], max_area: float | None) -> tuple[Image.Image, list[list[float]]] | None:
    """Draw a mark on a copy of img at a free spot of box; None if no spot or size fits."""
    for attempt in range(8):
        c = (rng.uniform(box[0], box[2]), rng.uniform(box[1], box[3]))
        if any(math.dist(c, tc) < 0.9 * (r + tr) for tc, tr in taken):
            continue
        trial = img.copy()
        # the zone's panel box may reach past the frame (zoom, shift): the base colour comes from inside it
        base = trial.getpixel((min(max(int(c[0]), 0), img.width - 1), min(max(int(c[1]), 0), img.height - 1)))
        poly = mask_polygon(fn(trial, rng, c, r, base))
        if len(poly) >= 3 and (max_area is None or polygon_area(poly) < max_area):
            taken.append((c, r))
            return trial, poly
        r *= 0.8
    return None


def render_photo(photo: Photo, width: int, height: int, seed: int) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Render one photo; returns the image and its LabelMe shapes (dominant damage first)."""
    rng = np.random.default_rng([seed, 1, photo.index])
    view = View(width, height, zoom=rng.uniform(0.88, 1.18), dx=rng.uniform(-0.08, 0.08), dy=rng.uniform(-0.08, 0.08),
                 tilt=rng.uniform(-0.06, 0.06))
    img = body(width, height, photo.color, rng)
    draw_layout(img, photo.zone, view, palette(photo.color, rng), rng)
    bx0, by0 = view.xy(*LAYOUTS[photo.zone][0][:2])
    bx1, by1 = view.xy(*LAYOUTS[photo.zone][0][2:])
    box = (bx0, by0, bx1, by1)
    unit = min(width, height)
    shapes: list[dict[str, Any]] = []
    taken: list[tuple[Point, float]] = []
    if photo.damaged and photo.dominant is not None:
        placed = _place(img, rng, MARKS[photo.dominant], box, unit * rng.uniform(0.13, 0.2), taken, None)
        assert placed is not None  # nothing is taken yet, so the first spot is free
        img, poly = placed
        shapes.append(shape(str(photo.dominant), poly))
        dominant_area = polygon_area(poly)
        n_extra = int(rng.choice([0, 1, 2], p=[0.45, 0.35, 0.2]))
        others = [t for t in DAMAGE_TYPES if t != photo.dominant]
        for kind in rng.choice(others, size=n_extra, replace=False).tolist():  # distinct: no type outweighs the dominant
            placed = _place(img, rng, MARKS[kind], box, unit * rng.uniform(0.06, 0.1), taken, 0.6 * dominant_area)
            if placed:
                img, poly = placed
                shapes.append(shape(str(kind), poly))
    if rng.random() < (0.15 if photo.damaged else 0.06):
        placed = _place(img, rng, sticker, box, unit * rng.uniform(0.06, 0.09), taken, None)
        if placed:
            img, poly = placed
            shapes.append(shape(STICKER_LABEL, poly))
    img = img.filter(_SOFTEN)
    noise = rng.integers(-4, 5, size=(height, width, 3), dtype=np.int16)
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
    return img, shapes


def jpeg_bytes(img: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def labelme_json(image_name: str, shapes: list[dict[str, Any]], width: int, height: int) -> str:
    doc = {"version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": image_name,
           "imageData": None, "imageHeight": height, "imageWidth": width}
    return json.dumps(doc, indent=2) + "\n"


# -- the plan ---------------------------------------------------------------------------------------
