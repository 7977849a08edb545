"""Shared pieces of the dataset adapters: file listing, metadata, geometry and the label rule."""
from __future__ import annotations

import json
import math
import os
import stat
import unicodedata
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


@dataclass(frozen=True)
class Limits:
    """Work bounds of the adapters (audit.max_annotation_bytes, audit.max_shape_points)."""

    max_annotation_bytes: int = 256 * 1024 * 1024
    max_shape_points: int = 100_000

    @classmethod
    def of(cls, audit_cfg: object | None) -> "Limits":
        if audit_cfg is None:
            return cls()
        return cls(getattr(audit_cfg, "max_annotation_bytes", cls.max_annotation_bytes),
                   getattr(audit_cfg, "max_shape_points", cls.max_shape_points))


def read_json(path: Path, limits: Limits) -> tuple[object, tuple[str, str] | None]:
    """(parsed JSON, None), or (None, (reason, detail)) for a file that is too large (`too_costly`, never
    read), not UTF-8, not JSON or nested too deeply (`malformed_annotation`)."""
    try:
        size = path.stat().st_size
        if size > limits.max_annotation_bytes:
            return None, ("too_costly", f"{size} bytes > audit.max_annotation_bytes {limits.max_annotation_bytes}")
        text = path.read_bytes().decode("utf-8")
        return json.loads(text), None
    except UnicodeDecodeError as exc:
        return None, ("malformed_annotation", f"not UTF-8: {exc.reason} at byte {exc.start}")
    except RecursionError:
        return None, ("malformed_annotation", "not JSON: nested too deeply")
    except (OSError, ValueError) as exc:
        return None, ("malformed_annotation", f"not JSON: {exc}")


def too_many_points(raw: object, limits: Limits, flat: bool = False) -> str | None:
    """Why a shape's point list is over the bound (`too_costly`), else None. `flat`: COCO's [x, y, x, y...]."""
    n = len(raw) // 2 if flat and isinstance(raw, list) else len(raw) if isinstance(raw, list) else 0
    return f"{n} points > audit.max_shape_points {limits.max_shape_points}" if n > limits.max_shape_points else None


def display_path(rel: str) -> str:
    """A path as text that can be written anywhere: bytes that are not UTF-8 (surrogate escapes) shown as \\xNN."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def name_problem(rel: str) -> str | None:
    """Why a file name is refused in any format: bytes that are not UTF-8, or control characters
    (newlines, tabs, escapes: they forge lines in logs, reports and CSVs)."""
    if display_path(rel) != rel:
        return f"the name is not UTF-8: {display_path(rel)!r}"
    bad = sorted({c for c in rel if unicodedata.category(c) == "Cc"})
    return f"control character(s) {', '.join(repr(c) for c in bad)} in the name" if bad else None


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
        if path.is_symlink() or path.stat().st_size > 1 << 20:  # a link may lead out of the root; 1 MB is plenty
            return DatasetMeta()
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
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

    A symlink (to a file or a folder) that resolves outside the root is quarantined as `path_escape`
    (never read or followed); a dangling one as `missing_file`; a symlinked folder inside the root
    (not followed) and anything that is not a regular file (a FIFO would block a reader for ever) as
    `unsupported_file`; a name with control characters or bytes that are not UTF-8 as `bad_filename`.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    root_real = Path(os.path.realpath(root))
    files, usable, quarantine = [], [], []
    for p in list_files(root):
        raw = p.relative_to(root).as_posix()
        rel = display_path(raw)
        if rel in METADATA_FILES:
            continue
        files.append(rel)
        why = name_problem(raw)
        if why:
            quarantine.append(QuarantineEntry(rel, "bad_filename", why))
            continue
        if p.is_symlink():
            if not p.exists():
                quarantine.append(QuarantineEntry(rel, "missing_file", "dangling symlink"))
                continue
            if not within(root_real, p):
                quarantine.append(QuarantineEntry(rel, "path_escape", "symlink resolves outside the dataset root"))
                continue
        try:
            mode = p.stat().st_mode
        except OSError as exc:
            quarantine.append(QuarantineEntry(rel, "missing_file", f"unreadable: {exc.strerror or type(exc).__name__}"))
            continue
        if stat.S_ISDIR(mode):
            quarantine.append(QuarantineEntry(rel, "unsupported_file", "a symlinked folder (not followed)"))
            continue
        if not stat.S_ISREG(mode):
            quarantine.append(QuarantineEntry(rel, "unsupported_file", "not a regular file (FIFO, socket or device)"))
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
