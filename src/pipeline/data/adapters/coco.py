"""COCO adapter: one or more annotation files (ANNOTATION_NAMES, found at any depth) with their images.

`file_name`s resolve against the annotation file's folder. Categories of supercategory "damage"
(or with "damage" in the name) are damage, the others car parts. Per image: has_damage = any
damage polygon; label = the damage category of largest total area, else `no_damage` (an image
listed with no damage polygon is a negative, as in COCO); zone_name = the part of largest area;
group_id = the image path. A non-polygon segmentation (RLE) falls back to its bbox rectangle.
Images under the root that no annotation file lists are quarantined as `missing_annotation`.
"""
from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Any

from pipeline.core.config import DataConfig
from pipeline.data.manifest import NO_DAMAGE_LABEL, Annotation, Candidate, QuarantineEntry
from pipeline.data.adapters.common import (DatasetMeta, Limits, ScanResult, damage_types, dominant_label, is_image, list_root,
                                           parse_points, read_json, read_meta, too_many_points, within)

ANNOTATION_NAMES = ("annotations.json", "_annotations.coco.json")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")  # a Windows drive path: outside any dataset root


def _polygons(ann: dict[str, Any]) -> list[list[list[float]]] | None:
    """The polygons of one COCO annotation (segmentation, else the bbox), or None if unreadable."""
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg:
        polys = []
        for flat in seg:
            if not isinstance(flat, list) or len(flat) % 2:
                return None
            points = parse_points([flat[i : i + 2] for i in range(0, len(flat), 2)])
            if points is None:
                return None
            polys.append(points)
        return polys
    bbox = ann.get("bbox")
    box = parse_points([bbox[:2], bbox[2:]]) if isinstance(bbox, list) and len(bbox) == 4 else None
    if box is None:
        return None
    (x, y), (w, h) = box
    return [[[x, y], [x + w, y], [x + w, y + h], [x, y + h]]]


