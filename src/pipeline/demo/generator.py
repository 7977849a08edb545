"""Synthetic demo data: LabelMe vehicle-damage photos in the users' naming scheme.

`generate_demo_data(out_dir, cfg)` renders `cfg.n_images` car-body views (half damaged `ko`,
half undamaged `ok`; several photos per vehicle across the ten zones) with numpy + PIL only, and
writes for each damaged photo a LabelMe JSON whose polygons tightly enclose the drawn marks:

    zona1_<ko|ok>_<a>_<b>_<YYYYmmddTHHMMSS>_zona_<Z>_imageDANO_original.jpg
    zona1_<ko|ok>_<a>_<b>_<YYYYmmddTHHMMSS>_zona_<Z>_labelDANO_modificado.json

Each zone has its own panel layout (lights, wheel, windows, gaps), so the zone is learnable; each
of the eight damage types has its own look. A damaged photo carries 1-3 defects, and its
dominant type always has the largest polygon. Some photos also carry a label "9" shape (a
sticker; not damage, readers ignore it), and a few `ok` photos have a label file holding only
such a shape. With `cfg.bad_examples`, files that the audit must catch are added and listed in
the returned summary. Output is byte-identical for a seed; the folder is written under a
temporary name and renamed when complete.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from pipeline.core.config import DemoConfig
from pipeline.data.manifest import DAMAGE_TYPES, ZONES

Color = tuple[int, int, int]
Point = tuple[float, float]

NAME_RE = re.compile(
    r"^zona1_(?P<status>ko|ok)_(?P<a>\d+)_(?P<b>\d+)_(?P<timestamp>\d{8}T\d{6})_zona_(?P<zone>\d+)_"
    r"(?:imageDANO_original\.jpg|labelDANO_modificado\.json)$"
)
IMAGE_SUFFIX = "_imageDANO_original.jpg"
LABEL_SUFFIX = "_labelDANO_modificado.json"
JPEG_QUALITY = 92
STICKER_LABEL = "9"
_SOFTEN = ImageFilter.Kernel((3, 3), [1, 2, 1, 2, 4, 2, 1, 2, 1], 16)  # a small Gaussian: softens drawn edges

_VEHICLE_COLORS: list[Color] = [
    (236, 236, 232), (186, 189, 193), (112, 114, 118), (30, 30, 32), (172, 26, 32),
    (32, 62, 132), (32, 78, 52), (202, 186, 150), (226, 190, 42), (212, 102, 32),
]
_FIXED: dict[str, Color] = {
    "window": (32, 40, 50), "reflect": (92, 104, 118), "tire": (26, 26, 27), "arch": (12, 12, 13),
    "rim": (158, 160, 166), "head": (214, 218, 222), "headin": (246, 246, 236), "tail": (150, 18, 24),
    "tailin": (214, 46, 38), "amber": (230, 140, 22), "chrome": (204, 206, 212), "plastic": (36, 36, 39),
    "hole": (14, 14, 15), "plate": (234, 234, 228), "shadow": (24, 24, 26),
}


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


# -- geometry ---------------------------------------------------------------------------------------


def _hull(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Convex hull (monotone chain), collinear points dropped."""
    pts = sorted(set(points))
    if len(pts) <= 2:
        return pts

    def cross(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[int, int]] = []
    upper: list[tuple[int, int]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def mask_polygon(mask: Image.Image) -> list[list[float]]:
    """The convex polygon (pixel corners) enclosing a mark's mask, grown by 1 px for the blur."""
    bbox = mask.getbbox()
    if bbox is None:
        return []
    w, h = mask.size
    x0, y0 = max(bbox[0] - 2, 0), max(bbox[1] - 2, 0)
    crop = mask.crop((x0, y0, min(bbox[2] + 2, w), min(bbox[3] + 2, h))).filter(ImageFilter.MaxFilter(3))
    m = np.asarray(crop) > 0
    rows = np.flatnonzero(m.any(axis=1))
    first = m[rows].argmax(axis=1)
    last = m.shape[1] - m[rows, ::-1].argmax(axis=1)
    pts: list[tuple[int, int]] = []
    for y, a, b in zip(rows.tolist(), first.tolist(), last.tolist()):
        pts += [(x0 + a, y0 + y), (x0 + a, y0 + y + 1), (x0 + b, y0 + y), (x0 + b, y0 + y + 1)]
    return [[float(x), float(y)] for x, y in _hull(pts)]


def polygon_area(points: list[list[float]]) -> float:
    """Shoelace area."""
    n = len(points)
    return abs(sum(points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1] for i in range(n))) / 2


def _ellipse_pts(cx: float, cy: float, rx: float, ry: float, rot: float = 0.0, n: int = 36) -> list[Point]:
    c, s = math.cos(rot), math.sin(rot)
    out = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x, y = rx * math.cos(t), ry * math.sin(t)
        out.append((cx + x * c - y * s, cy + x * s + y * c))
    return out


def _lighten(c: Color, t: float) -> Color:
    return tuple(int(v + (255 - v) * t) for v in c)  # type: ignore[return-value]


def _darken(c: Color, t: float) -> Color:
    return tuple(int(v * (1 - t)) for v in c)  # type: ignore[return-value]


def _luma(c: Color) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


# -- scene: one layout per zone ---------------------------------------------------------------------
# Primitives in layout units: x in image widths, y and radii in image heights.
# ("poly", colour, points) | ("line", colour, width_px_at_384, points) | ("ellipse", colour, (cx, cy, rx, ry))
# ("ring", colour, width, (cx, cy, r)) | ("rect", colour, (x0, y0, x1, y1)) | ("wheel", (cx, cy, r))
# | ("plate", (x0, y0, x1, y1)). Colour names: _FIXED, or "wall", "ground", "gap", "crease", "body_dark".

_INNER_PARTS = {"headin", "tailin", "reflect"}  # drawn inside the part listed just before them
_BG_TOP = [(-0.1, -0.1), (1.1, -0.1)]
_FLOOR = [(1.1, 1.1), (-0.1, 1.1)]

