"""LabelMe adapter for the `zona1_{ko|ok}_<a>_<b>_<ts>_zona_<Z>_...` naming scheme.

Per photo, in one folder (any depth):
  `<stem>_imageDANO_original.<ext>`    the image (`data.image_extensions`)
  `<stem>_labelDANO_modificado.json`   damage polygons (LabelMe JSON; labels "1".."8", "9" ignored)
  `<stem>_imageDANO_original.json`     optional ground truth, consumed as an extra path
where `<stem>` is `zona1_{ko|ok}_<a>_<b>_<timestamp>_zona_<Z>` and Z is a zone 1..10.
A `ko` photo is damaged and needs its damage file; an `ok` photo is clean. Damage shapes found
in an `ok` photo's file are kept as annotations, but its label stays `no_damage`.
"""
from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path

from pipeline.core.config import DataConfig
from pipeline.data.manifest import DAMAGE_TYPES, IGNORED_LABELS, NO_DAMAGE_LABEL, ZONES, Annotation, Candidate, QuarantineEntry
from pipeline.data.adapters.common import ScanResult, damage_types, dominant_label, is_image, list_root, parse_points, read_meta

IMAGE_SUFFIX = "_imageDANO_original"
LABEL_SUFFIX = "_labelDANO_modificado"
NAME_RE = re.compile(
    r"^(?P<stem>zona1_(?P<state>ko|ok)_(?P<a>[^_]+)_(?P<b>[^_]+)_(?P<ts>.+?)_zona_(?P<zone>\d+))"
    r"(?P<kind>_imageDANO_original|_labelDANO_modificado)(?P<ext>\.[^.]+)$"
)
EXPECTED = "zona1_{ko|ok}_<a>_<b>_<timestamp>_zona_<1..10>_imageDANO_original.<ext>"
_DAMAGE_LABELS = {str(code): name for code, name in DAMAGE_TYPES.items()}


def _read_shapes(
    root: Path, ann_path: str, image: str, stats: dict[str, int]
) -> tuple[list[Annotation], list[QuarantineEntry]] | str:
    """Damage annotations and shape-level issues of a LabelMe file, or why the file is malformed."""
    try:
        data = json.loads((root / ann_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"not JSON: {exc}"
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        return "no 'shapes' list"
    annotations: list[Annotation] = []
    issues: list[QuarantineEntry] = []
    for i, shape in enumerate(data["shapes"]):
        where = f"{ann_path} shape {i}"
        if not isinstance(shape, dict):
            issues.append(QuarantineEntry(image, "malformed_annotation", f"{where}: not an object", "shape"))
            continue
        label = str(shape.get("label", "")).strip()
        if label in IGNORED_LABELS:
            stats["n_shapes_ignored"] += 1
            continue
        if label not in _DAMAGE_LABELS:
            issues.append(QuarantineEntry(image, "unknown_label", f"{where}: label {label!r}", "shape"))
            continue
        points = parse_points(shape.get("points"))
        if points is None:
            issues.append(QuarantineEntry(image, "malformed_annotation", f"{where}: points are not [[x, y], ...]", "shape"))
            continue
        shape_type = str(shape.get("shape_type") or "polygon")
        if shape_type == "rectangle" and len(points) == 2:
            (x1, y1), (x2, y2) = points
            points, shape_type = [[x1, y1], [x2, y1], [x2, y2], [x1, y2]], "polygon"
        annotations.append(Annotation(_DAMAGE_LABELS[label], points, "damage", shape_type))
    return annotations, issues


def scan_labelme(root: Path, data_cfg: DataConfig) -> ScanResult:
    """Read a LabelMe dataset (see the module docstring)."""
    listing = list_root(root)
    meta = read_meta(root)
    quarantine = list(listing.quarantine)
    stats = {"n_shapes_ignored": 0}
    images: dict[str, str] = {}  # "<dir>/<stem>" -> image path
    sidecars: dict[str, str] = {}  # sidecar path -> "<dir>/<stem>"
    parsed: dict[str, tuple[str, str, str, int]] = {}  # image path -> (state, a, b, zone)

    for rel in listing.usable:
        folder, name = posixpath.split(rel)
        m = NAME_RE.match(name)
        ext = m.group("ext").lower() if m else ""
        if m and int(m.group("zone")) not in ZONES:
            quarantine.append(QuarantineEntry(rel, "bad_filename", f"zone {m.group('zone')} outside 1..10; expected {EXPECTED}"))
        elif m and m.group("kind") == IMAGE_SUFFIX and is_image(name, data_cfg):
            key = posixpath.join(folder, m.group("stem"))
            if key in images:
                quarantine.append(QuarantineEntry(rel, "bad_filename", f"same photo name as {images[key]}"))
                continue
            images[key] = rel
            parsed[rel] = (m.group("state"), m.group("a"), m.group("b"), int(m.group("zone")))
        elif m and ext == ".json":
            sidecars[rel] = posixpath.join(folder, m.group("stem"))
        elif is_image(name, data_cfg):
            quarantine.append(QuarantineEntry(rel, "bad_filename", f"expected {EXPECTED}"))
        else:
            quarantine.append(QuarantineEntry(rel, "unsupported_file", "neither a photo nor a LabelMe file of this scheme"))

    for rel, key in sidecars.items():
        if key not in images:
            quarantine.append(QuarantineEntry(rel, "orphan_annotation", f"no photo {key}{IMAGE_SUFFIX}.<ext>"))

    candidates = []
    for key, rel in sorted(images.items(), key=lambda kv: kv[1]):
        state, a, b, zone = parsed[rel]
        label_json = key + LABEL_SUFFIX + ".json"
        truth_json = key + IMAGE_SUFFIX + ".json"
        extra = [truth_json] if truth_json in sidecars else []
        annotations: list[Annotation] = []
        issues: list[QuarantineEntry] = []
        ann_path: str | None = None
        problem: str | None = None
        if label_json in sidecars:
            result = _read_shapes(root, label_json, rel, stats)
            if isinstance(result, str):
                quarantine.append(QuarantineEntry(label_json, "malformed_annotation", result))
                problem = f"damage annotation {label_json} is malformed"
            else:
                annotations, issues = result
                ann_path = label_json
        elif state == "ko":
            problem = f"no damage annotation {label_json}"
        if state == "ko" and problem:
            quarantine.append(QuarantineEntry(rel, "missing_annotation", problem))
            quarantine.extend(QuarantineEntry(p, "missing_annotation", f"sidecar of {rel}") for p in extra)
            continue
        zone_name, zone_area = ZONES[zone]
        candidates.append(
            Candidate(
                path=rel,
                source_format="labelme",
                label=dominant_label(annotations) if state == "ko" else NO_DAMAGE_LABEL,
                group_id=f"veh_{a}_{b}" if data_cfg.labelme_group_by == "vehicle" else rel,
                has_damage=state == "ko",
                zone=zone,
                zone_name=zone_name,
                zone_area=zone_area,
                damage_types=damage_types(annotations) if state == "ko" else [],
                annotations=annotations,
                annotation_path=ann_path,
                extra_paths=extra,
                license=meta.license,
                synthetic=meta.synthetic,
                issues=issues,
            )
        )
    return ScanResult(candidates, quarantine, listing.files, stats)
