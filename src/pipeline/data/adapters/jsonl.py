"""JSONL adapter: every `*.jsonl` file at the root, one record per line (blank lines skipped).

Record: {"path": relative image path (or "url"), "label": class, optional "region", "license",
"group", "has_damage" (default: label != no_damage), "zone" (1..10), "damage_types" (default:
[label] when damaged)}. Paths resolve against the root. A record with both "path" and "url"
takes the file and keeps the URL as its source. Each candidate's annotation_path is the JSONL
file it came from. A bad record is quarantined as `<file>:<line>` (`bad_record`).
"""
from __future__ import annotations

import json
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from pipeline.core.config import DataConfig
from pipeline.data.manifest import NO_DAMAGE_LABEL, ZONES, Candidate, QuarantineEntry
from pipeline.data.adapters.common import DatasetMeta, Limits, ScanResult, list_root, name_problem, read_meta, within

URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _optional_str(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{key!r} must be a string")


def _candidate(record: dict[str, Any], path: str, jsonl: str, meta: DatasetMeta) -> Candidate:
    """A candidate from a record whose path is checked; ValueError names a bad field."""
    label = record.get("label")
    if not isinstance(label, str) or not label:
        raise ValueError("no 'label'")
    has_damage = record.get("has_damage")
    if has_damage is None:
        has_damage = label != NO_DAMAGE_LABEL
    if not isinstance(has_damage, bool):
        raise ValueError("'has_damage' must be true or false")
    zone = record.get("zone")
    if zone is not None and (isinstance(zone, bool) or not isinstance(zone, int) or zone not in ZONES):
        raise ValueError(f"'zone' must be an integer 1..10, got {zone!r}")
    types = record.get("damage_types")
    if types is None:
        types = [label] if has_damage else []
    if not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
        raise ValueError("'damage_types' must be a list of strings")
    return Candidate(
        path=path,
        source_format="jsonl",
        label=label,
        group_id=_optional_str(record, "group") or path,
        has_damage=has_damage,
        zone=zone,
        zone_name=ZONES[zone][0] if zone else None,
        zone_area=ZONES[zone][1] if zone else None,
        damage_types=sorted(set(types)),
        annotation_path=jsonl,
        region=_optional_str(record, "region"),
        license=_optional_str(record, "license") or meta.license,
        source_url=_optional_str(record, "url"),
        synthetic=meta.synthetic,
    )


def scan_jsonl(root: Path, data_cfg: DataConfig, limits: Limits | None = None) -> ScanResult:
    """Read a JSONL-manifest dataset (see the module docstring)."""
    listing = list_root(root)
    jsonls = [r for r in listing.usable if "/" not in r and r.endswith(".jsonl")]
    if not jsonls:
        raise FileNotFoundError(f"no *.jsonl manifest at the root of {root}; is the format right?")
    meta = read_meta(root)
    root_real = Path(os.path.realpath(root))
    quarantine = list(listing.quarantine)
    known = {q.path for q in quarantine}
    candidates: dict[str, Candidate] = {}
    where_first: dict[str, str] = {}

    def reject(path: str, reason: str, detail: str) -> None:
        if path not in known:
            known.add(path)
            quarantine.append(QuarantineEntry(path, reason, detail))

    limits = limits or Limits()
    for jsonl in jsonls:
        size = (root / jsonl).stat().st_size
        if size > limits.max_annotation_bytes:
            reject(jsonl, "too_costly", f"{size} bytes > audit.max_annotation_bytes {limits.max_annotation_bytes}")
            continue
        text = (root / jsonl).read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{jsonl}:{lineno}"
            try:
                record = json.loads(line)
            except RecursionError:
                reject(where, "bad_record", "not JSON: nested too deeply")
                continue
            except ValueError as exc:
                reject(where, "bad_record", f"not JSON: {exc}")
                continue
            raw = (record.get("path") or record.get("url")) if isinstance(record, dict) else None
            if not isinstance(raw, str):
                reject(where, "bad_record", "no 'path' or 'url' string")
                continue
            if URL_RE.match(raw):
                reject(raw, "url_not_fetchable", f"{where}: runs are offline; download it under the root")
                continue
            rel = posixpath.normpath(raw)
            if raw.startswith("/") or rel == ".." or rel.startswith("../") or re.match(r"^[A-Za-z]:[\\/]", raw):
                reject(raw, "path_escape", f"{where}: outside the dataset root")
                continue
            if name_problem(raw):
                reject(where, "bad_record", f"path: {name_problem(raw)}")
                continue
            if rel in known:  # already quarantined (e.g. an escaping symlink)
                continue
            if not (root / rel).is_file():
                reject(rel, "missing_file", f"{where}: no such file")
                continue
            if not within(root_real, root / rel):
                reject(raw, "path_escape", f"{where}: resolves outside the dataset root")
                continue
            if rel in candidates:
                reject(where, "bad_record", f"second record for {rel} (first at {where_first[rel]})")
                continue
            try:
                candidates[rel] = _candidate(record, rel, jsonl, meta)
            except ValueError as exc:
                reject(where, "bad_record", str(exc))
                continue
            where_first[rel] = where

    used = {c.annotation_path for c in candidates.values()}
    for jsonl in jsonls:
        if jsonl not in used:
            reject(jsonl, "orphan_annotation", "no record of it names a usable image")
    for rel in listing.usable:
        if rel not in candidates and rel not in jsonls:
            reject(rel, "unsupported_file", "not named by any record")
    return ScanResult(sorted(candidates.values(), key=lambda c: c.path), quarantine, listing.files)