_LAYOUTS: dict[int, tuple[tuple[float, float, float, float], list[tuple]]] = {
    1: ((0.24, 0.24, 0.72, 0.56), [
        ("poly", "wall", _BG_TOP + [(1.1, 0.06), (-0.1, 0.14)]),
        ("line", "gap", 3, [(-0.1, 0.15), (1.1, 0.07)]),
        ("poly", "head", [(-0.1, 0.2), (0.22, 0.22), (0.18, 0.4), (-0.1, 0.42)]),
        ("poly", "headin", [(0.0, 0.26), (0.14, 0.27), (0.12, 0.35), (0.0, 0.36)]),
        ("rect", "amber", (0.12, 0.5, 0.2, 0.56)),
        ("wheel", (0.44, 1.06, 0.36)),
        ("line", "gap", 2, [(0.88, 0.07), (0.85, 1.1)]),
    ]),
    2: ((0.3, 0.34, 0.7, 0.7), [
        ("poly", "window", [(0.12, -0.1), (0.88, -0.1), (0.8, 0.22), (0.2, 0.22)]),
        ("poly", "reflect", [(0.36, -0.1), (0.46, -0.1), (0.37, 0.22), (0.28, 0.22)]),
        ("line", "gap", 3, [(0.15, 0.25), (0.85, 0.25)]),
        ("line", "crease", 2, [(0.3, 0.27), (0.17, 0.86)]),
        ("line", "crease", 2, [(0.7, 0.27), (0.83, 0.86)]),
        ("poly", "plastic", [(-0.1, 0.86), (1.1, 0.86)] + _FLOOR),
        ("line", "chrome", 2, [(0.05, 0.91), (0.95, 0.91)]),
        ("line", "chrome", 2, [(0.05, 0.96), (0.95, 0.96)]),
        ("ellipse", "chrome", (0.5, 0.8, 0.04, 0.04)),
    ]),
    3: ((0.28, 0.22, 0.74, 0.56), [
        ("poly", "wall", _BG_TOP + [(1.1, 0.13), (-0.1, 0.05)]),
        ("line", "gap", 3, [(-0.1, 0.06), (1.1, 0.14)]),
        ("poly", "head", [(1.1, 0.2), (0.78, 0.23), (0.82, 0.41), (1.1, 0.43)]),
        ("poly", "headin", [(1.0, 0.26), (0.86, 0.27), (0.88, 0.35), (1.0, 0.36)]),
        ("line", "plastic", 3, [(0.8, 0.5), (0.92, 0.5)]),
        ("line", "plastic", 3, [(0.8, 0.54), (0.92, 0.54)]),
        ("line", "plastic", 3, [(0.8, 0.58), (0.92, 0.58)]),
        ("wheel", (0.57, 1.06, 0.36)),
        ("line", "gap", 2, [(0.13, 0.06), (0.16, 1.1)]),
    ]),
    4: ((0.24, 0.3, 0.68, 0.58), [
        ("poly", "window", [(0.45, -0.1), (1.1, -0.1), (1.1, 0.2), (0.56, 0.22)]),
        ("poly", "reflect", [(0.7, -0.1), (0.8, -0.1), (0.76, 0.21), (0.68, 0.21)]),
        ("poly", "tail", [(-0.1, 0.22), (0.2, 0.24), (0.22, 0.4), (-0.1, 0.42)]),
        ("poly", "tailin", [(0.0, 0.27), (0.14, 0.28), (0.15, 0.35), (0.0, 0.36)]),
        ("ring", "gap", 2, (0.84, 0.4, 0.075)),
        ("wheel", (0.62, 1.06, 0.36)),
        ("line", "gap", 2, [(-0.1, 0.64), (0.3, 0.66)]),
    ]),
    5: ((0.2, 0.44, 0.8, 0.8), [
        ("line", "gap", 3, [(-0.1, 0.1), (1.1, 0.1)]),
        ("poly", "tail", [(-0.1, 0.14), (0.2, 0.16), (0.2, 0.32), (-0.1, 0.34)]),
        ("poly", "tail", [(1.1, 0.14), (0.8, 0.16), (0.8, 0.32), (1.1, 0.34)]),
        ("line", "gap", 3, [(-0.1, 0.4), (1.1, 0.4)]),
        ("plate", (0.38, 0.5, 0.62, 0.63)),
        ("rect", "tail", (0.04, 0.72, 0.12, 0.75)),
        ("rect", "tail", (0.88, 0.72, 0.96, 0.75)),
        ("poly", "plastic", [(-0.1, 0.86), (1.1, 0.86)] + _FLOOR),
        ("ellipse", "hole", (0.82, 0.93, 0.06, 0.035)),
    ]),
    6: ((0.32, 0.3, 0.74, 0.58), [
        ("poly", "window", [(-0.1, -0.1), (0.55, -0.1), (0.45, 0.22), (-0.1, 0.2)]),
        ("poly", "reflect", [(0.1, -0.1), (0.2, -0.1), (0.16, 0.21), (0.08, 0.21)]),
        ("poly", "tail", [(1.1, 0.22), (0.8, 0.24), (0.78, 0.4), (1.1, 0.42)]),
        ("poly", "tailin", [(1.0, 0.27), (0.86, 0.28), (0.85, 0.35), (1.0, 0.36)]),
        ("rect", "chrome", (0.8, 0.5, 0.94, 0.54)),
        ("line", "crease", 2, [(0.45, 0.26), (1.1, 0.26)]),
        ("wheel", (0.38, 1.06, 0.36)),
    ]),
    7: ((0.18, 0.4, 0.66, 0.8), [
        ("poly", "window", [(0.1, -0.1), (1.1, -0.1), (1.1, 0.3), (0.14, 0.3)]),
        ("poly", "reflect", [(0.5, -0.1), (0.62, -0.1), (0.54, 0.3), (0.44, 0.3)]),
        ("line", "chrome", 3, [(0.12, 0.31), (1.1, 0.31)]),
        ("poly", "body_dark", [(-0.1, 0.1), (0.1, 0.12), (0.07, 0.28), (-0.1, 0.3)]),
        ("line", "gap", 2, [(0.06, 0.0), (0.06, 1.1)]),
        ("line", "gap", 2, [(0.96, 0.31), (0.96, 1.1)]),
        ("rect", "chrome", (0.72, 0.4, 0.86, 0.45)),
        ("ellipse", "hole", (0.89, 0.425, 0.012, 0.012)),
        ("line", "crease", 2, [(0.06, 0.56), (0.96, 0.56)]),
        ("line", "gap", 1, [(0.06, 0.575), (0.96, 0.575)]),
        ("poly", "plastic", [(-0.1, 0.93), (1.1, 0.93)] + _FLOOR),
    ]),
    8: ((0.12, 0.18, 0.7, 0.48), [
        ("line", "gap", 2, [(0.45, -0.1), (0.45, 0.55)]),
        ("line", "gap", 3, [(-0.1, 0.55), (1.1, 0.55)]),
        ("poly", "body_dark", [(-0.1, 0.56), (1.1, 0.56), (1.1, 0.72), (-0.1, 0.72)]),
        ("line", "crease", 2, [(-0.1, 0.6), (1.1, 0.6)]),
        ("poly", "shadow", [(-0.1, 0.72), (1.1, 0.72), (1.1, 0.78), (-0.1, 0.78)]),
        ("poly", "ground", [(-0.1, 0.78), (1.1, 0.78)] + _FLOOR),
        ("wheel", (1.02, 0.62, 0.34)),
    ]),
    9: ((0.36, 0.34, 0.84, 0.66), [
        ("poly", "window", [(-0.1, -0.1), (0.92, -0.1), (0.88, 0.26), (-0.1, 0.26)]),
        ("poly", "reflect", [(0.3, -0.1), (0.4, -0.1), (0.33, 0.26), (0.24, 0.26)]),
        ("line", "gap", 2, [(0.04, 0.26), (0.04, 1.1)]),
        ("line", "gap", 2, [(0.94, 0.0), (0.94, 1.1)]),
        ("rect", "chrome", (0.14, 0.37, 0.28, 0.42)),
        ("line", "crease", 2, [(0.04, 0.5), (0.94, 0.5)]),
        ("line", "crease", 2, [(0.04, 0.68), (0.94, 0.68)]),
        ("rect", "plastic", (0.04, 0.74, 0.94, 0.78)),
    ]),
    10: ((0.3, 0.14, 0.88, 0.38), [
        ("line", "gap", 2, [(0.7, -0.1), (0.7, 0.45)]),
        ("rect", "chrome", (0.08, 0.08, 0.2, 0.12)),
        ("line", "crease", 2, [(-0.1, 0.3), (1.1, 0.27)]),
        ("poly", "plastic", [(-0.1, 0.45), (1.1, 0.45), (1.1, 0.66), (-0.1, 0.66)]),
        ("line", "chrome", 1, [(-0.1, 0.47), (1.1, 0.47)]),
        ("poly", "shadow", [(-0.1, 0.66), (1.1, 0.66), (1.1, 0.74), (-0.1, 0.74)]),
        ("poly", "ground", [(-0.1, 0.74), (1.1, 0.74)] + _FLOOR),
        ("wheel", (-0.02, 0.55, 0.34)),
    ]),
}
assert set(_LAYOUTS) == set(ZONES)