def _key(value: Any) -> int | str | None:
    """A COCO id usable as a dict key (int or str), else None."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


class _CocoReader:
    """Reads annotation files one by one, collecting candidates and quarantine rows."""

    def __init__(self, root: Path, meta: DatasetMeta, skip: set[str], limits: Limits | None = None):
        self.root = root
        self.limits = limits or Limits()
        self.root_real = Path(os.path.realpath(root))
        self.meta = meta
        self.skip = skip  # paths already quarantined by the listing
        self.candidates: dict[str, Candidate] = {}
        self.quarantine: list[QuarantineEntry] = []

    def read(self, ann_rel: str) -> None:
        """Add the images of one annotation file; quarantine the file if it is malformed or yields nothing."""
        doc, problem = read_json(self.root / ann_rel, self.limits)
        if problem is not None:
            self.quarantine.append(QuarantineEntry(ann_rel, *problem))
            return
        if not (isinstance(doc, dict) and isinstance(doc.get("images"), list) and isinstance(doc.get("annotations"), list)):
            self.quarantine.append(QuarantineEntry(ann_rel, "malformed_annotation", "expected COCO 'images' and 'annotations' lists"))
            return
        categories: dict[Any, tuple[str, str]] = {}
        for c in doc.get("categories") or []:
            if isinstance(c, dict) and _key(c.get("id")) is not None:
                name = str(c.get("name"))
                damage = c.get("supercategory") == "damage" or "damage" in name.lower()
                categories[c["id"]] = (name, "damage" if damage else "part")
        licenses = {
            lic["id"]: str(lic["name"])
            for lic in doc.get("licenses") or []
            if isinstance(lic, dict) and _key(lic.get("id")) is not None and lic.get("name")
        }
        by_id, listed_ids = self._images(ann_rel, doc["images"], licenses)
        for j, ann in enumerate(doc["annotations"]):
            if not isinstance(ann, dict) or _key(ann.get("image_id")) not in listed_ids:
                self.quarantine.append(QuarantineEntry(f"{ann_rel}:annotations[{j}]", "bad_record", "no image with this image_id"))
                continue
            if ann["image_id"] not in by_id:  # its image is quarantined already
                continue
            cand = by_id[ann["image_id"]]
            where = f"{ann_rel} annotation {ann.get('id', j)}"
            cat = categories.get(_key(ann.get("category_id")))
            seg = ann.get("segmentation")
            costly = max((too_many_points(f, self.limits, flat=True) or "" for f in seg), key=len, default="") \
                if isinstance(seg, list) else ""
            polys = None if costly else _polygons(ann)
            if costly:
                cand.issues.append(QuarantineEntry(cand.path, "too_costly", f"{where}: {costly}", "shape"))
            elif cat is None:
                cand.issues.append(QuarantineEntry(cand.path, "unknown_label", f"{where}: category_id {ann.get('category_id')!r}", "shape"))
            elif polys is None:
                cand.issues.append(QuarantineEntry(cand.path, "malformed_annotation", f"{where}: unreadable segmentation", "shape"))
            else:
                cand.annotations.extend(Annotation(cat[0], points, cat[1]) for points in polys)
        for cand in by_id.values():
            cand.has_damage = any(a.kind == "damage" for a in cand.annotations)
            cand.label = dominant_label(cand.annotations) or NO_DAMAGE_LABEL
            cand.damage_types = damage_types(cand.annotations)
            cand.zone_name = dominant_label(cand.annotations, "part")
            self.candidates[cand.path] = cand
        if not by_id:
            self.quarantine.append(QuarantineEntry(ann_rel, "orphan_annotation", "none of its images exists"))

    def _images(
        self, ann_rel: str, images: list[Any], licenses: dict[Any, str]
    ) -> tuple[dict[Any, Candidate], set[Any]]:
        """Candidates of the usable image records by image id, and every listed id; quarantine the rest."""
        folder = posixpath.dirname(ann_rel)
        by_id: dict[Any, Candidate] = {}
        listed_ids: set[Any] = set()
        paths: set[str] = set()
        for i, img in enumerate(images):
            name = img.get("file_name") if isinstance(img, dict) else None
            if not isinstance(name, str) or not name or _key(img.get("id")) is None:
                self.quarantine.append(QuarantineEntry(f"{ann_rel}:images[{i}]", "bad_record", "image record without id or file_name"))
                continue
            listed_ids.add(img["id"])
            rel = posixpath.normpath(posixpath.join(folder, name))
            if rel in self.skip:
                continue
            if name.startswith(("/", "\\")) or rel == ".." or rel.startswith("../") or _DRIVE.match(name):
                self.quarantine.append(QuarantineEntry(name, "path_escape", f"file_name in {ann_rel}"))
            elif not (self.root / rel).is_file():
                self.quarantine.append(QuarantineEntry(rel, "missing_file", f"listed in {ann_rel}"))
            elif not within(self.root_real, self.root / rel):
                self.quarantine.append(QuarantineEntry(rel, "path_escape", f"listed in {ann_rel}; resolves outside the root"))
            elif rel in self.candidates or rel in paths:
                self.quarantine.append(QuarantineEntry(f"{ann_rel}:images[{i}]", "bad_record", f"{rel} is listed twice"))
            else:
                paths.add(rel)
                by_id[img["id"]] = Candidate(
                    path=rel,
                    source_format="coco",
                    group_id=rel,
                    annotation_path=ann_rel,
                    license=licenses.get(_key(img.get("license")), self.meta.license),
                    synthetic=self.meta.synthetic,
                )
        return by_id, listed_ids


def scan_coco(root: Path, data_cfg: DataConfig, limits: Limits | None = None) -> ScanResult:
    """Read a COCO dataset (see the module docstring)."""
    listing = list_root(root)
    ann_files = [r for r in listing.usable if posixpath.basename(r) in ANNOTATION_NAMES]
    if not ann_files:
        raise FileNotFoundError(f"no COCO annotation file ({' or '.join(ANNOTATION_NAMES)}) under {root}; is the format right?")
    reader = _CocoReader(root, read_meta(root), {q.path for q in listing.quarantine}, limits)
    for ann_rel in ann_files:
        reader.read(ann_rel)
    quarantine = listing.quarantine + reader.quarantine
    taken = set(reader.candidates) | set(ann_files) | {q.path for q in quarantine}
    for rel in listing.usable:
        if rel in taken:
            continue
        if is_image(rel, data_cfg):
            quarantine.append(QuarantineEntry(rel, "missing_annotation", "unlabeled image (not in any annotations.json)"))
        else:
            quarantine.append(QuarantineEntry(rel, "unsupported_file", "neither an image nor a COCO annotation file"))
    return ScanResult(sorted(reader.candidates.values(), key=lambda c: c.path), quarantine, listing.files)
