"""Damage marks of the demo renderer: one look per damage type, plus the label-9 sticker (not
damage). Each mark draws on the image and returns the mask of the pixels it changed."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from pipeline.data.manifest import DAMAGE_TYPES
from pipeline.demo.geometry import Color, Point, darken, lighten, luma
from pipeline.demo.scene import FIXED


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
    _fill(img, mask, lighten(base, 0.6))
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
    primer = (138, 138, 130) if luma(base) > 150 else (204, 204, 196)
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
    _fill(img, edge, lighten(base, 0.35) if luma(base) < 200 else darken(base, 0.3))
    _fill(img, flakes, primer)
    for _ in range(int(rng.integers(6, 14))):
        sx, sy = c[0] + rng.uniform(-0.4, 0.4) * r, c[1] + rng.uniform(-0.4, 0.4) * r * aspect
        ImageDraw.Draw(img).point((sx, sy), fill=darken(primer, 0.3))
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
    _fill(img, mask, (12, 12, 12) if luma(base) > 70 else (214, 214, 210))
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
    _fill(img, mask, FIXED["hole"])
    draw = ImageDraw.Draw(img)
    bracket = [(c[0] - 0.6 * rx, c[1] + 0.1 * ry), (c[0] + 0.6 * rx, c[1] + 0.1 * ry)]  # what held the part
    draw.line(bracket, fill=(52, 52, 56), width=max(2, round(r / 12)))
    draw.line(shape + shape[:1], fill=lighten(base, 0.45), width=max(2, round(r / 30)))
    ImageDraw.Draw(mask).line(shape + shape[:1], fill=255, width=max(2, round(r / 30)))
    return mask


def _missing_accessory(img: Image.Image, rng: np.random.Generator, c: Point, r: float, base: Color) -> Image.Image:
    rx, ry = r * rng.uniform(0.6, 0.85), r * rng.uniform(0.3, 0.5)
    box = (c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry)
    mask = Image.new("L", img.size)
    ImageDraw.Draw(mask).rounded_rectangle(box, radius=ry * 0.5, fill=255)
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle(box, radius=ry * 0.5, fill=lighten(base, 0.15), outline=darken(base, 0.55),
                           width=max(2, round(r / 25)))
    hr = max(2.0, r * 0.06)
    n = int(rng.choice([2, 3, 4]))
    holes = {2: [(-0.6, 0.0), (0.6, 0.0)], 3: [(-0.6, 0.3), (0.6, 0.3), (0.0, -0.4)],
             4: [(-0.6, -0.4), (0.6, -0.4), (-0.6, 0.4), (0.6, 0.4)]}[n]
    for hx, hy in holes:
        x, y = c[0] + hx * rx, c[1] + hy * ry
        draw.ellipse((x - hr, y - hr, x + hr, y + hr), fill=FIXED["hole"], outline=(150, 150, 154))
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
    draw.polygon(strip, fill=darken(base, 0.28))
    draw.polygon(gap, fill=(10, 10, 11))
    draw.line(rim, fill=lighten(base, 0.55), width=max(2, round(r / 30)))
    return mask


def sticker(img: Image.Image, rng: np.random.Generator, c: Point, r: float, base: Color) -> Image.Image:
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