@dataclass
class _View:
    """Camera jitter: maps layout units to pixels."""

    w: int
    h: int
    zoom: float
    dx: float
    dy: float
    tilt: float  # radians

    def xy(self, x: float, y: float) -> Point:
        px, py = (x - 0.5) * self.zoom * self.w, (y - 0.5) * self.zoom * self.h
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        return ((0.5 + self.dx) * self.w + px * c - py * s, (0.5 + self.dy) * self.h + px * s + py * c)

    def r(self, r: float) -> float:
        return r * self.zoom * self.h

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> list[Point]:
        return [self.xy(x0, y0), self.xy(x1, y0), self.xy(x1, y1), self.xy(x0, y1)]


def _body(w: int, h: int, color: Color, rng: np.random.Generator) -> Image.Image:
    """The painted panel: body colour under a lighting gradient, a specular band and soft
    reflections of a horizon and the surroundings (smooth: computed at a quarter size, upsampled)."""
    sw, sh = max(w // 4, 2), max(h // 4, 2)
    xs = np.linspace(-1, 1, sw, dtype=np.float32)[None, :]
    ys = np.linspace(-1, 1, sh, dtype=np.float32)[:, None]
    a, b = rng.uniform(-0.25, 0.25, size=2)
    theta = rng.uniform(0, math.pi)
    d, width, gloss = rng.uniform(-0.7, 0.7), rng.uniform(0.1, 0.35), rng.uniform(0.2, 0.55)
    band = np.exp(-(((xs * math.cos(theta) + ys * math.sin(theta)) - d) / width) ** 2)
    horizon = 1 / (1 + np.exp(-(ys - rng.uniform(-0.6, 0.6) - rng.uniform(-0.3, 0.3) * xs) / 0.06))
    shade = 0.85 + a * xs + b * ys - rng.uniform(0.05, 0.3) * horizon
    for _ in range(2):  # soft reflections of the surroundings
        (bx, by), amp, rad = rng.uniform(-1, 1, size=2), rng.uniform(-0.3, 0.3), rng.uniform(0.25, 0.6)
        shade = shade + amp * np.exp(-((xs - bx) ** 2 + (ys - by) ** 2) / (2 * rad * rad))
    rgb = np.asarray(color, dtype=np.float32)
    out = rgb * shade[..., None] + (255 - rgb) * (gloss * band)[..., None]
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)


