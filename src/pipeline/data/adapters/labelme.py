"""LabelMe adapter for the `zona1_{ko|ok}_<a>_<b>_<ts>_zona_<Z>_...` naming scheme.

Per photo, in one folder (any depth):
  `<stem>_imageDANO_original<tail>.<ext>`    the image (`data.image_extensions`)
  `<stem>_labelDANO_modificado<tail>.json`   damage shapes (LabelMe JSON; labels "1".."8", "9" ignored)
  `<stem>_imageDANO_original<tail>.json`     optional ground truth, consumed as an extra path
where `<stem>` is `zona1_{ko|ok}_<a>_<b>_<timestamp>_zona_<Z>`, Z a zone 1..10, and `<tail>` is
empty or what copying a file appends (` (copia)`, ` - copia (2)`, ` (1)`, ` copy`, any letters,
non-ASCII included; it must not start with a letter or digit). Name parts are matched without
regard to case. A photo takes the sidecar with its own tail, else the plain one (no tail), else
the only one of its stem; so `X_imageDANO_original (copia).jpg` finds
`X_labelDANO_modificado (copia).json` or `X_labelDANO_modificado.json`.

`ko` = damaged: it needs its damage file (`missing_annotation` otherwise). `ok` = clean: a damage
shape in its file contradicts the name, and the photo and its files are quarantined
(`label_contradiction`). Every LabelMe shape type becomes a region (core/geometry.py): rectangles,
circles and ellipses with their real areas, lines and points buffered to small regions (counted
as `n_shapes_buffered`); a shape that gives no region is a shape-level quarantine row.

`<a>_<b>` is not a vehicle id in the users' data (every file carries `2_3`), so the group is the
photo unless `data.labelme_group_by: vehicle`.
"""
from __future__ import annotations

import posixpath
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import DataConfig
from pipeline.core.geometry import BUFFERED_TYPES, ShapeError, shape_rings
from pipeline.data.adapters.common import (DatasetMeta, Limits, ScanResult, damage_types, dominant_label, is_image, list_root,
                                           parse_points, read_json, read_meta, too_many_points)
from pipeline.data.manifest import DAMAGE_TYPES, IGNORED_LABELS, NO_DAMAGE_LABEL, ZONES, Annotation, Candidate, QuarantineEntry

IMAGE_SUFFIX = "_imageDANO_original"
LABEL_SUFFIX = "_labelDANO_modificado"
NAME_RE = re.compile(
    r"^(?P<stem>zona1_(?P<state>ko|ok)_(?P<a>[^_]+)_(?P<b>[^_]+)_(?P<ts>.+?)_zona_(?P<zone>[0-9]+))"
    r"(?P<kind>_imageDANO_original|_labelDANO_modificado)(?P<tail>(?:[^A-Za-z0-9].*?)?)(?P<ext>\.[^.]+)$",
    re.IGNORECASE,
)
EXPECTED = "zona1_{ko|ok}_<a>_<b>_<timestamp>_zona_<1..10>_imageDANO_original.<ext>"
_DAMAGE_LABELS = {str(code): name for code, name in DAMAGE_TYPES.items()}


@dataclass
class Shapes:
    """What one LabelMe file gave: damage annotations, shape-level issues, the damage shapes it names."""

    annotations: list[Annotation] = field(default_factory=list)
    issues: list[QuarantineEntry] = field(default_factory=list)
    damage_shapes: list[str] = field(default_factory=list)  # "#i dent (circle)", valid or not


