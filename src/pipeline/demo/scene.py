"""The demo renderer's scene: a painted car-body panel under varying light, with one part layout
per zone (lights, wheel, windows, gaps) and a little background."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from pipeline.data.manifest import ZONES
from pipeline.demo.geometry import Color, Point, darken, lighten

FIXED: dict[str, Color] = {
    "window": (32, 40, 50), "reflect": (92, 104, 118), "tire": (26, 26, 27), "arch": (12, 12, 13),
    "rim": (158, 160, 166), "head": (214, 218, 222), "headin": (246, 246, 236), "tail": (150, 18, 24),
    "tailin": (214, 46, 38), "amber": (230, 140, 22), "chrome": (204, 206, 212), "plastic": (36, 36, 39),
    "hole": (14, 14, 15), "plate": (234, 234, 228), "shadow": (24, 24, 26),
}

# -- scene: one layout per zone ---------------------------------------------------------------------
# Primitives in layout units: x in image widths, y and radii in image heights.
# ("poly", colour, points) | ("line", colour, width_px_at_384, points) | ("ellipse", colour, (cx, cy, rx, ry))
# ("ring", colour, width, (cx, cy, r)) | ("rect", colour, (x0, y0, x1, y1)) | ("wheel", (cx, cy, r))
# | ("plate", (x0, y0, x1, y1)). Colour names: FIXED, or "wall", "ground", "gap", "crease", "body_dark".

_INNER_PARTS = {"headin", "tailin", "reflect"}  # drawn inside the part listed just before them
_BG_TOP = [(-0.1, -0.1), (1.1, -0.1)]
_FLOOR = [(1.1, 1.1), (-0.1, 1.1)]

LAYOUTS: dict[int, tuple[tuple[float, float, float, float], list[tuple]]] = {
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
assert set(LAYOUTS) == set(ZONES)


@dataclass
class View:
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


def body(w: int, h: int, color: Color, rng: np.random.Generator) -> Image.Image:
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


def draw_layout(img: Image.Image, zone: int, camera: View, palette: dict[str, Color], rng: np.random.Generator) -> None:
    """Draw the zone's parts, each nudged a little (body styles differ), inner parts with their part."""
    draw = ImageDraw.Draw(img)
    s = img.height / 384
    view = camera
    for prim in LAYOUTS[zone][1]:
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


def palette(color: Color, rng: np.random.Generator) -> dict[str, Color]:
    wall = int(rng.integers(150, 216))
    tint = rng.integers(-8, 9, size=3)
    ground = int(rng.integers(60, 120))
    return {
        **FIXED,
        "wall": tuple(int(np.clip(wall + t, 0, 255)) for t in tint),  # type: ignore[dict-item]
        "ground": (ground, ground - 2, ground - 6),
        "gap": darken(color, 0.7),
        "crease": lighten(color, 0.35),
        "body_dark": darken(color, 0.25),
    }


# -- damage marks: each draws on the image and returns the mask of the pixels it changed ----------