def _draw_layout(img: Image.Image, zone: int, camera: _View, palette: dict[str, Color], rng: np.random.Generator) -> None:
    """Draw the zone's parts, each nudged a little (body styles differ), inner parts with their part."""
    draw = ImageDraw.Draw(img)
    s = img.height / 384
    view = camera
    for prim in _LAYOUTS[zone][1]:
        kind = prim[0]
        if not (kind in ("poly", "rect") and prim[1] in _INNER_PARTS):
            view = replace(camera, dx=camera.dx + rng.uniform(-0.035, 0.035), dy=camera.dy + rng.uniform(-0.035, 0.035))
        if kind == "poly" and prim[1] in ("wall", "ground"):
            _scenery(img, [view.xy(*p) for p in prim[2]], palette[prim[1]], prim[1] == "ground", rng)
        elif kind == "poly":
            draw.polygon([view.xy(*p) for p in prim[2]], fill=palette[prim[1]])
        elif kind == "line":
            draw.line([view.xy(*p) for p in prim[3]], fill=palette[prim[1]], width=max(1, round(prim[2] * s)), joint="curve")
        elif kind == "ellipse":
            cx, cy = view.xy(*prim[2][:2])
            rx, ry = view.r(prim[2][2]), view.r(prim[2][3])
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=palette[prim[1]])
        elif kind == "ring":
            cx, cy = view.xy(*prim[3][:2])
            rr = view.r(prim[3][2])
            draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), outline=palette[prim[1]], width=max(1, round(prim[2] * s)))
        elif kind == "rect":
            draw.polygon(view.rect(*prim[2]), fill=palette[prim[1]])
        elif kind == "wheel":
            cx, cy = view.xy(*prim[1][:2])
            rr = view.r(prim[1][2])
            for k, col in ((1.12, "arch"), (1.0, "tire"), (0.62, "rim"), (0.16, "plastic")):
                draw.ellipse((cx - k * rr, cy - k * rr, cx + k * rr, cy + k * rr), fill=palette[col])
            for j in range(5):
                t = 2 * math.pi * j / 5 + view.tilt
                hx, hy, hr = cx + 0.4 * rr * math.cos(t), cy + 0.4 * rr * math.sin(t), 0.1 * rr
                draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=palette["arch"])
        elif kind == "plate":
            x0, y0, x1, y1 = prim[1]
            draw.polygon(view.rect(x0, y0, x1, y1), fill=palette["plate"], outline=palette["plastic"], width=max(1, round(2 * s)))
            gw, gh = (x1 - x0) / 8, (y1 - y0) / 4
            for j in range(6):
                gx = x0 + gw * (1 + j)
                draw.polygon(view.rect(gx + gw * 0.15, y0 + gh, gx + gw * 0.8, y1 - gh), fill=palette["plastic"])


def _scenery(img: Image.Image, area: list[Point], color: Color, ground: bool, rng: np.random.Generator) -> None:
    """Fill a wall or ground area, with a few random things in it (pillars, doors, road marks)."""
    layer = Image.new("RGB", img.size, color)
    draw = ImageDraw.Draw(layer)
    w, h = img.size
    for _ in range(int(rng.integers(1, 4))):
        if ground:
            x, y, t = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(-0.6, 0.6)
            stripe = (236, 236, 226) if rng.random() < 0.5 else (222, 186, 40)
            draw.line([(x - w * math.cos(t), y - w * math.sin(t)), (x + w * math.cos(t), y + w * math.sin(t))],
                      fill=stripe, width=int(rng.integers(4, 14)))
        else:
            x0, width, f = rng.uniform(0, w), rng.uniform(0.03, 0.25) * w, rng.uniform(0.6, 1.2)
            draw.rectangle((x0, 0, x0 + width, h), fill=tuple(min(255, int(v * f)) for v in color))
    mask = Image.new("L", img.size)
    ImageDraw.Draw(mask).polygon(area, fill=255)
    img.paste(layer, (0, 0), mask)


def _palette(color: Color, rng: np.random.Generator) -> dict[str, Color]:
    wall = int(rng.integers(150, 216))
    tint = rng.integers(-8, 9, size=3)
    ground = int(rng.integers(60, 120))
    return {
        **_FIXED,
        "wall": tuple(int(np.clip(wall + t, 0, 255)) for t in tint),  # type: ignore[dict-item]
        "ground": (ground, ground - 2, ground - 6),
        "gap": _darken(color, 0.7),
        "crease": _lighten(color, 0.35),
        "body_dark": _darken(color, 0.25),
    }


# -- damage marks: each draws on the image and returns the mask of the pixels it changed ----------


def _fill(img: Image.Image, mask: Image.Image, color: Color) -> None:
    img.paste(color, (0, 0), mask)


def _walk(rng: np.random.Generator, start: Point, angle: float, steps: int, step: float, jitter: float) -> list[Point]:
    pts = [start]
    for _ in range(steps):
        angle += rng.uniform(-jitter, jitter)
        x, y = pts[-1]
        pts.append((x + step * math.cos(angle), y + step * math.sin(angle)))
    return pts


def _surface_scratch(img: Image.Image, rng: np.random.Generator, c: Point, r: float, base: Color) -> Image.Image:
    mask = Image.new("L", img.size)
    md = ImageDraw.Draw(mask)
    theta = rng.uniform(0, math.pi)
    ux, uy, px, py = math.cos(theta), math.sin(theta), -math.sin(theta), math.cos(theta)
    width = max(1, round(r / 70))
    for _ in range(int(rng.integers(2, 6))):
        off, shift, length = rng.uniform(-0.3, 0.3) * r, rng.uniform(-0.2, 0.2) * r, rng.uniform(1.2, 2.0) * r
        bow = rng.uniform(-0.06, 0.06) * r
        pts = []
        for k in range(7):
            t = k / 6 - 0.5
            along, across = shift + t * length, off + bow * (1 - 4 * t * t)
            pts.append((c[0] + along * ux + across * px, c[1] + along * uy + across * py))
        md.line(pts, fill=255, width=width)
    _fill(img, mask, _lighten(base, 0.6))
    return mask