def _shape(shape: object, where: str, image: str, out: Shapes, stats: dict[str, int], limits: Limits) -> None:
    if not isinstance(shape, dict):
        out.issues.append(QuarantineEntry(image, "malformed_annotation", f"{where}: not an object", "shape"))
        return
    label = str(shape.get("label", "")).strip()
    if label in IGNORED_LABELS:
        stats["n_shapes_ignored"] += 1
        return
    if label not in _DAMAGE_LABELS:
        out.issues.append(QuarantineEntry(image, "unknown_label", f"{where}: label {label!r}", "shape"))
        return
    shape_type = str(shape.get("shape_type") or "polygon").strip().lower()
    out.damage_shapes.append(f"#{where.rsplit(' ', 1)[-1]} {_DAMAGE_LABELS[label]} ({shape_type})")
    costly = too_many_points(shape.get("points"), limits)
    if costly:
        out.issues.append(QuarantineEntry(image, "too_costly", f"{where}: {costly}", "shape"))
        return
    points = parse_points(shape.get("points"))
    if points is None:
        out.issues.append(QuarantineEntry(image, "malformed_annotation", f"{where}: points are not [[x, y], ...]", "shape"))
        return
    try:
        rings = shape_rings(shape_type, points)
    except ShapeError as exc:
        out.issues.append(QuarantineEntry(image, exc.reason, f"{where}: {exc.detail}", "shape"))
        return
    stats["n_shapes_buffered"] += shape_type in BUFFERED_TYPES
    out.annotations.extend(Annotation(_DAMAGE_LABELS[label], r, "damage", shape_type) for r in rings)


def read_shapes(root: Path, ann_path: str, image: str, stats: dict[str, int],
                limits: Limits | None = None) -> Shapes | tuple[str, str]:
    """The shapes of a LabelMe file, or (reason, detail) when the file is malformed or too large. The
    file's `imagePath` and `imageData` are never used: the photo is the file named like it."""
    data, problem = read_json(root / ann_path, limits or Limits())
    if problem is not None:
        return problem
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        return "malformed_annotation", "no 'shapes' list"
    out = Shapes()
    for i, shape in enumerate(data["shapes"]):
        _shape(shape, f"{ann_path} shape {i}", image, out, stats, limits or Limits())
    return out


def _tail(m: re.Match) -> str:
    return unicodedata.normalize("NFC", m.group("tail")).strip()


@dataclass
class Photo:
    path: str
    state: str
    a: str
    b: str
    zone: int
    key: tuple[str, str]  # (folder, stem)
    tail: str


@dataclass
class Sidecars:
    """Sidecar JSON files by (folder, stem, kind), each as {tail: path}; the used ones are marked."""

    by_stem: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    def add(self, key: tuple[str, str], kind: str, tail: str, path: str) -> None:
        self.by_stem.setdefault((*key, kind), {})[tail] = path

    def pick(self, photo: Photo, kind: str) -> str | None:
        """The photo's own tail, else the plain file, else the only one of the stem."""
        tails = self.by_stem.get((*photo.key, kind), {})
        path = tails.get(photo.tail) or tails.get("") or (next(iter(tails.values())) if len(tails) == 1 else None)
        if path:
            self.used.add(path)
        return path

    def all(self) -> list[str]:
        return sorted(p for tails in self.by_stem.values() for p in tails.values())


def _list(root: Path, data_cfg: DataConfig, quarantine: list[QuarantineEntry]) -> tuple[list[Photo], Sidecars, list[str]]:
    listing = list_root(root)
    quarantine.extend(listing.quarantine)
    photos: dict[tuple[str, str, str], Photo] = {}
    sidecars = Sidecars()
    for rel in listing.usable:
        folder, name = posixpath.split(rel)
        m = NAME_RE.match(unicodedata.normalize("NFC", name))
        kind = m.group("kind").lower() if m else ""
        if m and int(m.group("zone")) not in ZONES:
            quarantine.append(QuarantineEntry(rel, "bad_filename", f"zone {m.group('zone')} outside 1..10; expected {EXPECTED}"))
        elif m and kind == IMAGE_SUFFIX.lower() and is_image(name, data_cfg):
            key = (folder, m.group("stem").lower())
            if (*key, _tail(m)) in photos:
                quarantine.append(QuarantineEntry(rel, "bad_filename", f"same photo name as {photos[(*key, _tail(m))].path}"))
                continue
            photos[(*key, _tail(m))] = Photo(rel, m.group("state").lower(), m.group("a"), m.group("b"),
                                             int(m.group("zone")), key, _tail(m))
        elif m and m.group("ext").lower() == ".json":
            sidecars.add((folder, m.group("stem").lower()), kind, _tail(m), rel)
        elif is_image(name, data_cfg):
            quarantine.append(QuarantineEntry(rel, "bad_filename", f"expected {EXPECTED}"))
        else:
            quarantine.append(QuarantineEntry(rel, "unsupported_file", "neither a photo nor a LabelMe file of this scheme"))
    return sorted(photos.values(), key=lambda p: p.path), sidecars, listing.files


