"""Shared pieces of the dataset adapters: file listing, metadata, geometry and the label rule."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.config import DataConfig
from pipeline.core.geometry import polygon_area
from pipeline.data.dataset import list_files
from pipeline.data.manifest import DAMAGE_TYPES, AdapterResult, Annotation, QuarantineEntry

# Dataset-level files at the root that describe the dataset rather than belong to an item.
# They are not listed in `AdapterResult.files` and never quarantined.
METADATA_FILES = frozenset({"README.md", "README.txt", "dataset.json", "LICENSE"})

_DAMAGE_CODE = {name: code for code, name in DAMAGE_TYPES.items()}


@dataclass
class ScanResult(AdapterResult):
    """An `AdapterResult` with counters that are not quarantine rows (e.g. ignored label-9 shapes)."""

    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class DatasetMeta:
    """Defaults from the root `dataset.json`: {"synthetic": bool, "license": str}."""

    synthetic: bool = False
    license: str | None = None


@dataclass
class Listing:
    """The files under a root, with symlinks that escape the root or dangle already quarantined."""

    files: list[str]  # every considered file (root-level METADATA_FILES excluded)
    usable: list[str]  # files the adapter may read: `files` minus the quarantined ones
    quarantine: list[QuarantineEntry]


def read_meta(root: Path) -> DatasetMeta:
    """Read `root/dataset.json` when present; an unreadable one gives the defaults."""
    path = root / "dataset.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return DatasetMeta()
    if not isinstance(data, dict):
        return DatasetMeta()
    lic = data.get("license")
    return DatasetMeta(synthetic=data.get("synthetic") is True, license=str(lic) if lic else None)


def within(root_real: Path, path: Path) -> bool:
    """Whether `path`, with every symlink resolved, lies inside the (resolved) root."""
    try:
        Path(os.path.realpath(path)).relative_to(root_real)
    except ValueError:
        return False
    return True


def list_root(root: Path) -> Listing:
    """List files under root (sorted posix paths, hidden ones skipped, as the dataset snapshot does).

    A symlink that resolves outside the root is quarantined as `path_escape` (never read); a
    dangling one as `missing_file`.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    root_real = Path(os.path.realpath(root))
    files, usable, quarantine = [], [], []
    for p in list_files(root):
        rel = p.relative_to(root).as_posix()
        if rel in METADATA_FILES:
            continue
        files.append(rel)
        if p.is_symlink():
            if not p.exists():
                quarantine.append(QuarantineEntry(rel, "missing_file", "dangling symlink"))
                continue
            if not within(root_real, p):
                quarantine.append(QuarantineEntry(rel, "path_escape", "symlink resolves outside the dataset root"))
                continue
        usable.append(rel)
    return Listing(files, usable, quarantine)


def is_image(name: str, data_cfg: DataConfig) -> bool:
    """Whether the file name has one of `data.image_extensions` (case-insensitive)."""
    suffix = os.path.splitext(name)[1].lower()
    return suffix in {e.lower() for e in data_cfg.image_extensions}


def parse_points(raw: Any) -> list[list[float]] | None:
    """[[x, y], ...] as floats, or None when `raw` is not a list of finite numeric pairs."""
    if not isinstance(raw, list):
        return None
    points = []
    for pt in raw:
        if not (isinstance(pt, (list, tuple)) and len(pt) == 2):
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pt):
            return None
        x, y = float(pt[0]), float(pt[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            return None
        points.append([x, y])
    return points


def dominant_label(annotations: list[Annotation], kind: str = "damage") -> str | None:
    """The label of `kind` with the largest total polygon area.

    Ties go to the lowest damage code (labels outside DAMAGE_TYPES after those, by name).
    None when there is no annotation of that kind.
    """
    totals: dict[str, float] = {}
    for ann in annotations:
        if ann.kind == kind:
            totals[ann.label] = totals.get(ann.label, 0.0) + polygon_area(ann.points)
    if not totals:
        return None
    return min(totals, key=lambda lab: (-totals[lab], _DAMAGE_CODE.get(lab, len(_DAMAGE_CODE) + 1), lab))


def damage_types(annotations: list[Annotation]) -> list[str]:
    """Sorted unique labels of the damage annotations."""
    return sorted({a.label for a in annotations if a.kind == "damage"})