def _dent(img: Image.Image, rng: np.random.Generator, c: Point, r: float, base: Color) -> Image.Image:
    rx = r * rng.uniform(0.7, 1.0)
    ry = rx * rng.uniform(0.5, 0.85)
    rot, light = rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
    x0, y0 = max(int(c[0] - rx) - 1, 0), max(int(c[1] - rx) - 1, 0)
    x1, y1 = min(int(c[0] + rx) + 2, img.width), min(int(c[1] + rx) + 2, img.height)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - c[0], yy - c[1]
    u = (dx * math.cos(rot) + dy * math.sin(rot)) / rx
    v = (-dx * math.sin(rot) + dy * math.cos(rot)) / ry
    q = u * u + v * v
    inside = q < 1
    depth = np.where(inside, 1 - q, 0)
    side = u * math.cos(light) + v * math.sin(light)
    factor = 1 - 0.55 * depth + 0.35 * side * np.sqrt(depth)
    lift = np.clip(factor - 1, 0, None)[..., None] * 255  # the lit flank brightens even on dark paint
    patch = np.asarray(img.crop((x0, y0, x1, y1)), dtype=np.float32)
    patch = np.clip(patch * np.minimum(factor, 1)[..., None] + lift, 0, 255).astype(np.uint8)
    img.paste(Image.fromarray(patch), (x0, y0))
    mask = Image.new("L", img.size)
    mask.paste(Image.fromarray((inside * 255).astype(np.uint8)), (x0, y0))
    return mask


def _paint_peeling(img: Image.Image, rng: np.random.Generator, c: Point, r: float, base: Color) -> Image.Image:
    n = int(rng.integers(18, 29))
    radii = rng.uniform(0.55, 0.9, size=n)
    radii = (radii + np.roll(radii, 1) + np.roll(radii, -1)) / 3 + rng.uniform(-0.08, 0.08, size=n)
    rot = rng.uniform(0, 2 * math.pi)
    aspect = rng.uniform(0.6, 1.0)
    blob = [(c[0] + r * q * math.cos(rot + 2 * math.pi * k / n), c[1] + r * q * aspect * math.sin(rot + 2 * math.pi * k / n))
            for k, q in enumerate(radii.tolist())]
    primer = (138, 138, 130) if _luma(base) > 150 else (204, 204, 196)
    mask = Image.new("L", img.size)
    md = ImageDraw.Draw(mask)
    md.polygon(blob, fill=255)
    edge = Image.new("L", img.size)
    ImageDraw.Draw(edge).line(blob + blob[:1], fill=255, width=max(2, round(r / 30)))
    flakes = Image.new("L", img.size)
    fd = ImageDraw.Draw(flakes)
    for _ in range(int(rng.integers(4, 10))):
        t = rng.uniform(0, 2 * math.pi)
        q = rng.uniform(0.85, 1.05) * r
        fx, fy = c[0] + q * math.cos(t), c[1] + q * aspect * math.sin(t)
        fr = rng.uniform(0.04, 0.09) * r
        angles = rng.uniform(0, 2 * math.pi, size=3)
        fd.polygon([(fx + fr * math.cos(t + a), fy + fr * math.sin(t + a)) for a in angles], fill=255)
    _fill(img, mask, primer)
    _fill(img, edge, _lighten(base, 0.35) if _luma(base) < 200 else _darken(base, 0.3))
    _fill(img, flakes, primer)
    for _ in range(int(rng.integers(6, 14))):
        sx, sy = c[0] + rng.uniform(-0.4, 0.4) * r, c[1] + rng.uniform(-0.4, 0.4) * r * aspect
        ImageDraw.Draw(img).point((sx, sy), fill=_darken(primer, 0.3))
    mask.paste(255, (0, 0), edge)
    mask.paste(255, (0, 0), flakes)
    return mask


