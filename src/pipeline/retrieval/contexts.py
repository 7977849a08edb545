"""Contexts phase: a deterministic English description of every crop, for text embeddings and search.

`context_for(crop_row, image_size)` names the part a crop shows and summarises its damage:

- part: the crop's COCO part when the crops phase found one; else, for a zone 1..10, ZONE_PARTS of
  the zone at the crop centre's cell of a 3x3 grid over the photo (rows top/middle/bottom, columns
  left/centre/right); else the photo's zone_name; else GENERIC_PARTS at that cell.
- pattern, from the defect box centres in crop pixels: 'single' (one defect), 'clustered' (mean
  pairwise centre distance <= CLUSTERED_MAX_DISTANCE x the crop diagonal) or 'distributed'; a
  damage crop without located defects (image-level labels) is 'unlocated', a clean crop 'none'.
- text, from TEMPLATES (the only place wording lives), e.g. "Damage on the hood centre panel
  (hood_center, frontal area): 2 dents (a dent is ...), 1 surface scratch (...); clustered pattern."

`run_contexts(crops_dir, out_dir)` reads crops.parquet and writes contexts.parquet
(CONTEXTS_SCHEMA, sorted by crop_id) and report.md.
"""
from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.tables import CONTEXTS, write_table
from pipeline.data.manifest import DAMAGE_TYPES, ZONES

TEMPLATES: dict[str, Any] = {
    "damaged": "Damage on the {part}{location}: {summary}; {pattern}.",
    "damaged_unlocated": "Damage on the {part}{location}: {types}, not localised within the crop.",
    "clean": "Clean surface on the {part}{location}, no visible damage.",
    "location": " ({zone_name}, {area})",
    "location_name": " (in a photo mainly of the {zone_name})",
    "count": "{count} {noun} ({article} {singular} is {description})",
    "areas": {
        "frontal": "frontal area",
        "posterior": "rear area",
        "lateral_left": "left side",
        "lateral_right": "right side",
    },
    "patterns": {
        "single": "a single defect",
        "clustered": "clustered pattern",
        "distributed": "distributed pattern",
    },
    "unknown_damage": "damage of an unspecified type",
}

CLUSTERED_MAX_DISTANCE = 0.3  # mean pairwise defect-centre distance / crop diagonal at most this: clustered
ROWS = ("top", "middle", "bottom")
COLS = ("left", "centre", "right")

# (singular, plural) per damage type; other labels are made readable and pluralised by rule.
DAMAGE_NOUNS: dict[str, tuple[str, str]] = {
    "surface_scratch": ("surface scratch", "surface scratches"),
    "dent": ("dent", "dents"),
    "paint_peeling": ("area of peeling paint", "areas of peeling paint"),
    "deep_scratch": ("deep scratch", "deep scratches"),
    "crack": ("crack", "cracks"),
    "missing_part": ("missing part", "missing parts"),
    "missing_accessory": ("missing accessory", "missing accessories"),
    "misaligned_part": ("misaligned part", "misaligned parts"),
    "damage": ("damaged area", "damaged areas"),  # COCO car-damage's single damage class
}

DAMAGE_DESCRIPTIONS: dict[str, str] = {
    "surface_scratch": "a light mark in the clear coat or paint that does not reach the primer",
    "dent": "a hollow pressed into the panel, usually with the paint intact",
    "paint_peeling": "paint lifting or flaking off the panel",
    "deep_scratch": "a scratch through the paint down to the primer or bare metal",
    "crack": "a fracture in a panel, bumper, lamp or glass",
    "missing_part": "a body part that has come off or been torn away",
    "missing_accessory": "an accessory such as a mirror cap, trim strip or badge that is absent",
    "misaligned_part": "a panel or part pushed out of its normal position, with uneven gaps",
    "damage": "a region of the body with damage of an unspecified kind",
}


def _grid(rows: tuple[tuple[str, str, str], ...], side: str | None = None) -> dict[tuple[str, str], str]:
    """A 3x3 part grid keyed (row, col); with `side`, '{side}' is filled in and, for 'right', the
    columns are mirrored (the front of the car is on the other side of the photo)."""
    if side == "right":
        rows = tuple(tuple(reversed(r)) for r in rows)  # type: ignore[misc]
    return {(ROWS[i], COLS[j]): name.format(side=side or "") for i, row in enumerate(rows) for j, name in enumerate(row)}


# Photos of a left-side zone show the car's front to the left; right-side zones are mirrored.
_FENDER = (
    ("fender edge by the headlamp", "upper front {side} fender by the hood line", "fender top by the A-pillar"),
    ("fender front by the bumper", "front {side} fender panel", "fender rear edge by the front door"),
    ("front bumper corner", "front {side} wheel arch", "fender base by the rocker"),
)
_QUARTER = (
    ("C-pillar base", "upper rear {side} quarter panel", "{side} tail lamp corner"),
    ("quarter panel edge by the rear door", "rear {side} quarter panel", "rear corner by the bumper"),
    ("{side} rocker end", "rear {side} wheel arch", "rear bumper corner"),
)
_DOOR = (
    ("front window frame", "window frame", "rear window frame"),
    ("front door edge", "door panel", "rear door edge"),
    ("front door sill", "door sill edge", "rear door sill"),
)
_ROCKER = (
    ("lower front door", "lower door panel", "lower rear door"),
    ("rocker front end by the front wheel", "{side} rocker panel", "rocker rear end by the rear wheel"),
    ("sill behind the front wheel", "rocker underside", "sill ahead of the rear wheel"),
)

