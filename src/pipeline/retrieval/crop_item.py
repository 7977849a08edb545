"""What the crops phase does to one photo: grid windows of clean surface inside the vehicle box,
clustered damage crops, their defects in crop pixels and their ids (see retrieval/crops.py)."""
from __future__ import annotations

import json
import math
from typing import Any

from PIL import Image

from pipeline.core.components import components
from pipeline.core.config import CropsConfig
from pipeline.core.geometry import BoxF, BoxI, box_area, clipped_extent, intersection, polygon_box
from pipeline.core.hashing import canonical_json, sha256_bytes
from pipeline.data.manifest import annotations_from_json
from pipeline.retrieval.detect import Detection

CROP_VERSION = "1"  # bump when crop geometry changes (renews the per-item cache keys)
DEFECT_MIN_INSIDE = 0.5  # a defect belongs to a crop when this much of its box lies inside


def _axis_starts(b0: int, b1: int, limit: int, size: int, stride: int) -> list[int]:
    """Window starts along one axis: tiling [b0, b1] from b0 (or one window centred), inside [0, limit]."""
    if b1 - b0 <= size:
        starts = [round((b0 + b1 - size) / 2)]
    else:
        starts = [b0 + i * stride for i in range(math.ceil((b1 - b0 - size) / stride) + 1)]
    return sorted({min(max(0, s), limit - size) for s in starts})


def grid_windows(vbox: BoxI, image_size: tuple[int, int], cfg: CropsConfig) -> list[tuple[int, int, BoxI]]:
    """(row, col, box) of the grid windows over the vehicle box that pass the vehicle-fraction filter."""
    w, h = image_size
    gw, gh = min(cfg.grid_size, w), min(cfg.grid_size, h)
    stride = max(1, round(cfg.grid_size * (1 - cfg.grid_overlap)))
    bx0, by0, bx1, by1 = vbox
    achievable = min(bx1 - bx0, gw) * min(by1 - by0, gh)
    out = []
    for r, y in enumerate(_axis_starts(by0, by1, h, gh, stride)):
        for c, x in enumerate(_axis_starts(bx0, bx1, w, gw, stride)):
            box = (x, y, x + gw, y + gh)
            if intersection(box, vbox) >= cfg.min_vehicle_fraction * achievable:
                out.append((r, c, box))
    return out


def cluster_boxes(boxes: list[BoxF], max_distance: float) -> list[list[int]]:
    """Single-linkage clusters of boxes whose centres are within max_distance; lists of indices."""
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
    pairs = [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
             if math.dist(centres[i], centres[j]) <= max_distance]
    return components(len(boxes), pairs)


def cluster_crop_box(boxes: list[BoxF], margin: float, image_size: tuple[int, int]) -> BoxI:
    """The union of `boxes` plus `margin` of its size on each side, rounded outwards, clipped to the image."""
    w, h = image_size
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    cx0, cy0 = max(0, math.floor(x0 - mx)), max(0, math.floor(y0 - my))
    cx1, cy1 = min(w, math.ceil(x1 + mx)), min(h, math.ceil(y1 + my))
    return cx0, cy0, max(cx1, min(w, cx0 + 1)), max(cy1, min(h, cy0 + 1))


def fit_size(img: Image.Image, target: int) -> Image.Image:
    """Resize down (LANCZOS, aspect kept) when the long side exceeds `target`; never up."""
    w, h = img.size
    if max(w, h) <= target:
        return img
    s = target / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)


def crop_defects(damage: list[tuple[str, list[list[float]]]], box: BoxI, out_size: tuple[int, int]) -> list[dict]:
    """Defects of a crop: (type, polygon) with >= DEFECT_MIN_INSIDE of their box inside, in crop px."""
    x0, y0, x1, y1 = box
    cw, ch = out_size
    sx, sy = cw / (x1 - x0), ch / (y1 - y0)
    defects = []
    for label, points in damage:
        pbox = polygon_box(points)
        inside = intersection(pbox, box)
        if inside <= 0 or inside < DEFECT_MIN_INSIDE * box_area(pbox):
            continue
        extent = clipped_extent([[(x - x0) * sx, (y - y0) * sy] for x, y in points], cw, ch)
        if extent is None:
            continue
        (bx0, by0, bx1, by1), area = extent
        defects.append({
            "type": label,
            "box": [max(0, math.floor(bx0)), max(0, math.floor(by0)), min(cw, math.ceil(bx1)), min(ch, math.ceil(by1))],
            "area_px": round(area),
        })
    return defects