def _deep_scratch(img: Image.Image, rng: np.random.Generator, c: Point, r: float, base: Color) -> Image.Image:
    theta = rng.uniform(0, math.pi)
    length = rng.uniform(1.6, 2.0) * r
    n = int(rng.integers(6, 10))
    ux, uy, px, py = math.cos(theta), math.sin(theta), -math.sin(theta), math.cos(theta)
    pts = []
    for k in range(n):
        along = (k / (n - 1) - 0.5) * length
        across = rng.uniform(-0.12, 0.12) * r
        pts.append((c[0] + along * ux + across * px, c[1] + along * uy + across * py))
    width = max(3, round(r * 0.09))
    mask = Image.new("L", img.size)
    ImageDraw.Draw(mask).line(pts, fill=255, width=width, joint="curve")
    core = Image.new("L", img.size)
    ImageDraw.Draw(core).line(pts, fill=255, width=max(1, width // 3))
    _fill(img, mask, (38, 34, 32))
    _fill(img, core, (168, 168, 174))
    return mask


def _crack(img: Image.Image, rng: np.random.Generator, c: Point, r: float, base: Color) -> Image.Image:
    theta = rng.uniform(0, 2 * math.pi)
    step = r / 6
    half_a = _walk(rng, c, theta, 6, step, 0.5)
    half_b = _walk(rng, c, theta + math.pi, 6, step, 0.5)
    trunk = list(reversed(half_b)) + half_a[1:]
    mask = Image.new("L", img.size)
    md = ImageDraw.Draw(mask)
    md.line(trunk, fill=255, width=max(1, round(r / 40)))
    for _ in range(int(rng.integers(2, 5))):
        k = int(rng.integers(1, len(trunk) - 1))
        (ax, ay), (bx, by) = trunk[k - 1], trunk[k]
        angle = math.atan2(by - ay, bx - ax) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
        branch = _walk(rng, trunk[k], angle, int(rng.integers(2, 5)), step * 0.8, 0.4)
        md.line(branch, fill=255, width=1)
    _fill(img, mask, (12, 12, 12) if _luma(base) > 70 else (214, 214, 210))
    return mask


def _missing_part(img: Image.Image, rng: np.random.Generator, c: Point, r: float, base: Color) -> Image.Image:
    rx, ry = r * rng.uniform(0.6, 0.9), r * rng.uniform(0.4, 0.65)
    rot = rng.uniform(-0.3, 0.3)
    k = int(rng.integers(5, 9))
    cos, sin = math.cos(rot), math.sin(rot)
    shape = []
    for j in range(k):
        a = 2 * math.pi * j / k
        x, y = math.cos(a) * rng.uniform(0.85, 1.1) * rx, math.sin(a) * rng.uniform(0.85, 1.1) * ry
        shape.append((c[0] + x * cos - y * sin, c[1] + x * sin + y * cos))
    mask = Image.new("L", img.size)
    ImageDraw.Draw(mask).polygon(shape, fill=255)
    _fill(img, mask, _FIXED["hole"])
    draw = ImageDraw.Draw(img)
    bracket = [(c[0] - 0.6 * rx, c[1] + 0.1 * ry), (c[0] + 0.6 * rx, c[1] + 0.1 * ry)]  # what held the part
    draw.line(bracket, fill=(52, 52, 56), width=max(2, round(r / 12)))
    draw.line(shape + shape[:1], fill=_lighten(base, 0.45), width=max(2, round(r / 30)))
    ImageDraw.Draw(mask).line(shape + shape[:1], fill=255, width=max(2, round(r / 30)))
    return mask


def _missing_accessory(img: Image.Image, rng: np.random.Generator, c: Point, r: float, base: Color) -> Image.Image:
    rx, ry = r * rng.uniform(0.6, 0.85), r * rng.uniform(0.3, 0.5)
    box = (c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry)
    mask = Image.new("L", img.size)
    ImageDraw.Draw(mask).rounded_rectangle(box, radius=ry * 0.5, fill=255)
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle(box, radius=ry * 0.5, fill=_lighten(base, 0.15), outline=_darken(base, 0.55),
                           width=max(2, round(r / 25)))
    hr = max(2.0, r * 0.06)
    n = int(rng.choice([2, 3, 4]))
    holes = {2: [(-0.6, 0.0), (0.6, 0.0)], 3: [(-0.6, 0.3), (0.6, 0.3), (0.0, -0.4)],
             4: [(-0.6, -0.4), (0.6, -0.4), (-0.6, 0.4), (0.6, 0.4)]}[n]
    for hx, hy in holes:
        x, y = c[0] + hx * rx, c[1] + hy * ry
        draw.ellipse((x - hr, y - hr, x + hr, y + hr), fill=_FIXED["hole"], outline=(150, 150, 154))
    return mask


def _misaligned_part(img: Image.Image, rng: np.random.Generator, c: Point, r: float, base: Color) -> Image.Image:
    theta = float(rng.choice([0.0, math.pi / 2])) + rng.uniform(-0.25, 0.25)
    half = rng.uniform(0.8, 1.0) * r
    ux, uy, px, py = math.cos(theta), math.sin(theta), -math.sin(theta), math.cos(theta)
    p0, p1 = (c[0] - half * ux, c[1] - half * uy), (c[0] + half * ux, c[1] + half * uy)
    w0, w1 = max(1.5, r * 0.02), max(4.0, r * 0.13)
    gap = [(p0[0] - w0 * px, p0[1] - w0 * py), (p1[0] - w1 * px, p1[1] - w1 * py),
           (p1[0] + w1 * px, p1[1] + w1 * py), (p0[0] + w0 * px, p0[1] + w0 * py)]
    sw = r * 0.22  # the stepped, shadowed strip of the offset panel
    strip = [gap[2], gap[3], (gap[3][0] + sw * px, gap[3][1] + sw * py), (gap[2][0] + sw * px, gap[2][1] + sw * py)]
    rim = [gap[0], gap[1]]
    mask = Image.new("L", img.size)
    md = ImageDraw.Draw(mask)
    md.polygon(strip, fill=255)
    md.polygon(gap, fill=255)
    md.line(rim, fill=255, width=max(2, round(r / 30)))
    draw = ImageDraw.Draw(img)
    draw.polygon(strip, fill=_darken(base, 0.28))
    draw.polygon(gap, fill=(10, 10, 11))
    draw.line(rim, fill=_lighten(base, 0.55), width=max(2, round(r / 30)))
    return mask


def _sticker(img: Image.Image, rng: np.random.Generator, c: Point, r: float, base: Color) -> Image.Image:
    """Label "9": a sticker (not damage)."""
    rx, ry = r * rng.uniform(0.5, 0.8), r * rng.uniform(0.25, 0.4)
    mask = Image.new("L", img.size)
    ImageDraw.Draw(mask).rectangle((c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry), fill=255)
    draw = ImageDraw.Draw(img)
    draw.rectangle((c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry), fill=(244, 234, 70) if rng.random() < 0.5 else (246, 246, 246))
    for j in range(3):
        y = c[1] - ry * 0.5 + j * ry * 0.5
        draw.line([(c[0] - rx * 0.7, y), (c[0] + rx * rng.uniform(0.0, 0.7), y)], fill=(40, 40, 40), width=max(1, round(r / 40)))
    return mask


MarkFn = Callable[[Image.Image, np.random.Generator, Point, float, Color], Image.Image]
MARKS: dict[int, MarkFn] = {
    1: _surface_scratch, 2: _dent, 3: _paint_peeling, 4: _deep_scratch,
    5: _crack, 6: _missing_part, 7: _missing_accessory, 8: _misaligned_part,
}
assert set(MARKS) == set(DAMAGE_TYPES)


# -- one photo --------------------------------------------------------------------------------------


def _shape(label: str, points: list[list[float]]) -> dict[str, Any]:
    return {"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}


def _place(img: Image.Image, rng: np.random.Generator, fn: MarkFn, box: tuple[float, float, float, float],
           r: float, taken: list[tuple[Point, float]], max_area: float | None) -> tuple[Image.Image, list[list[float]]] | None:
    """Draw a mark on a copy of img at a free spot of box; None if no spot or size fits."""
    for attempt in range(8):
        c = (rng.uniform(box[0], box[2]), rng.uniform(box[1], box[3]))
        if any(math.dist(c, tc) < 0.9 * (r + tr) for tc, tr in taken):
            continue
        trial = img.copy()
        base = trial.getpixel((int(c[0]), int(c[1])))
        poly = mask_polygon(fn(trial, rng, c, r, base))
        if len(poly) >= 3 and (max_area is None or polygon_area(poly) < max_area):
            taken.append((c, r))
            return trial, poly
        r *= 0.8
    return None


def render_photo(photo: Photo, width: int, height: int, seed: int) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Render one photo; returns the image and its LabelMe shapes (dominant damage first)."""
    rng = np.random.default_rng([seed, 1, photo.index])
    view = _View(width, height, zoom=rng.uniform(0.88, 1.18), dx=rng.uniform(-0.08, 0.08), dy=rng.uniform(-0.08, 0.08),
                 tilt=rng.uniform(-0.06, 0.06))
    img = _body(width, height, photo.color, rng)
    _draw_layout(img, photo.zone, view, _palette(photo.color, rng), rng)
    bx0, by0 = view.xy(*_LAYOUTS[photo.zone][0][:2])
    bx1, by1 = view.xy(*_LAYOUTS[photo.zone][0][2:])
    box = (bx0, by0, bx1, by1)
    unit = min(width, height)
    shapes: list[dict[str, Any]] = []
    taken: list[tuple[Point, float]] = []
    if photo.damaged and photo.dominant is not None:
        placed = _place(img, rng, MARKS[photo.dominant], box, unit * rng.uniform(0.13, 0.2), taken, None)
        assert placed is not None  # nothing is taken yet, so the first spot is free
        img, poly = placed
        shapes.append(_shape(str(photo.dominant), poly))
        dominant_area = polygon_area(poly)
        n_extra = int(rng.choice([0, 1, 2], p=[0.45, 0.35, 0.2]))
        others = [t for t in DAMAGE_TYPES if t != photo.dominant]
        for kind in rng.choice(others, size=n_extra, replace=False).tolist():  # distinct: no type outweighs the dominant
            placed = _place(img, rng, MARKS[kind], box, unit * rng.uniform(0.06, 0.1), taken, 0.6 * dominant_area)
            if placed:
                img, poly = placed
                shapes.append(_shape(str(kind), poly))
    if rng.random() < (0.15 if photo.damaged else 0.06):
        placed = _place(img, rng, _sticker, box, unit * rng.uniform(0.06, 0.09), taken, None)
        if placed:
            img, poly = placed
            shapes.append(_shape(STICKER_LABEL, poly))
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


def _vehicle_sizes(n: int, rng: np.random.Generator) -> list[int]:
    """Photos per vehicle: 3-6 each, summing to n (n >= 3)."""
    sizes: list[int] = []
    remaining = n
    while remaining > 6:
        k = int(rng.integers(3, 7))
        if remaining - k < 3:
            k = remaining - 3
        sizes.append(k)
        remaining -= k
    return sizes + [remaining]


def _timestamp(rng: np.random.Generator) -> datetime:
    return datetime(2024, 1, 1) + timedelta(days=int(rng.integers(0, 366)), seconds=int(rng.integers(8 * 3600, 18 * 3600)))


def _vehicle_color(rng: np.random.Generator) -> Color:
    base = _VEHICLE_COLORS[int(rng.integers(len(_VEHICLE_COLORS)))]
    return tuple(int(np.clip(v + rng.integers(-10, 11), 0, 255)) for v in base)  # type: ignore[return-value]


def plan_photos(n: int, seed: int, extra_vehicles: int = 0) -> tuple[list[Photo], list[str]]:
    """The photos to render (balanced ko/ok, zones and dominant types), plus unused vehicle ids."""
    rng = np.random.default_rng([seed, 0])
    sizes = _vehicle_sizes(n, rng)
    ids = (rng.choice(9000, size=len(sizes) + extra_vehicles, replace=False) + 1000).tolist()
    vehicles = [f"{a}_{int(rng.integers(1, 1000)):03d}" for a in ids]
    n_ko = n // 2
    damaged = np.array([True] * n_ko + [False] * (n - n_ko))
    rng.shuffle(damaged)
    dominant = [t % len(DAMAGE_TYPES) + 1 for t in range(n_ko)]
    rng.shuffle(dominant)
    zone_perm = (rng.permutation(len(ZONES)) + 1).tolist()
    photos: list[Photo] = []
    for vehicle, k in zip(vehicles, sizes):
        color = _vehicle_color(rng)
        when = _timestamp(rng)
        for _ in range(k):
            i = len(photos)
            when += timedelta(seconds=int(rng.integers(15, 120)))
            is_ko = bool(damaged[i])
            photos.append(Photo(
                index=i, vehicle=vehicle, timestamp=when.strftime("%Y%m%dT%H%M%S"),
                zone=zone_perm[i % len(ZONES)], damaged=is_ko, dominant=dominant.pop() if is_ko else None, color=color,
            ))
    return photos, vehicles[len(sizes):]


# -- bad examples -----------------------------------------------------------------------------------


def _write_bad_examples(root: Path, photos: list[Photo], spare: list[str], images: dict[str, bytes],
                        cfg: DemoConfig) -> dict[str, str]:
    """Files the audit must catch; returns {file name: expected quarantine reason}.

    Two entries are not quarantined under the default audit config: "near_duplicate" (policy
    'group' keeps it, grouped with its original) and "polygon_clipped" (clipped to the image).
    """
    rng = np.random.default_rng([cfg.seed, 2])
    w, h = cfg.width, cfg.height
    bad: dict[str, str] = {}
    base_index = len(photos)

    def fresh(k: int, damaged: bool) -> Photo:
        when = _timestamp(rng).strftime("%Y%m%dT%H%M%S")
        dominant = int(rng.integers(1, len(DAMAGE_TYPES) + 1)) if damaged else None
        return Photo(base_index + k, spare[k], when, int(rng.integers(1, len(ZONES) + 1)), damaged, dominant, _vehicle_color(rng))

    def later(p: Photo, seconds: int) -> Photo:
        when = datetime.strptime(p.timestamp, "%Y%m%dT%H%M%S") + timedelta(seconds=seconds)
        return replace(p, timestamp=when.strftime("%Y%m%dT%H%M%S"))

    def write_image(p: Photo, data: bytes, reason: str | None = None) -> str:
        name = p.stem + IMAGE_SUFFIX
        (root / name).write_bytes(data)
        if reason:
            bad[name] = reason
        return name

    def write_label(p: Photo, text: str, reason: str) -> None:
        name = p.stem + LABEL_SUFFIX
        (root / name).write_text(text)
        bad[name] = reason

    p = fresh(0, False)
    write_image(p, rng.bytes(4096), "decode_error")
    p = fresh(1, False)
    data = jpeg_bytes(render_photo(p, w, h, cfg.seed)[0])
    write_image(p, data[: len(data) // 2], "decode_error")
    p = fresh(2, False)
    write_image(p, jpeg_bytes(render_photo(p, w, h, cfg.seed)[0].resize((60, 40), Image.LANCZOS)), "too_small")

    ok_photos = [q for q in photos if not q.damaged]
    original = ok_photos[0]
    write_image(later(original, 3600), images[original.stem], "exact_duplicate")  # sorts after the original
    original = ok_photos[1]
    src = Image.open(io.BytesIO(images[original.stem]))
    near = src.resize((round(w * 0.99), round(h * 0.99)), Image.LANCZOS)
    write_image(later(original, 60), jpeg_bytes(near, quality=80), "near_duplicate")

    p = fresh(3, True)
    write_image(p, jpeg_bytes(render_photo(p, w, h, cfg.seed)[0]), "missing_annotation")

    for k, reason in ((4, "malformed_annotation"), (5, "unknown_label"), (6, "degenerate_polygon"),
                      (7, "polygon_clipped"), (8, "polygon_outside_image")):
        p = fresh(k, True)
        img, shapes = render_photo(p, w, h, cfg.seed)
        name = write_image(p, jpeg_bytes(img))
        if reason == "malformed_annotation":
            text = labelme_json(name, shapes, w, h)[:-40]
        else:
            if reason == "unknown_label":
                extra = _shape("12", [[10.0, 10.0], [40.0, 10.0], [40.0, 30.0]])
            elif reason == "degenerate_polygon":
                extra = _shape(shapes[0]["label"], [[20.0, 20.0], [60.0, 24.0]])
            elif reason == "polygon_clipped":
                extra = _shape(shapes[0]["label"], [[w - 30.0, 40.0], [w + 25.0, 45.0], [w + 20.0, 90.0], [w - 35.0, 85.0]])
            else:
                extra = _shape(shapes[0]["label"], [[w + 10.0, 10.0], [w + 60.0, 10.0], [w + 60.0, 50.0]])
            text = labelme_json(name, shapes + [extra], w, h)
        write_label(p, text, reason)
    return bad


# -- entry point ------------------------------------------------------------------------------------


def generate_demo_data(out_dir: Path, cfg: DemoConfig, progress: bool = True) -> dict[str, Any]:
    """Write the synthetic dataset to out_dir (which must not exist or be empty); return counts."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder; remove it or choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        summary = _generate(tmp, cfg, progress)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _generate(root: Path, cfg: DemoConfig, progress: bool) -> dict[str, Any]:
    photos, spare = plan_photos(cfg.n_images, cfg.seed, extra_vehicles=9)
    images: dict[str, bytes] = {}
    shape_counts = {name: 0 for name in DAMAGE_TYPES.values()}
    stickers = ok_with_label = 0
    for photo in tqdm(photos, desc="demo images", unit="img", disable=not progress):
        img, shapes = render_photo(photo, cfg.width, cfg.height, cfg.seed)
        data = jpeg_bytes(img)
        images[photo.stem] = data
        image_name = photo.stem + IMAGE_SUFFIX
        (root / image_name).write_bytes(data)
        for s in shapes:
            if s["label"] == STICKER_LABEL:
                stickers += 1
            else:
                shape_counts[DAMAGE_TYPES[int(s["label"])]] += 1
        if shapes:
            ok_with_label += not photo.damaged
            (root / (photo.stem + LABEL_SUFFIX)).write_text(labelme_json(image_name, shapes, cfg.width, cfg.height))
    bad = _write_bad_examples(root, photos, spare, images, cfg) if cfg.bad_examples else {}
    meta = {"synthetic": True, "generator": "pipeline demo-data", "seed": cfg.seed, "n_images": len(photos),
            "license": "CC0-1.0 (synthetic)"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    ko = [p for p in photos if p.damaged]
    return {
        "n_images": len(photos),
        "n_ko": len(ko),
        "n_ok": len(photos) - len(ko),
        "n_vehicles": len({p.vehicle for p in photos}),
        "zones": {str(z): sum(p.zone == z for p in photos) for z in ZONES},
        "dominant_types": {name: sum(p.dominant == t for p in ko) for t, name in DAMAGE_TYPES.items()},
        "damage_shapes": shape_counts,
        "sticker_shapes": stickers,
        "ok_with_label_file": ok_with_label,
        "bad_examples": bad,
        "n_files": sum(1 for _ in root.iterdir()),
        "seed": cfg.seed,
    }