def _reject(photo: Photo, files: list[str], reason: str, detail: str, quarantine: list[QuarantineEntry],
            placed: set[str]) -> None:
    """Quarantine the photo and those of its sidecars no earlier photo took or placed."""
    quarantine.append(QuarantineEntry(photo.path, reason, detail))
    for p in files:
        if p not in placed:
            placed.add(p)
            quarantine.append(QuarantineEntry(p, reason, f"sidecar of {photo.path}"))


def scan_labelme(root: Path, data_cfg: DataConfig, limits: Limits | None = None) -> ScanResult:
    """Read a LabelMe dataset (see the module docstring)."""
    meta = read_meta(root)
    quarantine: list[QuarantineEntry] = []
    stats = {"n_shapes_ignored": 0, "n_shapes_buffered": 0}
    photos, sidecars, files = _list(root, data_cfg, quarantine)
    placed: set[str] = set()  # sidecars already given a file-level quarantine row
    candidates = []
    for photo in photos:
        label_json = sidecars.pick(photo, LABEL_SUFFIX.lower())
        truth_json = sidecars.pick(photo, IMAGE_SUFFIX.lower())
        extra = [truth_json] if truth_json else []
        shapes = Shapes()
        if label_json:
            result = read_shapes(root, label_json, photo.path, stats, limits)
            if isinstance(result, tuple):
                if label_json not in placed:
                    placed.add(label_json)
                    quarantine.append(QuarantineEntry(label_json, *result))
                if photo.state == "ko":
                    why = "too large to read" if result[0] == "too_costly" else "malformed"
                    _reject(photo, extra, "missing_annotation", f"damage annotation {label_json} is {why}", quarantine, placed)
                    continue
                label_json = None
            else:
                shapes = result
        elif photo.state == "ko":
            stem = photo.path[: photo.path.lower().rfind(IMAGE_SUFFIX.lower())]
            _reject(photo, extra, "missing_annotation", f"no damage annotation {stem}{LABEL_SUFFIX}.json", quarantine, placed)
            continue
        if photo.state == "ok" and shapes.damage_shapes:
            why = (f"'ok' (clean) photo but {label_json} has {len(shapes.damage_shapes)} damage shape(s): "
                   + ", ".join(shapes.damage_shapes))
            _reject(photo, [p for p in (label_json, *extra) if p], "label_contradiction", why, quarantine, placed)
            continue
        candidates.append(_candidate(photo, shapes, label_json, extra, data_cfg, meta))
    for path in sidecars.all():
        if path not in sidecars.used:
            quarantine.append(QuarantineEntry(path, "orphan_annotation", f"no photo {path.rsplit('_', 2)[0]}{IMAGE_SUFFIX}.<ext>"))
    return ScanResult(candidates, quarantine, files, stats)


def _candidate(photo: Photo, shapes: Shapes, ann_path: str | None, extra: list[str], data_cfg: DataConfig,
               meta: DatasetMeta) -> Candidate:
    damaged = photo.state == "ko"
    zone_name, zone_area = ZONES[photo.zone]
    return Candidate(
        path=photo.path,
        source_format="labelme",
        label=dominant_label(shapes.annotations) if damaged else NO_DAMAGE_LABEL,
        group_id=f"veh_{photo.a}_{photo.b}" if data_cfg.labelme_group_by == "vehicle" else photo.path,
        has_damage=damaged,
        zone=photo.zone,
        zone_name=zone_name,
        zone_area=zone_area,
        damage_types=damage_types(shapes.annotations) if damaged else [],
        annotations=shapes.annotations,
        annotation_path=ann_path,
        extra_paths=extra,
        license=meta.license,
        synthetic=meta.synthetic,
        issues=shapes.issues,
    )
