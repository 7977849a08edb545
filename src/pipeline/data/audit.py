"""Audit phase: validate a dataset and write the manifest and the quarantine.

`run_audit` scans the dataset with its adapter, decodes every candidate image (thread pool), and
checks, in this order: decodable, not a decompression bomb, short side >= min_side, licence
allowed, not an exact duplicate (sha256 of the bytes; the first path is kept), annotations valid
against the decoded size (data/annotations.py: degenerate shapes dropped, self-intersecting rings
repaired, rings clipped to the image, those entirely outside dropped), a damaged image of a
polygon format keeps a damage region; then near duplicates (64-bit pHash within a Hamming
threshold, found with a faiss binary index in data/near_duplicates.py, connected components) are
grouped or dropped. Annotation files of a quarantined image that no accepted image uses are
quarantined with the image's reason, so every input file lands in exactly one place.

A dataset with no accepted image raises `DatasetError`: how many files were seen, the quarantine
reasons, and which format the files look like (adapters/sniff.py).

Outputs (byte-identical for identical inputs): manifest.parquet, quarantine.parquet, report.md,
class_hist.png, zone_hist.png, audit_summary.json.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.core.components import component_roots
from pipeline.core.config import AuditConfig, DataConfig
from pipeline.core.errors import DatasetError
from pipeline.core.tables import MANIFEST, QUARANTINE, write_table
from pipeline.data.adapters import POLYGON_FORMATS, Limits, damage_types, dominant_label, scan
from pipeline.data.adapters.sniff import sniff_format
from pipeline.data.annotations import check_annotations
from pipeline.data.bounded import run_bounded
from pipeline.data.images import Decoded, decode
from pipeline.data.near_duplicates import near_duplicate_pairs
from pipeline.data.manifest import (
    MANIFEST_SCHEMA,
    NO_DAMAGE_LABEL,
    REASONS,
    Annotation,
    Candidate,
    QuarantineEntry,
    annotations_to_json,
    quarantine_table,
)


@dataclass
class Item:
    """An accepted image: its candidate (fields updated by the checks) and its decode facts."""

    cand: Candidate
    dec: Decoded
    near_duplicate_of: str | None = None


# -- the phase ---------------------------------------------------------------------------------------


def _decode_all(root: Path, cands: list[Candidate], cfg: AuditConfig, progress: bool) -> list[Decoded]:
    """Decode every candidate: in bounded worker processes (`audit.isolate`: a file over
    `audit.max_seconds_per_file` or `audit.max_memory_mb` is `too_costly`, a crashing decoder a
    `decode_error`), else in threads of this process."""
    from tqdm import tqdm

    workers = cfg.workers or min(8, os.cpu_count() or 1)
    bar = tqdm(total=len(cands), desc="audit: decode", unit="img", disable=not progress, leave=False)
    with bar:
        if not cfg.isolate:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                done = []
                for d in pool.map(lambda c: decode(root / c.path, cfg.max_pixels), cands):
                    done.append(d)
                    bar.update(1)
                return done
        outcomes = run_bounded("pipeline.data.images:decode", [(str(root / c.path), cfg.max_pixels) for c in cands],
                               workers, cfg.max_seconds_per_file, cfg.max_memory_mb, on_done=lambda: bar.update(1))
    out = []
    for o in outcomes:
        if o.status == "ok":
            out.append(o.value)
        elif o.status in ("timeout", "memory"):
            bound = "audit.max_seconds_per_file" if o.status == "timeout" else "audit.max_memory_mb"
            out.append(Decoded(error=("too_costly", f"decoding {o.detail} ({bound})")))
        else:
            out.append(Decoded(error=("decode_error", f"the decoder failed: {o.detail}")))
    return out


def _apply_near_duplicates(items: list[Item], cfg: AuditConfig) -> tuple[list[Item], list[Item], int]:
    """Group or drop near duplicates: (items kept, items dropped, number of near-duplicate groups).

    Items must be sorted by path: a component's original is its first path. Policy "group": each
    near duplicate records its original, and every group a component touches merges into the
    group of the component's first path. Policy "drop": everything but the originals is dropped.
    """
    hashes = np.array([it.dec.phash for it in items], dtype=np.uint64)
    pairs = near_duplicate_pairs(hashes, cfg.near_duplicate_threshold)
    roots = component_roots(len(items), pairs).tolist()
    n_groups = len({roots[i] for i in pairs[:, 0].tolist()})
    for k, it in enumerate(items):
        if roots[k] != k:
            it.near_duplicate_of = items[roots[k]].cand.path
    if cfg.near_duplicate_policy == "drop":
        return [it for it in items if it.near_duplicate_of is None], [it for it in items if it.near_duplicate_of], n_groups
    first_of_group: dict[str | None, int] = {}
    same_group = [(first_of_group.setdefault(it.cand.group_id, k), k) for k, it in enumerate(items)]
    merged = component_roots(len(items), np.concatenate([pairs, np.array(same_group, dtype=np.int64).reshape(-1, 2)]))
    bridged = {int(merged[i]) for i in pairs[:, 0].tolist()}
    group_of_root = {r: items[r].cand.group_id for r in bridged}
    for k, it in enumerate(items):
        if int(merged[k]) in bridged:
            it.cand.group_id = group_of_root[int(merged[k])]
    return items, [], n_groups


def _manifest_table(items: list[Item]) -> pa.Table:
    """The accepted items as a MANIFEST_SCHEMA table, sorted by path."""
    rows = [
        {
            "item_id": it.dec.item_id, "path": c.path, "width": it.dec.width, "height": it.dec.height,
            "label": c.label, "group_id": c.group_id, "has_damage": c.has_damage, "zone": c.zone,
            "zone_name": c.zone_name, "zone_area": c.zone_area, "damage_types": c.damage_types,
            "annotations": annotations_to_json(c.annotations), "n_annotations": len(c.annotations),
            "region": c.region, "license": c.license, "source_format": c.source_format,
            "annotation_path": c.annotation_path, "extra_paths": c.extra_paths, "orig_mode": it.dec.orig_mode,
            "exif_rotated": it.dec.exif_rotated, "phash": f"{it.dec.phash:016x}",
            "near_duplicate_of": it.near_duplicate_of, "synthetic": c.synthetic,
        }
        for it in sorted(items, key=lambda it: it.cand.path)
        for c in [it.cand]
    ]
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def _file_problem(cand: Candidate, dec: Decoded, cfg: AuditConfig, first_path: dict[str, str]) -> tuple[str, str] | None:
    """The file-level reason to reject a decoded candidate before its annotations are checked."""
    if dec.error is not None:
        return dec.error
    if min(dec.width, dec.height) < cfg.min_side:
        return "too_small", f"{dec.width}x{dec.height}: short side < min_side {cfg.min_side}"
    if cfg.allowed_licenses is not None and cand.license is not None and cand.license not in cfg.allowed_licenses:
        return "license_rejected", f"{cand.license!r} not in allowed_licenses"
    if dec.item_id in first_path:
        return "exact_duplicate", first_path[dec.item_id]
    return None


def _relabel(cand: Candidate, anns: list[Annotation]) -> tuple[str, str] | None:
    """Keep the valid annotations and recompute label, damage_types and zone_name from them.

    In a polygon format a damaged image needs a damage polygon: returns no_valid_annotation otherwise.
    """
    n_damage = sum(a.kind == "damage" for a in cand.annotations)
    had_parts = any(a.kind == "part" for a in cand.annotations)
    cand.annotations = anns
    if cand.source_format not in POLYGON_FORMATS:
        return None
    if cand.has_damage:
        label = dominant_label(anns)
        if label is None:
            why = f"all {n_damage} damage polygons rejected" if n_damage else f"no damage polygon in {cand.annotation_path}"
            return "no_valid_annotation", why
        cand.label, cand.damage_types = label, damage_types(anns)
    if had_parts:
        cand.zone_name = dominant_label(anns, "part")
    return None


def _quarantine_orphaned_sidecars(
    items: list[Item], rejected: list[tuple[Candidate, str]], quarantine: list[QuarantineEntry]
) -> None:
    """Quarantine, with the image's reason, annotation files of rejected images that no accepted image uses."""
    used = {p for it in items for p in (it.cand.path, it.cand.annotation_path, *it.cand.extra_paths) if p}
    placed = {q.path for q in quarantine if q.level == "file"}
    for cand, reason in sorted(rejected, key=lambda r: r[0].path):
        for side in (cand.annotation_path, *cand.extra_paths):
            if side and side not in used and side not in placed:
                placed.add(side)
                quarantine.append(QuarantineEntry(side, reason, f"annotation of quarantined image {cand.path}"))


