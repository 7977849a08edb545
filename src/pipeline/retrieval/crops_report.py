"""The crops phase's report.md and contact_sheet.png.

Both depend on the inputs alone (the split, the dataset, the configs and the detector's files), so
two work dirs give byte-identical artifacts: how many photos came from the per-item cache, timings
and absolute paths are returned as metrics instead (lineage and MLflow), never written here.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from pipeline.core.config import DetectConfig
from pipeline.retrieval.detect_choice import DetectorChoice


def detector_lines(choice: DetectorChoice, det_cfg: DetectConfig) -> list[str]:
    """Which detector ran and why, its files by name and sha256, and the settings its boxes depend on."""
    ident = choice.identity
    lines = [f"Detector: `{choice.backend}`. {choice.reason}."]
    files = [f"`{ident[role]['name']}` (sha256 {ident[role]['sha256'][:12]})" for role in ("weights", "config")
             if role in ident]
    if files:
        lines.append(f"Model files: {', '.join(files)}.")
    size = choice.input_px(det_cfg.imgsz)  # None: no model
    if size is not None:
        lines.append(f"Classes {', '.join(det_cfg.classes)} at confidence >= {det_cfg.conf}, input {size} px, "
                     f"margin {det_cfg.margin:.0%}; on a miss: `{det_cfg.on_miss}`.")
    return lines


def _table(title: str, header: str, rows: list[str]) -> list[str]:
    return ["", f"## {title}", "", header, "|" + "---|" + "---:|" * (header.count("|") - 2), *rows]


def crops_report(metrics: dict[str, Any], crops: list[dict], skipped: list[dict], choice: DetectorChoice,
                 det_cfg: DetectConfig, skip_reasons: dict[str, str]) -> str:
    title = "# Crops report"
    if choice.random_init:
        title += (f" (RANDOM-INITIALISED detector `{choice.file_name}`: vehicle boxes are meaningless; "
                  "tests/demo only)")
    lines = [
        title, "", *detector_lines(choice, det_cfg), "",
        (f"{metrics['n_items']} photos, {metrics['n_skipped']} skipped. **{metrics['n_crops']} crops**: "
         f"{metrics['n_damage_crops']} damage, {metrics['n_clean_crops']} clean. Vehicle found in "
         f"{metrics['n_detected']} photos (detection rate {metrics['detection_rate']:.1%})."),
    ]
    per_split = Counter((c["split"], c["crop_type"]) for c in crops)
    lines += _table("Crops per split", "| split | damage | clean |",
                    [f"| {s} | {per_split[(s, 'damage')]} | {per_split[(s, 'clean')]} |"
                     for s in sorted({c["split"] or "" for c in crops})])
    per_zone = Counter((c["zone"] if c["zone"] is not None else 99, c["zone_name"] or "-", c["crop_type"]) for c in crops)
    lines += _table("Crops per zone", "| zone | damage | clean |",
                    [f"| {f'{z} {n}' if z != 99 else n} | {per_zone[(z, n, 'damage')]} | {per_zone[(z, n, 'clean')]} |"
                     for z, n in sorted({(z, n) for z, n, _ in per_zone})])
    damage_types = Counter(t for c in crops if c["crop_type"] == "damage" for t in c["damage_types"])
    lines += _table("Damage types (crops holding them)", "| type | crops |",
                    [f"| {t} | {n} |" for t, n in sorted(damage_types.items())])
    lines += ["", "## Skipped photos", ""]
    reasons = Counter(s["reason"] for s in skipped)
    if reasons:
        lines += ["| reason | photos | meaning |", "|---|---:|---|"]
        lines += [f"| {r} | {reasons[r]} | {skip_reasons[r]} |" for r in skip_reasons if reasons[r]]
    else:
        lines.append("None.")
    lines += ["", "## Examples", "", "![contact sheet](contact_sheet.png)", ""]
    return "\n".join(lines)


def contact_sheet(out_dir: Path, crops: list[dict], path: Path, per_type: int = 8, thumb: int = 160) -> None:
    """A PNG of the first damage and clean crops (by crop_id), defect boxes drawn in red."""
    from PIL import ImageDraw, ImageFont

    picks = [c for t in ("damage", "clean") for c in [c for c in crops if c["crop_type"] == t][:per_type]]
    cols = 4
    rows = max(1, math.ceil(len(picks) / cols))
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, c in enumerate(picks):
        with Image.open(out_dir / c["crop_path"]) as im:
            im = im.convert("RGB")
        s = min(thumb / im.width, thumb / im.height)
        tile = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.BILINEAR)
        tile_draw = ImageDraw.Draw(tile)
        for d in json.loads(c["defects"]):
            x0, y0, x1, y1 = (v * s for v in d["box"])
            tile_draw.rectangle((x0, y0, x1, y1), outline=(255, 0, 0), width=2)
        x, y = (i % cols) * thumb, (i // cols) * (thumb + 14)
        sheet.paste(tile, (x, y))
        label = c["crop_type"] + (f": {','.join(c['damage_types'])}" if c["damage_types"] else "")
        draw.text((x + 2, y + thumb + 1), label[:26], fill=(0, 0, 0), font=font)
    sheet.save(path, format="PNG")
