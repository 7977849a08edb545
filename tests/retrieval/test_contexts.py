"""Contexts: part inference per zone and position, damage patterns, plural forms, the phase."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.retrieval.contexts import (
    COLS,
    CONTEXTS_SCHEMA,
    DAMAGE_DESCRIPTIONS,
    GENERIC_PARTS,
    ROWS,
    ZONE_PARTS,
    context_for,
    damage_noun,
    defect_pattern,
    plural,
    run_contexts,
)
from pipeline.retrieval.crops import CROPS_SCHEMA
from pipeline.data.manifest import DAMAGE_TYPES, ZONES

SIZE = (900, 600)


def _defect(x0, y0, x1, y1, kind="dent") -> dict:
    return {"type": kind, "box": [x0, y0, x1, y1], "area_px": (x1 - x0) * (y1 - y0)}


def _crop(crop_type="damage", zone=2, defects=(), box=(300, 200, 600, 400), part=None, **extra) -> dict:
    row = {
        "crop_id": "c" * 64, "crop_type": crop_type, "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3],
        "width": 200, "height": 200, "source_width": SIZE[0], "source_height": SIZE[1],
        "zone": zone, "zone_name": ZONES[zone][0] if zone else None, "zone_area": ZONES[zone][1] if zone else None,
        "part": part, "has_damage": crop_type == "damage", "damage_types": sorted({d["type"] for d in defects}),
        "defects": json.dumps(list(defects)), "n_defects": len(defects),
    }
    row.update(extra)
    return row


def test_every_zone_has_a_part_for_every_cell():
    assert set(ZONE_PARTS) == set(ZONES)
    for parts in [*ZONE_PARTS.values(), GENERIC_PARTS]:
        assert set(parts) == {(r, c) for r in ROWS for c in COLS}
        assert len(set(parts.values())) == 9 and all(p and "{" not in p for p in parts.values())
    assert ZONE_PARTS[2][("top", "centre")] == "hood leading edge"
    assert ZONE_PARTS[2][("middle", "centre")] == "hood centre panel"
    assert ZONE_PARTS[2][("bottom", "centre")] == "windshield base"
    assert ZONE_PARTS[7][("top", "centre")] == "window frame"
    assert ZONE_PARTS[7][("middle", "centre")] == "door panel"
    assert ZONE_PARTS[7][("bottom", "centre")] == "door sill edge"
    assert (ZONE_PARTS[7][("middle", "left")], ZONE_PARTS[7][("middle", "right")]) == ("front door edge", "rear door edge")
    # the passenger side is the mirror image: its front is on the right of the photo
    assert (ZONE_PARTS[9][("middle", "left")], ZONE_PARTS[9][("middle", "right")]) == ("rear door edge", "front door edge")
    assert ZONE_PARTS[1][("middle", "centre")] == "front left fender panel"
    assert ZONE_PARTS[3][("middle", "centre")] == "front right fender panel"


@pytest.mark.parametrize("zone", sorted(ZONES))
def test_texts_for_every_zone_clean_and_damaged_are_deterministic(zone):
    name, area = ZONES[zone]
    clean = context_for(_crop("clean", zone), SIZE)
    assert clean == context_for(_crop("clean", zone), SIZE)
    part = ZONE_PARTS[zone][("middle", "centre")]
    assert clean["part"] == part and clean["pattern"] == "none" and clean["position"] == "middle centre"
    area_text = {"frontal": "frontal area", "posterior": "rear area", "lateral_left": "left side",
                 "lateral_right": "right side"}[area]
    assert clean["text"] == f"Clean surface on the {part} ({name}, {area_text}), no visible damage."

    damaged = context_for(_crop("damage", zone, [_defect(10, 10, 30, 30), _defect(40, 40, 60, 60)]), SIZE)
    assert damaged == context_for(_crop("damage", zone, [_defect(10, 10, 30, 30), _defect(40, 40, 60, 60)]), SIZE)
    assert damaged["text"].startswith(f"Damage on the {part} ({name}, {area_text}): 2 dents (a dent is ")
    assert damaged["text"].endswith("; clustered pattern.") and damaged["damage_summary"] == {"dent": 2}
    assert damaged["n_words"] == len(damaged["text"].split())


def test_the_example_text_of_the_hood():
    ctx = context_for(_crop("damage", 2, [_defect(10, 10, 30, 30), _defect(40, 40, 60, 60),
                                          _defect(20, 50, 40, 70, "surface_scratch")]), SIZE)
    assert ctx["text"] == (
        "Damage on the hood centre panel (hood_center, frontal area): 2 dents (a dent is "
        f"{DAMAGE_DESCRIPTIONS['dent']}), 1 surface scratch (a surface scratch is "
        f"{DAMAGE_DESCRIPTIONS['surface_scratch']}); clustered pattern."
    )


def test_the_part_follows_the_crop_position_in_the_photo():
    assert context_for(_crop("clean", 7, box=(0, 0, 100, 100)), SIZE)["part"] == "front window frame"
    assert context_for(_crop("clean", 7, box=(800, 500, 900, 600)), SIZE)["part"] == "rear door sill"
    assert context_for(_crop("clean", 7, box=(0, 250, 150, 350)), SIZE)["part"] == "front door edge"


def test_part_sources_annotation_then_zone_then_zone_name_then_position():
    coco = context_for(_crop("clean", None, part="front_bumper", zone_name="door"), SIZE)
    assert (coco["part"], coco["part_source"]) == ("front bumper", "annotation")
    assert coco["text"] == "Clean surface on the front bumper (in a photo mainly of the door), no visible damage."
    same = context_for(_crop("clean", None, part="door", zone_name="door"), SIZE)
    assert same["text"] == "Clean surface on the door, no visible damage."
    named = context_for(_crop("clean", None, zone_name="rear_bumper"), SIZE)
    assert (named["part"], named["part_source"]) == ("rear bumper", "zone_name")
    bare = context_for(_crop("clean", None, box=(0, 0, 100, 100)), SIZE)
    assert (bare["part"], bare["part_source"]) == ("upper left of the body", "position")
    assert bare["text"] == "Clean surface on the upper left of the body, no visible damage."


def test_pattern_classification():
    assert defect_pattern([_defect(0, 0, 10, 10)], (200, 200)) == "single"
    assert defect_pattern([_defect(0, 0, 10, 10), _defect(20, 0, 30, 10)], (200, 200)) == "clustered"
    assert defect_pattern([_defect(0, 0, 10, 10), _defect(190, 190, 200, 200)], (200, 200)) == "distributed"
    # threshold: mean pairwise centre distance vs 0.3 x diagonal (200 * sqrt(2) * 0.3 = 84.9 px)
    assert defect_pattern([_defect(0, 0, 10, 10), _defect(84, 0, 94, 10)], (200, 200)) == "clustered"
    assert defect_pattern([_defect(0, 0, 10, 10), _defect(86, 0, 96, 10)], (200, 200)) == "distributed"
    three = [_defect(0, 0, 10, 10), _defect(10, 0, 20, 10), _defect(180, 180, 190, 190)]
    assert defect_pattern(three, (200, 200)) == "distributed"
    single = context_for(_crop("damage", 5, [_defect(10, 10, 50, 50, "crack")]), SIZE)
    assert single["pattern"] == "single" and single["text"].endswith(
        f"1 crack (a crack is {DAMAGE_DESCRIPTIONS['crack']}); a single defect.")


def test_a_damage_crop_without_located_defects():
    ctx = context_for(_crop("damage", 5, [], damage_types=["dent", "paint_peeling"]), SIZE)
    assert ctx["pattern"] == "unlocated"
    assert ctx["text"] == ("Damage on the rear bumper centre by the licence plate (rear_bumper, rear area): "
                           "dent, paint peeling, not localised within the crop.")


def test_plural_forms_and_counts():
    assert [damage_noun(t, 1) for t in ("dent", "surface_scratch", "missing_accessory", "paint_peeling")] == [
        "dent", "surface scratch", "missing accessory", "area of peeling paint"]
    assert [damage_noun(t, 2) for t in ("dent", "surface_scratch", "missing_accessory", "paint_peeling")] == [
        "dents", "surface scratches", "missing accessories", "areas of peeling paint"]
    assert (plural("scuff"), plural("gash"), plural("body"), plural("key"), plural("box")) == (
        "scuffs", "gashes", "bodies", "keys", "boxes")
    assert damage_noun("rust_spot", 3) == "rust spots"
    assert all(t in DAMAGE_DESCRIPTIONS for t in DAMAGE_TYPES.values())
    ctx = context_for(_crop("damage", 9, [_defect(0, 0, 10, 10, "paint_peeling"), _defect(5, 5, 15, 15, "deep_scratch"),
                                          _defect(8, 8, 20, 20, "deep_scratch")]), SIZE)
    assert ": 2 deep scratches (a deep scratch is " in ctx["text"]
    assert ", 1 area of peeling paint (an area of peeling paint is " in ctx["text"]  # counts first, then type order


def test_run_contexts_writes_sorted_contexts_and_a_report(tmp_path):
    rows = []
    for i, (kind, zone) in enumerate([("damage", 2), ("clean", 7), ("clean", None), ("damage", 10)]):
        r = {name: None for name in CROPS_SCHEMA.names}
        r.update(_crop(kind, zone, [_defect(0, 0, 10, 10)] if kind == "damage" else []))
        r.update(crop_id=f"{9 - i:064x}", item_id="x", source_path="a.jpg", split="train", crop_path="c.jpg",
                 vehicle_box=[0, 0, 900, 600], det_conf=1.0, det_found=True, source_format="labelme")
        rows.append(r)
    (tmp_path / "crops").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=CROPS_SCHEMA), tmp_path / "crops" / "crops.parquet")
    m = run_contexts(tmp_path / "crops", tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "contexts.parquet")
    assert table.schema.equals(CONTEXTS_SCHEMA)
    ids = table["crop_id"].to_pylist()
    assert ids == sorted(ids) and len(ids) == 4
    assert m["n_contexts"] == 4 and m["n_damage"] == 2 and m["n_pattern_single"] == 2 and m["n_pattern_none"] == 2
    assert all(n == len(t.split()) for n, t in zip(table["n_words"].to_pylist(), table["text"].to_pylist()))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Examples: damage" in report and "Clean surface on the" in report
    first = (tmp_path / "out" / "contexts.parquet").read_bytes()
    run_contexts(tmp_path / "crops", tmp_path / "out")
    assert (tmp_path / "out" / "contexts.parquet").read_bytes() == first