def run_audit(
    dataset_root: Path, fmt: str, data_cfg: DataConfig, cfg: AuditConfig, out_dir: Path, progress: bool = True
) -> dict[str, int]:
    """Audit the dataset at `dataset_root` (format `fmt`) into `out_dir`; returns flat numeric metrics."""
    root = Path(dataset_root)
    scanned = scan(root, fmt, data_cfg, Limits.of(cfg))
    decoded = _decode_all(root, scanned.candidates, cfg, progress)
    quarantine = list(scanned.quarantine)
    items: list[Item] = []
    rejected: list[tuple[Candidate, str]] = []
    first_path: dict[str, str] = {}
    n_clipped = n_repaired = 0
    for cand, dec in zip(scanned.candidates, decoded):
        quarantine.extend(replace(issue, item_id=dec.item_id) for issue in cand.issues)
        problem = _file_problem(cand, dec, cfg, first_path)
        if problem is None and dec.item_id is not None:
            first_path[dec.item_id] = cand.path
            checked = check_annotations(cand.annotations, dec.width, dec.height, cfg)
            n_clipped += checked.n_clipped
            n_repaired += checked.n_repaired
            quarantine.extend(QuarantineEntry(cand.path, r, d, "shape", dec.item_id) for r, d in checked.dropped)
            problem = _relabel(cand, checked.kept)
        if problem is None:
            items.append(Item(cand, dec))
        else:
            quarantine.append(QuarantineEntry(cand.path, problem[0], problem[1], "file", dec.item_id))
            rejected.append((cand, problem[0]))

    items, dropped_dups, n_dup_groups = _apply_near_duplicates(items, cfg)
    for it in dropped_dups:
        quarantine.append(QuarantineEntry(it.cand.path, "near_duplicate", it.near_duplicate_of or "", "file", it.dec.item_id))
        rejected.append((it.cand, "near_duplicate"))
    _quarantine_orphaned_sidecars(items, rejected, quarantine)

    metrics = _metrics(scanned.files, items, quarantine)
    metrics.update(
        n_candidates=len(scanned.candidates),
        n_near_duplicate_groups=n_dup_groups,
        n_near_duplicates=sum(it.near_duplicate_of is not None for it in items),
        n_polygons_clipped=n_clipped,
        n_polygons_repaired=n_repaired,
        n_shapes_ignored=scanned.stats.get("n_shapes_ignored", 0),
        n_shapes_buffered=scanned.stats.get("n_shapes_buffered", 0),
    )
    if not items:
        raise DatasetError(nothing_usable(root, fmt, data_cfg, metrics, quarantine))
    _write_outputs(Path(out_dir), fmt, cfg, items, quarantine, metrics)
    return metrics


