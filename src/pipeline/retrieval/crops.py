"""Crops phase: damage crops from annotated polygons and grid crops of clean vehicle surface.

Per photo (a split.parquet row), inside the vehicle box of `detect.make_detector`:

- Damage crops (has_damage): damage polygon boxes whose centres lie within cfg.cluster_distance x
  the image diagonal of each other are clustered (single linkage); a cluster gives one crop, the
  union of its boxes plus cfg.crop_margin of the union's size on each side, clipped to the image
  (never padded). A crop longer than cfg.target_size is resized down (LANCZOS, aspect kept); a
  smaller one keeps its size. Its defects are the damage polygons with at least
  DEFECT_MIN_INSIDE of their box inside the crop, clipped to it, in crop pixels after the
  resize. A damaged photo without polygons (image-level labels) gives one crop of the vehicle box.
- Clean crops: grid windows of cfg.grid_size with cfg.grid_overlap tile the vehicle box from its
  top-left corner (the last window may overhang; windows are shifted into the image). A window is
  kept when at least cfg.min_vehicle_fraction of the vehicle area it could hold (the window, or the
  box's extent where the box is narrower than a window) lies inside the vehicle box, so a vehicle
  smaller than a window gives one window centred on it. Windows that touch a damage polygon box
  are never clean. Clean photos give clean crops; damaged photos too when cfg.clean_from_damaged.
- `part`: for COCO rows the part polygon whose box overlaps the crop most; null for LabelMe (the
  contexts phase infers it from the zone and the crop's position).

`run_crops` keeps a per-item cache (key: CROP_VERSION, item id, the row's annotation fields, both
configs and the resolved detector's files by hash), so a re-run decodes and detects only new or
changed photos. A crop inherits its photo's split. Outputs: crops.parquet (CROPS_SCHEMA, sorted by
crop_id), crops/<id[:2]>/<id>.jpg, skipped.parquet (SKIPPED_SCHEMA), report.md and
contact_sheet.png (`crops_report`: inputs only; cache counts are returned metrics).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.core.tables import CROPS, SKIPPED, write_table
from pipeline.core.config import CropsConfig, DetectConfig
from pipeline.retrieval.crops_report import contact_sheet, crops_report
from pipeline.retrieval.detect import Detector, DetectorChoice, choice_for, make_detector, resolve_detector
from pipeline.core.hashing import canonical_json, sha256_bytes
from pipeline.core.item_cache import ItemCache, as_item_cache
from pipeline.data.images import ImageLoadError, load_rgb
from pipeline.core.geometry import intersection, polygon_box  # noqa: F401  (re-exported)
from pipeline.retrieval.crop_item import (  # noqa: F401  (re-exported)
    CROP_VERSION, DEFECT_MIN_INSIDE, grid_windows, cluster_boxes, cluster_crop_box, fit_size, crop_defects, crop_id, crop_item,
)

CROPS_SCHEMA = pa.schema(
    [
        ("crop_id", pa.string()),  # sha256 of item id, version, crop params, type and box
        ("item_id", pa.string()),
        ("source_path", pa.string()),  # the photo, relative to the dataset root
        ("split", pa.string()),  # the photo's split
        ("crop_path", pa.string()),  # posix, relative to the crops artifact dir
        ("crop_type", pa.string()),  # damage | clean
        ("x0", pa.int32()),  # crop box in source image px
        ("y0", pa.int32()),
        ("x1", pa.int32()),
        ("y1", pa.int32()),
        ("width", pa.int32()),  # of the saved crop
        ("height", pa.int32()),
        ("source_width", pa.int32()),  # of the decoded (EXIF-oriented) photo
        ("source_height", pa.int32()),
        ("grid_row", pa.int32()),  # grid window index; null for damage crops
        ("grid_col", pa.int32()),
        ("zone", pa.int32()),
        ("zone_name", pa.string()),
        ("zone_area", pa.string()),
        ("part", pa.string()),  # COCO: the overlapping part polygon; LabelMe: null
        ("has_damage", pa.bool_()),
        ("damage_types", pa.list_(pa.string())),
        ("defects", pa.string()),  # JSON list of {type, box: [x0, y0, x1, y1] in crop px, area_px}
        ("n_defects", pa.int32()),
        ("vehicle_box", pa.list_(pa.int32())),  # x0, y0, x1, y1 after the margin
        ("det_conf", pa.float32()),
        ("det_found", pa.bool_()),
        ("source_format", pa.string()),
    ]
)

SKIPPED_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("path", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)

SKIP_REASONS: dict[str, str] = {
    "decode_error": "the photo could not be loaded (not cached: retried on the next run)",
    "no_vehicle": "the detector found no vehicle and detect.on_miss is 'skip'",
    "no_crops": "no damage polygon and no grid window passed the filters",
    "unknown_damage_state": "has_damage is null: the photo cannot be labelled damaged or clean",
    "duplicate_item": "same item_id (same bytes) as an earlier row; its crops are that row's",
}

# Row fields that decide the crops besides the pixels (part of the per-item cache key).
_ROW_KEY_FIELDS = ("has_damage", "annotations", "damage_types", "zone", "zone_name", "zone_area", "source_format")


# -- the phase -------------------------------------------------------------------------------------


@dataclass
class ItemOutcome:
    """What one photo gave: crop rows, or why it gave none, and its detection."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] | None = None  # {reason, detail}
    found: bool | None = None  # None: no detection ran (decode error, duplicate, unknown state)
    detector: dict[str, Any] | None = None