ZONE_PARTS: dict[int, dict[tuple[str, str], str]] = {
    1: _grid(_FENDER, "left"),
    2: _grid((
        ("left hood corner", "hood leading edge", "right hood corner"),
        ("hood left side", "hood centre panel", "hood right side"),
        ("left windshield base corner", "windshield base", "right windshield base corner"),
    )),
    3: _grid(_FENDER, "right"),
    4: _grid(_QUARTER, "left"),
    5: _grid((
        ("left tail lamp", "trunk lid edge", "right tail lamp"),
        ("rear bumper left corner", "rear bumper centre by the licence plate", "rear bumper right corner"),
        ("lower rear bumper, left", "lower rear bumper lip", "lower rear bumper, right"),
    )),
    6: _grid(_QUARTER, "right"),
    7: _grid(_DOOR, "left"),
    8: _grid(_ROCKER, "left"),
    9: _grid(_DOOR, "right"),
    10: _grid(_ROCKER, "right"),
}
GENERIC_PARTS: dict[tuple[str, str], str] = _grid((
    ("upper left of the body", "upper body", "upper right of the body"),
    ("left of the body", "body panel", "right of the body"),
    ("lower left of the body", "lower body", "lower right of the body"),
))

CONTEXTS_SCHEMA = pa.schema(
    [("crop_id", pa.string()), ("part", pa.string()), ("pattern", pa.string()), ("text", pa.string()), ("n_words", pa.int32())]
)


def readable(label: str) -> str:
    return label.replace("_", " ").strip()


def plural(noun: str) -> str:
    """English plural of a (last) word by rule: -s/-x/-z/-ch/-sh -> es, consonant + y -> ies, else s."""
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def damage_noun(label: str, count: int) -> str:
    singular, plural_form = DAMAGE_NOUNS.get(label, (readable(label), plural(readable(label))))
    return singular if count == 1 else plural_form


def position(crop_row: dict[str, Any], image_size: tuple[int, int]) -> tuple[str, str]:
    """(row, col) of the 3x3 cell of the photo that holds the crop's centre."""
    w, h = image_size
    cx, cy = (crop_row["x0"] + crop_row["x1"]) / 2, (crop_row["y0"] + crop_row["y1"]) / 2
    return ROWS[min(2, max(0, int(3 * cy / h)))], COLS[min(2, max(0, int(3 * cx / w)))]


def infer_part(crop_row: dict[str, Any], image_size: tuple[int, int]) -> tuple[str, str]:
    """(part, source): the annotated part, the zone's part at the crop position, the zone name, or generic."""
    if crop_row.get("part"):
        return readable(crop_row["part"]), "annotation"
    cell = position(crop_row, image_size)
    zone = crop_row.get("zone")
    if zone in ZONE_PARTS:
        return ZONE_PARTS[zone][cell], "zone_position"
    if crop_row.get("zone_name"):
        return readable(crop_row["zone_name"]), "zone_name"
    return GENERIC_PARTS[cell], "position"


def defect_pattern(defects: list[dict[str, Any]], crop_size: tuple[int, int]) -> str:
    """'single', 'clustered' or 'distributed' from defect box centres (see CLUSTERED_MAX_DISTANCE)."""
    if len(defects) <= 1:
        return "single"
    centres = [((d["box"][0] + d["box"][2]) / 2, (d["box"][1] + d["box"][3]) / 2) for d in defects]
    mean = sum(math.dist(a, b) for a, b in itertools.combinations(centres, 2)) / math.comb(len(centres), 2)
    return "clustered" if mean <= CLUSTERED_MAX_DISTANCE * math.hypot(*crop_size) else "distributed"


def _type_order(label: str, count: int) -> tuple[int, int, str]:
    codes = {name: code for code, name in DAMAGE_TYPES.items()}
    return (-count, codes.get(label, len(codes) + 1), label)


def _summary(counts: dict[str, int]) -> str:
    parts = []
    for label in sorted(counts, key=lambda t: _type_order(t, counts[t])):
        singular = damage_noun(label, 1)
        parts.append(TEMPLATES["count"].format(
            count=counts[label], noun=damage_noun(label, counts[label]), singular=singular,
            article="an" if singular[0] in "aeiou" else "a",
            description=DAMAGE_DESCRIPTIONS.get(label, TEMPLATES["unknown_damage"]),
        ))
    return ", ".join(parts)