def nothing_usable(root: Path, fmt: str, data_cfg: DataConfig, metrics: dict[str, int],
                   quarantine: list[QuarantineEntry]) -> str:
    """The one message for a dataset without a single accepted image."""
    reasons = Counter(q.reason for q in quarantine if q.level == "file")
    why = ", ".join(f"{r} x{n}" for r, n in reasons.most_common()) or "no candidate image at all"
    guess, evidence = sniff_format(root, data_cfg)
    if guess is None:
        hint = f"the files do not look like any supported format ({evidence})"
    elif guess == fmt:
        hint = f"the files do look like `{fmt}` ({evidence}), so the files themselves are the problem"
    else:
        hint = f"the files look like `{guess}`, not `{fmt}` ({evidence}): try --format {guess}"
    return (f"nothing usable in {root} as format `{fmt}`: {metrics['n_files']} files seen, "
            f"{metrics['n_candidates']} candidate images, all rejected; quarantined files by reason: {why}. {hint}.")


def _metrics(files: list[str], items: list[Item], quarantine: list[QuarantineEntry]) -> dict[str, int]:
    reasons = Counter(q.reason for q in quarantine)
    labels = Counter(it.cand.label for it in items)
    return {
        "n_files": len(files),
        "n_images_ok": len(items),
        "n_quarantined": sum(q.level == "file" for q in quarantine),
        "n_shapes_quarantined": sum(q.level == "shape" for q in quarantine),
        **{f"quarantine_{r}": reasons.get(r, 0) for r in REASONS},
        "n_classes": len(labels),
        "n_has_damage": sum(bool(it.cand.has_damage) for it in items),
        "n_no_damage": labels.get(NO_DAMAGE_LABEL, 0),
        "n_groups": len({it.cand.group_id for it in items}),
        "n_annotations": sum(len(it.cand.annotations) for it in items),
    }