def item_cache_key(row: dict[str, Any], params: str) -> str:
    """sha256 of the item id, the row fields that shape its crops, and the canonical phase params."""
    fields = {k: row.get(k) for k in _ROW_KEY_FIELDS}
    return sha256_bytes(canonical_json({"item_id": row["item_id"], "row": fields, "params": params}).encode())


def _place(src: Path, dst: Path) -> None:
    """Hard-link src to dst (replacing dst), copying when linking is impossible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _cache_read(entry: Path | None) -> dict[str, Any] | None:
    """The outcome stored in a complete cache entry (`ItemCache.entry`), None without one."""
    return None if entry is None else json.loads((entry / "crops.json").read_text(encoding="utf-8"))


def _cache_write(cache: ItemCache, key: str, outcome: ItemOutcome, out_dir: Path) -> None:
    """Store an outcome and its crop files as entry `key` (`ItemCache.write_entry`: a temp dir, the
    done-marker last, then an atomic rename; on a remote cache, uploaded with the done-marker last)."""
    payload = {"rows": outcome.rows, "skipped": outcome.skipped, "found": outcome.found, "detector": outcome.detector}

    def fill(tmp: Path) -> None:
        for rec in outcome.rows:
            _place(out_dir / rec["crop_path"], tmp / f"{rec['crop_id']}.jpg")
        (tmp / "crops.json").write_text(canonical_json(payload), encoding="utf-8")

    cache.write_entry(key, fill)


def _process(row: dict[str, Any], root: Path, get_detector: Callable[[], Detector], det_cfg: DetectConfig,
             cfg: CropsConfig, out_dir: Path, max_pixels: int) -> ItemOutcome:
    """Decode, detect and crop one photo; write its JPEGs into out_dir."""
    try:
        img, _ = load_rgb(root / row["path"], max_pixels)
    except ImageLoadError as exc:
        return ItemOutcome(skipped={"reason": "decode_error", "detail": f"{type(exc).__name__}: {exc}"})
    detector = get_detector()
    det = detector.detect(img)
    outcome = ItemOutcome(found=det.found, detector=detector.describe())
    if not det.found and det_cfg.on_miss == "skip":
        outcome.skipped = {"reason": "no_vehicle", "detail": f"no {'/'.join(det_cfg.classes)} at conf >= {det_cfg.conf}"}
        return outcome
    for rec, crop in crop_item(img, row, det, cfg):
        path = out_dir / rec["crop_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(crop, cfg.jpeg_quality))
        outcome.rows.append(rec)
    if not outcome.rows:
        outcome.skipped = {"reason": "no_crops", "detail": "no damage polygon, and no grid window passed the filters"}
    return outcome


def run_crops(
    split_path: Path,
    dataset_root: Path,
    det_cfg: DetectConfig,
    cfg: CropsConfig,
    out_dir: Path,
    item_cache: ItemCache | Path | None,
    progress: bool = True,
    max_pixels: int = 89_478_485,
    weights_dir: Path | None = None,
    detector: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Crop every photo of split.parquet into out_dir (see the module docstring).

    Returns numeric metrics plus the detector's info strings (`detector`, `detector_reason`,
    `detector_weights`). `weights_dir` is where bare Ultralytics weight names resolve
    (`Workspace.weights`). `detector`: the detector the artifact id names (`DetectorChoice.identity`,
    resolved once for the id), found again here and never re-decided (ModelUnavailable when its files
    are not here); None: resolved here. The per-item cache key holds the detector's files by hash, so
    adding weights to the weights dir recomputes every photo. `item_cache`: a local directory or an
    `ItemCache` (a remote one is listed once, its entries downloaded in batches, new ones uploaded
    before this returns).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    choice = named_choice(det_cfg, weights_dir, detector)  # fails here, before any work, on missing model files
    rows = pq.read_table(split_path).to_pylist()
    params = item_params(det_cfg, cfg, choice)
    get_detector = lazy_detector(det_cfg, weights_dir, choice)
    cache = as_item_cache(item_cache)
    crops: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    found: list[bool] = []
    seen: dict[str, str] = {}
    counts: Counter[str] = Counter()
    with cache or contextlib.nullcontext():  # a remote cache: what this run wrote is uploaded before it returns
        if cache is not None:  # a remote cache: the entries it holds, downloaded in batches first (local: nothing)
            cache.prefetch_entries(item_cache_key(r, params) for r in rows if r.get("has_damage") is not None)
        for row in tqdm(rows, desc="crops", unit="img", disable=not progress, leave=False):
            if row["item_id"] in seen:
                outcome = ItemOutcome(skipped={"reason": "duplicate_item", "detail": f"same bytes as {seen[row['item_id']]}"})
            elif row.get("has_damage") is None:
                outcome = ItemOutcome(skipped={"reason": "unknown_damage_state", "detail": "has_damage is null"})
            else:
                seen[row["item_id"]] = row["path"]
                outcome, how = _cached_or_processed(row, params, cache, out_dir, lambda: _process(
                    row, Path(dataset_root), get_detector, det_cfg, cfg, out_dir, max_pixels))
                counts[how] += 1
            crops.extend(outcome.rows)
            if outcome.skipped:
                skipped.append({"item_id": row["item_id"], "path": row["path"], **outcome.skipped})
            if outcome.found is not None:
                found.append(outcome.found)

    crops.sort(key=lambda r: r["crop_id"])
    skipped.sort(key=lambda r: (r["path"], r["item_id"]))
    write_table(pa.Table.from_pylist(crops, schema=CROPS_SCHEMA), out_dir / CROPS)
    write_table(pa.Table.from_pylist(skipped, schema=SKIPPED_SCHEMA), out_dir / SKIPPED)
    metrics = _metrics(rows, crops, skipped, found)
    contact_sheet(out_dir, crops, out_dir / "contact_sheet.png")
    report = crops_report(metrics, crops, skipped, choice, det_cfg, SKIP_REASONS)
    (out_dir / "report.md").write_text(report, encoding="utf-8")
    # run-dependent figures: returned (lineage, MLflow), never written into the artifact
    return {**metrics, "n_items_cached": counts["cached"], "n_items_processed": counts["processed"], **choice.info()}


def named_choice(det_cfg: DetectConfig, weights_dir: Path | None, detector: dict[str, Any] | None) -> DetectorChoice:
    """The detector an artifact id names (`detector`: its identity, found again here), else resolved now."""
    return resolve_detector(det_cfg, weights_dir) if detector is None else choice_for(detector, det_cfg, weights_dir)


def lazy_detector(det_cfg: DetectConfig, weights_dir: Path | None, choice: DetectorChoice) -> Callable[[], Detector]:
    """The detector of `choice`, built on the first call only (no model loaded when every photo is cached)."""
    detectors: list[Detector] = []

    def get_detector() -> Detector:
        if not detectors:
            detectors.append(make_detector(det_cfg, weights_dir, choice))
        return detectors[0]

    return get_detector


def item_params(det_cfg: DetectConfig, cfg: CropsConfig, choice: Any) -> str:
    """The canonical phase params in every per-item cache key (the resolved detector's identity included)."""
    return canonical_json({"version": CROP_VERSION, "detect": det_cfg.model_dump(mode="json"),
                           "detector": choice.identity, "crops": cfg.model_dump(mode="json")})


def _cached_or_processed(row: dict[str, Any], params: str, cache: ItemCache | None, out_dir: Path,
                         process: Callable[[], ItemOutcome]) -> tuple[ItemOutcome, str]:
    """One photo's outcome from the per-item cache ('cached'), else computed and stored ('processed')."""
    key = item_cache_key(row, params)
    entry = cache.entry(key) if cache is not None else None
    cached = _cache_read(entry)
    if cached is None:
        outcome = process()
        if cache is not None and outcome.found is not None:
            _cache_write(cache, key, outcome, out_dir)
        return outcome, "processed"
    outcome = ItemOutcome(cached["rows"], cached["skipped"], cached["found"], cached["detector"])
    for rec in outcome.rows:
        rec.update(split=row.get("split"), source_path=row["path"])
        _place(entry / f"{rec['crop_id']}.jpg", out_dir / rec["crop_path"])
    return outcome, "cached"


def _metrics(rows: list[dict], crops: list[dict], skipped: list[dict], found: list[bool]) -> dict[str, float]:
    """What depends on the inputs alone (the report shows these)."""
    types = Counter(c["crop_type"] for c in crops)
    reasons = Counter(s["reason"] for s in skipped)
    metrics: dict[str, float] = {
        "n_items": len(rows),
        "n_crops": len(crops),
        "n_damage_crops": types["damage"],
        "n_clean_crops": types["clean"],
        "n_skipped": len(skipped),
        "n_detected": sum(found),
        "detection_rate": sum(found) / len(found) if found else 0.0,
    }
    metrics.update({f"n_skipped_{r}": reasons[r] for r in SKIP_REASONS})
    return metrics
