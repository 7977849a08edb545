"""Dataset adapters: turn a dataset folder of one format into candidates and quarantine rows.

`scan(root, fmt, data_cfg, limits)` is the entry point. Every file under the root (hidden files and
root-level METADATA_FILES aside) is listed in `files` and ends up in exactly one place: a
candidate (its path, annotation_path or extra_paths) or a file-level quarantine entry. All paths
are posix, relative to the root, and the lists are sorted by path.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.core.config import DataConfig
from pipeline.data.adapters.coco import scan_coco
from pipeline.data.adapters.common import METADATA_FILES, Limits, ScanResult, damage_types, dominant_label, polygon_area
from pipeline.data.adapters.folders import scan_folders
from pipeline.data.adapters.jsonl import scan_jsonl
from pipeline.data.adapters.labelme import scan_labelme

ADAPTERS: dict[str, Callable[[Path, DataConfig, Limits], ScanResult]] = {
    "labelme": scan_labelme,
    "coco": scan_coco,
    "jsonl": scan_jsonl,
    "folders": scan_folders,
}
# Formats whose labels come from polygons: a damaged image there needs a valid damage polygon.
POLYGON_FORMATS = frozenset({"labelme", "coco"})

__all__ = ["ADAPTERS", "METADATA_FILES", "POLYGON_FORMATS", "Limits", "ScanResult", "damage_types", "dominant_label",
           "polygon_area", "scan"]


def scan(root: Path, fmt: str, data_cfg: DataConfig, limits: Limits | None = None) -> ScanResult:
    """Read the dataset at `root` in format `fmt` within `limits` (annotation size, shape points);
    quarantine entries come sorted by path."""
    if fmt not in ADAPTERS:
        raise ValueError(f"unknown dataset format {fmt!r}; valid formats: {', '.join(sorted(ADAPTERS))}")
    result = ADAPTERS[fmt](Path(root), data_cfg, limits or Limits())
    result.candidates.sort(key=lambda c: c.path)
    result.quarantine.sort(key=lambda q: (q.path, q.level, q.reason, q.detail))
    return result
