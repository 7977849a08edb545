"""The canonical manifest: vocabularies, the Parquet schemas, and the records adapters emit.

Every adapter turns its dataset format into `Candidate`s (one per image file) and
`QuarantineEntry`s (files it could not take). The audit phase validates candidates and writes
`manifest.parquet` (MANIFEST_SCHEMA) and `quarantine.parquet` (QUARANTINE_SCHEMA).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

# LabelMe damage labels "1".."8". Label "9" is not damage and is ignored.
DAMAGE_TYPES: dict[int, str] = {
    1: "surface_scratch",
    2: "dent",
    3: "paint_peeling",
    4: "deep_scratch",
    5: "crack",
    6: "missing_part",
    7: "missing_accessory",
    8: "misaligned_part",
}
IGNORED_LABELS = {"9"}
NO_DAMAGE_LABEL = "no_damage"

# zone -> (zone_name, zone_area)
ZONES: dict[int, tuple[str, str]] = {
    1: ("front_left_fender", "frontal"),
    2: ("hood_center", "frontal"),
    3: ("front_right_fender", "frontal"),
    4: ("rear_left_quarter", "posterior"),
    5: ("rear_bumper", "posterior"),
    6: ("rear_right_quarter", "posterior"),
    7: ("driver_side_door", "lateral_left"),
    8: ("driver_side_rocker", "lateral_left"),
    9: ("passenger_side_door", "lateral_right"),
    10: ("passenger_side_rocker", "lateral_right"),
}

# Quarantine reasons: one per kind of bad input.
REASONS: dict[str, str] = {
    "decode_error": "the file is not a decodable image (corrupt, truncated or not an image)",
    "decompression_bomb": "the image has more pixels than audit.max_pixels allows",
    "too_small": "the short side is below audit.min_side",
    "exact_duplicate": "same bytes as another image (detail names the one kept)",
    "near_duplicate": "perceptual hash within audit.near_duplicate_threshold of another image (policy 'drop')",
    "license_rejected": "licence not in audit.allowed_licenses",
    "malformed_annotation": "annotation file is not valid JSON or not the expected structure",
    "unknown_label": "annotation label outside the known vocabulary (shape dropped)",
    "degenerate_polygon": "a shape with no area: polygon under 3 points, zero-size box or circle, area below audit.min_polygon_area (shape dropped)",
    "polygon_outside_image": "polygon lies entirely outside the image (shape dropped)",
    "missing_annotation": "a damaged (ko) image without its damage annotation file",
    "label_contradiction": "a clean (ok) photo whose annotation file holds damage shapes (detail lists them)",
    "unsupported_shape": "a shape type that gives no image region, e.g. a LabelMe mask (shape dropped)",
    "no_valid_annotation": "a damaged image whose damage shapes were all rejected",
    "path_escape": "the path resolves outside the dataset root",
    "missing_file": "a record names a file that does not exist",
    "url_not_fetchable": "a record names a URL; runs are offline",
    "bad_filename": "the file name does not follow the dataset's naming scheme",
    "orphan_annotation": "an annotation file with no matching image",
    "unsupported_file": "a file that is neither an image nor an annotation of this format",
    "bad_record": "a manifest record that is not valid JSON or lacks required fields",
    "too_costly": "a file or shape over a work bound (audit.max_seconds_per_file, max_memory_mb, max_annotation_bytes, max_shape_points)",
}


@dataclass
class Annotation:
    label: str  # damage type name (e.g. "dent") or part name (COCO parts)
    points: list[list[float]]  # [[x, y], ...] in original image pixel coordinates
    kind: str = "damage"  # "damage" | "part"
    shape_type: str = "polygon"  # the source shape type (LabelMe: rectangle, circle, line...); points are always a ring


@dataclass
class QuarantineEntry:
    path: str  # relative to the dataset root (or the raw string when it escapes the root)
    reason: str  # a key of REASONS
    detail: str = ""
    level: str = "file"  # "file": the file is not in the manifest; "shape": one annotation dropped
    item_id: str | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {self.reason!r}")
        # text from hostile names or JSON may hold lone surrogates: keep it writable (as \udcxx escapes)
        self.path = self.path.encode("utf-8", "backslashreplace").decode("utf-8")
        self.detail = self.detail.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Candidate:
    """One image as an adapter read it, before the audit."""

    path: str  # posix path relative to the dataset root
    source_format: str  # labelme | coco | jsonl | folders
    label: str | None = None
    group_id: str | None = None
    has_damage: bool | None = None
    zone: int | None = None
    zone_name: str | None = None
    zone_area: str | None = None
    damage_types: list[str] = field(default_factory=list)
    annotations: list[Annotation] = field(default_factory=list)
    annotation_path: str | None = None  # the annotation file consumed with this image
    extra_paths: list[str] = field(default_factory=list)  # other files consumed (e.g. LabelMe ground truth)
    region: str | None = None
    license: str | None = None
    source_url: str | None = None
    synthetic: bool = False
    issues: list[QuarantineEntry] = field(default_factory=list)  # shape-level problems found while parsing


@dataclass
class AdapterResult:
    candidates: list[Candidate]
    quarantine: list[QuarantineEntry]
    files: list[str]  # every file under the root the adapter considered (posix, relative)


MANIFEST_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),  # sha256 of the file bytes
        ("path", pa.string()),  # posix, relative to the dataset root
        ("width", pa.int32()),  # after EXIF orientation
        ("height", pa.int32()),
        ("label", pa.string()),
        ("group_id", pa.string()),  # items sharing it always land in one split
        ("has_damage", pa.bool_()),
        ("zone", pa.int32()),
        ("zone_name", pa.string()),
        ("zone_area", pa.string()),
        ("damage_types", pa.list_(pa.string())),
        ("annotations", pa.string()),  # JSON list of {label, kind, points}
        ("n_annotations", pa.int32()),
        ("region", pa.string()),
        ("license", pa.string()),
        ("source_format", pa.string()),
        ("annotation_path", pa.string()),
        ("extra_paths", pa.list_(pa.string())),
        ("orig_mode", pa.string()),  # PIL mode before conversion to RGB
        ("exif_rotated", pa.bool_()),
        ("phash", pa.string()),  # 64-bit perceptual hash, hex
        ("near_duplicate_of", pa.string()),  # path of the original when this is a near duplicate
        ("synthetic", pa.bool_()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("level", pa.string()),
        ("item_id", pa.string()),
    ]
)

SPLIT_NAMES = ("train", "val", "test")


def annotations_to_json(anns: list[Annotation]) -> str:
    return json.dumps([asdict(a) for a in anns], sort_keys=True, separators=(",", ":"))


def annotations_from_json(text: str | None) -> list[Annotation]:
    return [Annotation(**a) for a in json.loads(text or "[]")]


def quarantine_table(entries: list[QuarantineEntry]) -> pa.Table:
    rows: dict[str, list[Any]] = {name: [] for name in QUARANTINE_SCHEMA.names}
    for e in sorted(entries, key=lambda e: (e.path, e.level, e.reason, e.detail)):
        for name in QUARANTINE_SCHEMA.names:
            rows[name].append(getattr(e, name))
    return pa.table(rows, schema=QUARANTINE_SCHEMA)