# -- one photo -------------------------------------------------------------------------------------


def crop_id(item_id: str, cfg: CropsConfig, crop_type: str, box: BoxI) -> str:
    payload = {"item_id": item_id, "version": CROP_VERSION, "params": cfg.model_dump(mode="json"),
               "type": crop_type, "box": list(box)}
    return sha256_bytes(canonical_json(payload).encode())


def _best_part(parts: list[tuple[str, BoxF]], box: BoxI) -> str | None:
    """The part label whose polygon box overlaps `box` most (first on ties), or None."""
    best, best_area = None, 0.0
    for label, pbox in parts:
        area = intersection(pbox, box)
        if area > best_area:
            best, best_area = label, area
    return best


def _zone(row: dict[str, Any]) -> int | None:
    return int(row["zone"]) if row.get("zone") is not None else None


def crop_item(img: Image.Image, row: dict[str, Any], det: Detection, cfg: CropsConfig) -> list[tuple[dict[str, Any], Image.Image]]:
    """The crops of one photo as (CROPS_SCHEMA row, image) pairs; pure (writes nothing)."""
    size = img.size
    anns = annotations_from_json(row.get("annotations"))
    damage = [(a.label, a.points) for a in anns if a.kind == "damage" and a.points]
    damage_boxes = [polygon_box(p) for _, p in damage]
    parts = [(a.label, polygon_box(a.points)) for a in anns if a.kind == "part" and a.points]
    vbox = det.box

    def make(crop_type: str, box: BoxI, grid: tuple[int, int] | None, types: list[str] | None = None) -> tuple[dict, Image.Image]:
        out = fit_size(img.crop(box), cfg.target_size)
        defects = crop_defects(damage, box, out.size) if crop_type == "damage" else []
        cid = crop_id(row["item_id"], cfg, crop_type, box)
        rec = {
            "crop_id": cid, "item_id": row["item_id"], "source_path": row["path"], "split": row.get("split"),
            "crop_path": f"crops/{cid[:2]}/{cid}.jpg", "crop_type": crop_type,
            "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3], "width": out.width, "height": out.height,
            "source_width": size[0], "source_height": size[1],
            "grid_row": grid[0] if grid else None, "grid_col": grid[1] if grid else None,
            "zone": _zone(row), "zone_name": row.get("zone_name"), "zone_area": row.get("zone_area"),
            "part": _best_part(parts, box) if parts else None,
            "has_damage": crop_type == "damage",
            "damage_types": types if types is not None else sorted({d["type"] for d in defects}),
            "defects": json.dumps(defects, sort_keys=True, separators=(",", ":")), "n_defects": len(defects),
            "vehicle_box": list(vbox), "det_conf": det.conf, "det_found": det.found,
            "source_format": row.get("source_format"),
        }
        return rec, out

    crops = []
    if row.get("has_damage"):
        if damage:
            diag = math.hypot(*size)
            for members in cluster_boxes(damage_boxes, cfg.cluster_distance * diag):
                crops.append(make("damage", cluster_crop_box([damage_boxes[i] for i in members], cfg.crop_margin, size), None))
        else:  # image-level label: the damage is somewhere on the vehicle
            crops.append(make("damage", vbox, None, sorted(row.get("damage_types") or [])))
    if not row.get("has_damage") or (cfg.clean_from_damaged and damage):
        for r, c, box in grid_windows(vbox, size, cfg):
            if not any(intersection(box, d) > 0 for d in damage_boxes):
                crops.append(make("clean", box, (r, c)))
    return crops