def _location(zone_name: str | None, zone_area: str | None, part: str) -> str:
    if not zone_name or readable(zone_name) == part:
        return ""
    if zone_area:
        area = TEMPLATES["areas"].get(zone_area, f"{readable(zone_area)} area")
        return TEMPLATES["location"].format(zone_name=zone_name, area=area)
    return TEMPLATES["location_name"].format(zone_name=readable(zone_name))


def context_for(crop_row: dict[str, Any], image_size: tuple[int, int]) -> dict[str, Any]:
    """The context of one crop (a CROPS_SCHEMA row) of a photo of `image_size` (width, height)."""
    part, part_source = infer_part(crop_row, image_size)
    zone = crop_row.get("zone")
    zone_name, zone_area = crop_row.get("zone_name"), crop_row.get("zone_area")
    if zone in ZONES:
        zone_name, zone_area = zone_name or ZONES[zone][0], zone_area or ZONES[zone][1]
    location = _location(zone_name, zone_area, part)
    defects = json.loads(crop_row.get("defects") or "[]")
    counts = dict(sorted(Counter(d["type"] for d in defects).items()))
    if crop_row["crop_type"] == "clean":
        pattern, text = "none", TEMPLATES["clean"].format(part=part, location=location)
    elif defects:
        pattern = defect_pattern(defects, (crop_row["width"], crop_row["height"]))
        text = TEMPLATES["damaged"].format(
            part=part, location=location, summary=_summary(counts), pattern=TEMPLATES["patterns"][pattern]
        )
    else:
        pattern = "unlocated"
        types = ", ".join(readable(t) for t in crop_row.get("damage_types") or []) or TEMPLATES["unknown_damage"]
        text = TEMPLATES["damaged_unlocated"].format(part=part, location=location, types=types)
    return {
        "zone": zone, "zone_name": zone_name, "zone_area": zone_area,
        "part": part, "part_source": part_source, "position": " ".join(position(crop_row, image_size)),
        "damage_summary": counts, "n_defects": len(defects), "pattern": pattern,
        "text": text, "n_words": len(text.split()),
    }


def run_contexts(crops_dir: Path, out_dir: Path) -> dict[str, float]:
    """Contexts of every crop in crops_dir/crops.parquet: contexts.parquet and report.md in out_dir."""
    crops = pq.read_table(Path(crops_dir) / "crops.parquet").to_pylist()
    rows = []
    for c in sorted(crops, key=lambda c: c["crop_id"]):
        ctx = context_for(c, (c["source_width"], c["source_height"]))
        rows.append({"crop_id": c["crop_id"], "part": ctx["part"], "pattern": ctx["pattern"], "text": ctx["text"],
                     "n_words": ctx["n_words"], "crop_type": c["crop_type"]})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{k: r[k] for k in CONTEXTS_SCHEMA.names} for r in rows], schema=CONTEXTS_SCHEMA)
    write_table(table, out_dir / CONTEXTS)
    patterns = Counter(r["pattern"] for r in rows)
    words = [r["n_words"] for r in rows]
    metrics: dict[str, float] = {
        "n_contexts": len(rows),
        "n_damage": sum(r["crop_type"] == "damage" for r in rows),
        "n_clean": sum(r["crop_type"] == "clean" for r in rows),
        "n_parts": len({r["part"] for r in rows}),
        "n_words_mean": sum(words) / len(words) if words else 0.0,
        "n_words_max": max(words, default=0),
    }
    metrics.update({f"n_pattern_{p}": patterns[p] for p in ("single", "clustered", "distributed", "unlocated", "none")})
    (out_dir / "report.md").write_text(_report(rows, metrics), encoding="utf-8")
    return metrics


def _report(rows: list[dict[str, Any]], metrics: dict[str, float], per_type: int = 5) -> str:
    lines = [
        "# Contexts report", "",
        (f"{metrics['n_contexts']} crops described ({metrics['n_damage']} damage, {metrics['n_clean']} clean), "
         f"{metrics['n_parts']} distinct parts, {metrics['n_words_mean']:.1f} words on average "
         f"(max {metrics['n_words_max']})."),
        "", "## Patterns", "",
        f"Clustered: mean pairwise defect-centre distance <= {CLUSTERED_MAX_DISTANCE} x the crop diagonal.", "",
        "| pattern | crops |", "|---|---:|",
    ]
    lines += [f"| {p} | {int(metrics[f'n_pattern_{p}'])} |" for p in ("single", "clustered", "distributed", "unlocated", "none")]
    lines += ["", "## Parts (most frequent)", "", "| part | crops |", "|---|---:|"]
    lines += [f"| {p} | {n} |" for p, n in sorted(Counter(r["part"] for r in rows).items(), key=lambda x: (-x[1], x[0]))[:20]]
    for kind in ("damage", "clean"):
        lines += ["", f"## Examples: {kind}", ""]
        lines += [f"- `{r['crop_id'][:12]}` {r['text']}" for r in rows if r["crop_type"] == kind][:per_type] or ["None."]
    lines.append("")
    return "\n".join(lines)