# -- outputs -----------------------------------------------------------------------------------------


def _zone_key(c: Candidate) -> str:
    if c.zone is not None:
        return f"{c.zone} {c.zone_name}"
    return c.zone_name or "(none)"


def _histograms(items: list[Item]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(label, count) sorted by label, and (zone, count) sorted by zone number then name."""
    classes = sorted(Counter(str(it.cand.label) for it in items).items())
    zones = Counter((it.cand.zone if it.cand.zone is not None else 99, _zone_key(it.cand)) for it in items)
    return classes, [(name, n) for (_, name), n in sorted(zones.items())]


def _bar_png(counts: list[tuple[str, int]], title: str, path: Path) -> None:
    """A horizontal bar chart, rendered with Agg and no global pyplot state; PNG without version metadata."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 1.2 + 0.3 * max(1, len(counts))), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if counts:
        names = [n for n, _ in counts][::-1]
        values = [v for _, v in counts][::-1]
        bars = ax.barh(names, values, color="#4C72B0")
        ax.bar_label(bars, padding=2, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no images", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel("images")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})


def _report(fmt: str, cfg: AuditConfig, quarantine: list[QuarantineEntry], metrics: dict[str, int],
            classes: list[tuple[str, int]], zones: list[tuple[str, int]]) -> str:
    per_level = Counter((q.reason, q.level) for q in quarantine)
    lines = [
        "# Audit report",
        "",
        (
            f"Format `{fmt}`: {metrics['n_files']} files, {metrics['n_candidates']} candidate images, "
            f"**{metrics['n_images_ok']} accepted**, {metrics['n_quarantined']} files quarantined, "
            f"{metrics['n_shapes_quarantined']} annotations dropped."
        ),
        "",
        "## Quarantine",
        "",
    ]
    reasons = [r for r in REASONS if per_level[(r, "file")] or per_level[(r, "shape")]]
    if reasons:
        lines += ["| reason | files | shapes | meaning |", "|---|---:|---:|---|"]
        lines += [f"| {r} | {per_level[(r, 'file')]} | {per_level[(r, 'shape')]} | {REASONS[r]} |" for r in reasons]
    else:
        lines.append("Nothing quarantined.")
    lines += ["", "## Classes", "", "![class histogram](class_hist.png)", "", "| label | images |", "|---|---:|"]
    lines += [f"| {name} | {n} |" for name, n in classes]
    lines += ["", "## Zones", "", "![zone histogram](zone_hist.png)", "", "| zone | images |", "|---|---:|"]
    lines += [f"| {name} | {n} |" for name, n in zones]
    lines += [
        "",
        "## Duplicates and annotations",
        "",
        f"- exact duplicates quarantined: {metrics['quarantine_exact_duplicate']}",
        (
            f"- near-duplicate groups (pHash distance <= {cfg.near_duplicate_threshold}, policy "
            f"`{cfg.near_duplicate_policy}`): {metrics['n_near_duplicate_groups']}; near duplicates kept: "
            f"{metrics['n_near_duplicates']}, dropped: {metrics['quarantine_near_duplicate']}"
        ),
        (
            f"- annotations kept: {metrics['n_annotations']}; polygons clipped to the image: "
            f"{metrics['n_polygons_clipped']}; self-intersecting rings repaired: {metrics['n_polygons_repaired']}; "
            f"lines/points buffered to regions: {metrics['n_shapes_buffered']}; label-9 shapes ignored: "
            f"{metrics['n_shapes_ignored']}"
        ),
        f"- groups: {metrics['n_groups']}",
        "",
    ]
    return "\n".join(lines)


def _write_outputs(out_dir: Path, fmt: str, cfg: AuditConfig, items: list[Item],
                   quarantine: list[QuarantineEntry], metrics: dict[str, int]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(_manifest_table(items), out_dir / MANIFEST)
    write_table(quarantine_table(quarantine), out_dir / QUARANTINE)
    classes, zones = _histograms(items)
    _bar_png(classes, "Images per class", out_dir / "class_hist.png")
    _bar_png(zones, "Images per zone", out_dir / "zone_hist.png")
    (out_dir / "report.md").write_text(_report(fmt, cfg, quarantine, metrics, classes, zones), encoding="utf-8")
    (out_dir / "audit_summary.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
