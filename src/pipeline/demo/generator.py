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

Modules: `geometry` (polygons, areas, shades), `scene` (panel and zone layouts), `marks` (one
look per damage type), `photo` (rendering one photo and its LabelMe file), this one (the plan of
photos and vehicles, the bad examples, writing the folder).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.core.config import DemoConfig
from pipeline.data.manifest import DAMAGE_TYPES, ZONES
from pipeline.demo.geometry import Color
from pipeline.demo.photo import (IMAGE_SUFFIX, LABEL_SUFFIX, STICKER_LABEL, Photo, jpeg_bytes, labelme_json,
                                 render_photo, shape)

_VEHICLE_COLORS: list[Color] = [
    (236, 236, 232), (186, 189, 193), (112, 114, 118), (30, 30, 32), (172, 26, 32),
    (32, 62, 132), (32, 78, 52), (202, 186, 150), (226, 190, 42), (212, 102, 32),
]



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


USERS_VEHICLE_ID = "2_3"  # the `<a>_<b>` every file of the users' real data carries


def _same_vehicle_id(photos: list[Photo], vehicle_id: str) -> list[Photo]:
    """Every photo named with `vehicle_id`; a timestamp that would repeat a name moves on by a second."""
    seen: set[str] = set()
    out = []
    for p in photos:
        p = replace(p, vehicle=vehicle_id)
        while p.stem in seen:
            when = datetime.strptime(p.timestamp, "%Y%m%dT%H%M%S") + timedelta(seconds=1)
            p = replace(p, timestamp=when.strftime("%Y%m%dT%H%M%S"))
        seen.add(p.stem)
        out.append(p)
    return out


def plan_photos(n: int, seed: int, extra_vehicles: int = 0, vehicle_id: str | None = None) -> tuple[list[Photo], list[str]]:
    """The photos to render (balanced ko/ok, zones and dominant types), plus unused vehicle ids.

    With `vehicle_id` (e.g. USERS_VEHICLE_ID) every name carries it instead of a per-vehicle
    `<a>_<b>`, as in the users' data; the photos are otherwise the same.
    """
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
    if vehicle_id is not None:
        return _same_vehicle_id(photos, vehicle_id), [vehicle_id] * extra_vehicles
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
                extra = shape("12", [[10.0, 10.0], [40.0, 10.0], [40.0, 30.0]])
            elif reason == "degenerate_polygon":
                extra = shape(shapes[0]["label"], [[20.0, 20.0], [60.0, 24.0]])
            elif reason == "polygon_clipped":
                extra = shape(shapes[0]["label"], [[w - 30.0, 40.0], [w + 25.0, 45.0], [w + 20.0, 90.0], [w - 35.0, 85.0]])
            else:
                extra = shape(shapes[0]["label"], [[w + 10.0, 10.0], [w + 60.0, 10.0], [w + 60.0, 50.0]])
            text = labelme_json(name, shapes + [extra], w, h)
        write_label(p, text, reason)
    return bad


# -- entry point ------------------------------------------------------------------------------------


def generate_demo_data(out_dir: Path, cfg: DemoConfig, progress: bool = True, vehicle_id: str | None = None) -> dict[str, Any]:
    """Write the synthetic dataset to out_dir (which must not exist or be empty); return counts.

    `vehicle_id`: name every photo `zona1_<ko|ok>_<vehicle_id>_...` (USERS_VEHICLE_ID = "2_3" gives
    the users' naming, where the name tells no vehicle apart).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder; remove it or choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        summary = _generate(tmp, cfg, progress, vehicle_id)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _generate(root: Path, cfg: DemoConfig, progress: bool, vehicle_id: str | None = None) -> dict[str, Any]:
    photos, spare = plan_photos(cfg.n_images, cfg.seed, extra_vehicles=9, vehicle_id=vehicle_id)
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
