"""Geometry and colour helpers of the demo renderer: convex polygons around drawn marks, areas,
colour shades."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

Color = tuple[int, int, int]
Point = tuple[float, float]


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


def lighten(c: Color, t: float) -> Color:
    return tuple(int(v + (255 - v) * t) for v in c)  # type: ignore[return-value]


def darken(c: Color, t: float) -> Color:
    return tuple(int(v * (1 - t)) for v in c)  # type: ignore[return-value]


def luma(c: Color) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
