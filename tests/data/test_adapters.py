"""Dataset adapters: one test per format feature and per kind of bad input, on tiny files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.adapters import METADATA_FILES, ScanResult, dominant_label, scan
from pipeline.core.config import DataConfig
from pipeline.data.manifest import NO_DAMAGE_LABEL, Annotation

TS = "20240131T120000"
BIG = [[10, 10], [90, 10], [90, 90], [10, 90]]  # area 6400
SMALL = [[0, 0], [20, 0], [20, 20], [0, 20]]  # area 400


# -- helpers shared with test_audit.py -------------------------------------------------------------


def smooth_image(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A smooth random RGB image: distinct seeds give pHashes far apart (>= 20 bits)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB").resize(size, Image.BICUBIC)


def save_image(path: Path, seed: int, size: tuple[int, int] = (160, 120), **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    smooth_image(seed, size).save(path, **kwargs)
    return path


def labelme_stem(state: str = "ko", a: str = "1", b: str = "2", zone: int = 3, ts: str = TS) -> str:
    return f"zona1_{state}_{a}_{b}_{ts}_zona_{zone}"


def shape(label: str, points: list) -> dict:
    return {"label": label, "points": points, "shape_type": "polygon", "group_id": None, "flags": {}}


def write_labelme(root: Path, seed: int, shapes: list[dict] | None, state: str = "ko", a: str = "1", b: str = "2",
                  zone: int = 3, size: tuple[int, int] = (160, 120), truth: bool = False) -> str:
    """Write one LabelMe photo (+ its damage file when `shapes` is not None); returns the image name."""
    stem = labelme_stem(state, a, b, zone, ts=f"{TS}{seed}")
    save_image(root / f"{stem}_imageDANO_original.jpg", seed, size, quality=95)
    if shapes is not None:
        doc = {"version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": f"{stem}_imageDANO_original.jpg",
               "imageData": None, "imageWidth": size[0], "imageHeight": size[1]}
        (root / f"{stem}_labelDANO_modificado.json").write_text(json.dumps(doc))
    if truth:
        (root / f"{stem}_imageDANO_original.json").write_text(json.dumps({"shapes": []}))
    return f"{stem}_imageDANO_original.jpg"


def write_coco(path: Path, images: list[dict], annotations: list[dict], licenses: list[dict] | None = None) -> None:
    categories = [{"id": 1, "name": "door", "supercategory": "part"}, {"id": 2, "name": "hood", "supercategory": "part"},
                  {"id": 6, "name": "damage", "supercategory": "damage"}]
    doc = {"info": {}, "licenses": licenses or [], "images": images, "annotations": annotations, "categories": categories}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def coco_ann(aid: int, image_id: int, cat: int, points: list) -> dict:
    flat = [v for p in points for v in p]
    return {"id": aid, "image_id": image_id, "category_id": cat, "segmentation": [flat], "iscrowd": 0}


def assert_accounted(result: ScanResult) -> None:
    """Every listed file is in exactly one place: a candidate's files or a file-level quarantine row."""
    in_candidates = {p for c in result.candidates for p in (c.path, c.annotation_path, *c.extra_paths) if p}
    file_rows = [q.path for q in result.quarantine if q.level == "file"]
    assert len(file_rows) == len(set(file_rows)), "a file is quarantined twice"
    assert not in_candidates & set(file_rows), in_candidates & set(file_rows)
    missing = set(result.files) - in_candidates - set(file_rows)
    assert not missing, f"files in no place: {missing}"
    paths = [c.path for c in result.candidates]
    assert paths == sorted(paths) and len(set(paths)) == len(paths)


def reasons(result: ScanResult) -> dict[str, str]:
    return {q.path: q.reason for q in result.quarantine if q.level == "file"}


# -- common -------------------------------------------------------------------------------------------


def test_unknown_format_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="coco, folders, jsonl, labelme"):
        scan(tmp_path, "voc", DataConfig())


def test_dominant_label_largest_area_ties_to_lowest_code():
    anns = [Annotation("dent", SMALL), Annotation("crack", BIG), Annotation("surface_scratch", BIG)]
    assert dominant_label(anns) == "surface_scratch"  # crack (5) and surface_scratch (1) tie: lowest code
    assert dominant_label([Annotation("dent", SMALL)] * 20 + [Annotation("crack", BIG)]) == "dent"  # total area
    assert dominant_label([Annotation("door", BIG, "part")]) is None


# -- labelme --------------------------------------------------------------------------------------------


def test_labelme_reads_damage_zone_group_and_ignores_label_9(tmp_path):
    ko = write_labelme(tmp_path, 1, [shape("2", BIG), shape("1", SMALL), shape("9", BIG)], zone=7, truth=True)
    ok = write_labelme(tmp_path, 2, None, state="ok", a="5", b="6", zone=5)
    result = scan(tmp_path, "labelme", DataConfig())
    assert_accounted(result)
    assert result.quarantine == []
    by_path = {c.path: c for c in result.candidates}
    c = by_path[ko]
    assert (c.label, c.has_damage, c.damage_types) == ("dent", True, ["dent", "surface_scratch"])
    assert (c.zone, c.zone_name, c.zone_area) == (7, "driver_side_door", "lateral_left")
    assert c.group_id == ko and c.source_format == "labelme"  # default: each photo its own group
    assert c.annotation_path == ko.replace("_imageDANO_original.jpg", "_labelDANO_modificado.json")
    assert c.extra_paths == [ko.replace(".jpg", ".json")]
    assert [a.label for a in c.annotations] == ["dent", "surface_scratch"]
    assert result.stats["n_shapes_ignored"] == 1
    clean = by_path[ok]
    assert (clean.label, clean.has_damage, clean.damage_types, clean.zone_area) == (NO_DAMAGE_LABEL, False, [], "posterior")
    by_vehicle = scan(tmp_path, "labelme", DataConfig(labelme_group_by="vehicle"))
    assert {c.path: c.group_id for c in by_vehicle.candidates} == {ko: "veh_1_2", ok: "veh_5_6"}


def test_labelme_nested_folders_and_rectangles(tmp_path):
    name = write_labelme(tmp_path / "batch1", 1, [{"label": "5", "points": [[0, 0], [10, 20]], "shape_type": "rectangle"}])
    result = scan(tmp_path, "labelme", DataConfig())
    assert_accounted(result)
    (c,) = result.candidates
    assert c.path == f"batch1/{name}" and c.label == "crack"
    assert c.annotations[0].points == [[0, 0], [10, 0], [10, 20], [0, 20]]


def test_labelme_unknown_label_is_a_shape_issue(tmp_path):
    name = write_labelme(tmp_path, 1, [shape("2", BIG), shape("12", BIG), shape("dent", SMALL)])
    (c,) = scan(tmp_path, "labelme", DataConfig()).candidates
    assert [(i.path, i.reason, i.level) for i in c.issues] == [(name, "unknown_label", "shape")] * 2
    assert "'12'" in c.issues[0].detail and c.label == "dent"


def test_labelme_ko_without_annotation_is_missing_not_clean(tmp_path):
    ko = write_labelme(tmp_path, 1, None, truth=True)
    ok = write_labelme(tmp_path, 2, None, state="ok")
    result = scan(tmp_path, "labelme", DataConfig())
    assert_accounted(result)
    assert [c.path for c in result.candidates] == [ok]
    assert reasons(result) == {ko: "missing_annotation", ko.replace(".jpg", ".json"): "missing_annotation"}


@pytest.mark.parametrize("content", ["{not json", json.dumps({"imageWidth": 10}), json.dumps([1, 2])])
def test_labelme_malformed_json(tmp_path, content):
    ko = write_labelme(tmp_path, 1, [])
    ok = write_labelme(tmp_path, 2, [], state="ok")
    for name in (ko, ok):
        (tmp_path / name.replace("_imageDANO_original.jpg", "_labelDANO_modificado.json")).write_text(content)
    result = scan(tmp_path, "labelme", DataConfig())
    assert_accounted(result)
    rows = reasons(result)
    assert rows[ko] == "missing_annotation"
    assert sorted(r for p, r in rows.items() if p.endswith("_labelDANO_modificado.json")) == ["malformed_annotation"] * 2
    (c,) = result.candidates  # the clean photo stays, without annotation file
    assert c.path == ok and c.annotation_path is None


def test_labelme_bad_filename_orphan_and_unsupported(tmp_path):
    save_image(tmp_path / "IMG_0001.jpg", 1)
    write_labelme(tmp_path, 2, [shape("2", BIG)], zone=11)  # zone outside 1..10: image and its json
    (tmp_path / f"{labelme_stem(ts='x')}_labelDANO_modificado.json").write_text(json.dumps({"shapes": []}))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "README.md").write_text("# metadata, not a dataset file")
    result = scan(tmp_path, "labelme", DataConfig())
    assert_accounted(result)
    assert result.candidates == [] and "README.md" not in result.files
    rows = reasons(result)
    assert rows["IMG_0001.jpg"] == "bad_filename"
    assert rows[f"{labelme_stem(ts='x')}_labelDANO_modificado.json"] == "orphan_annotation"
    assert rows["notes.txt"] == "unsupported_file"
    zone11 = [p for p in rows if "_zona_11_" in p]
    assert len(zone11) == 2 and {rows[p] for p in zone11} == {"bad_filename"}


def test_dataset_json_sets_synthetic_and_license(tmp_path):
    write_labelme(tmp_path, 1, [shape("2", BIG)])
    (tmp_path / "dataset.json").write_text(json.dumps({"synthetic": True, "license": "CC-BY-4.0"}))
    result = scan(tmp_path, "labelme", DataConfig())
    assert "dataset.json" in METADATA_FILES and "dataset.json" not in result.files
    assert [(c.synthetic, c.license) for c in result.candidates] == [(True, "CC-BY-4.0")]


def test_escaping_and_dangling_symlinks_are_quarantined_in_any_format(tmp_path):
    outside = save_image(tmp_path / "outside" / "secret.jpg", 1)
    root = tmp_path / "root"
    save_image(root / "dent" / "a.jpg", 2)
    os.symlink(outside, root / "dent" / "link.jpg")
    os.symlink(root / "dent" / "gone.jpg", root / "dent" / "dangling.jpg")
    result = scan(root, "folders", DataConfig())
    assert_accounted(result)
    assert reasons(result) == {"dent/link.jpg": "path_escape", "dent/dangling.jpg": "missing_file"}


# -- coco -------------------------------------------------------------------------------------------------


def test_coco_labels_parts_licences_and_unlabeled_images(tmp_path):
    for i in range(3):
        save_image(tmp_path / "train" / f"{i}.jpg", i)
    save_image(tmp_path / "val" / "v.jpg", 10)
    save_image(tmp_path / "unlabeled" / "u.jpg", 11)
    imgs = [{"id": i, "file_name": f"{i}.jpg", "width": 160, "height": 120, "license": 1} for i in range(3)]
    imgs.append({"id": 7, "file_name": "missing.jpg", "width": 160, "height": 120})
    anns = [coco_ann(1, 0, 1, BIG), coco_ann(2, 0, 2, SMALL), coco_ann(3, 0, 6, SMALL),  # damaged, door largest
            coco_ann(4, 1, 2, BIG),  # parts only: no_damage
            coco_ann(5, 2, 6, BIG), coco_ann(6, 2, 42, SMALL)]  # unknown category
    write_coco(tmp_path / "train" / "annotations.json", imgs, anns, [{"id": 1, "name": "CC BY-NC-SA 2.0", "url": ""}])
    write_coco(tmp_path / "val" / "annotations.json", [{"id": 0, "file_name": "v.jpg"}], [coco_ann(1, 0, 6, BIG)])
    result = scan(tmp_path, "coco", DataConfig())
    assert_accounted(result)
    by_path = {c.path: c for c in result.candidates}
    assert sorted(by_path) == ["train/0.jpg", "train/1.jpg", "train/2.jpg", "val/v.jpg"]
    c0 = by_path["train/0.jpg"]
    assert (c0.label, c0.has_damage, c0.zone_name, c0.zone, c0.zone_area) == ("damage", True, "door", None, None)
    assert (c0.license, c0.group_id, c0.annotation_path) == ("CC BY-NC-SA 2.0", "train/0.jpg", "train/annotations.json")
    assert {a.kind for a in c0.annotations} == {"part", "damage"} and c0.damage_types == ["damage"]
    assert (by_path["train/1.jpg"].label, by_path["train/1.jpg"].has_damage) == (NO_DAMAGE_LABEL, False)
    assert [(i.reason, i.level) for i in by_path["train/2.jpg"].issues] == [("unknown_label", "shape")]
    assert by_path["val/v.jpg"].license is None
    rows = reasons(result)
    assert rows == {"train/missing.jpg": "missing_file", "unlabeled/u.jpg": "missing_annotation"}
    assert "not in any annotations.json" in next(q.detail for q in result.quarantine if q.path == "unlabeled/u.jpg")


def test_coco_malformed_and_orphan_annotation_files(tmp_path):
    save_image(tmp_path / "a" / "x.jpg", 1)
    (tmp_path / "a" / "annotations.json").write_text("{broken")
    write_coco(tmp_path / "b" / "annotations.json", [{"id": 1, "file_name": "nothere.jpg"}], [])
    result = scan(tmp_path, "coco", DataConfig())
    assert_accounted(result)
    assert reasons(result) == {"a/annotations.json": "malformed_annotation", "a/x.jpg": "missing_annotation",
                               "b/annotations.json": "orphan_annotation", "b/nothere.jpg": "missing_file"}


def test_coco_without_annotation_file_fails_with_a_hint(tmp_path):
    save_image(tmp_path / "x.jpg", 1)
    with pytest.raises(FileNotFoundError, match="is the format right"):
        scan(tmp_path, "coco", DataConfig())


# -- jsonl -----------------------------------------------------------------------------------------------


def write_jsonl(root: Path, records: list, name: str = "manifest.jsonl") -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (root / name).write_text("\n".join(lines) + "\n")


def test_jsonl_records_and_bad_inputs(tmp_path):
    root = tmp_path / "root"
    save_image(root / "img" / "a.jpg", 1)
    save_image(root / "img" / "b.jpg", 2)
    save_image(root / "img" / "c.jpg", 3)
    save_image(root / "img" / "d.jpg", 6)
    save_image(root / "stray.jpg", 4)
    outside = save_image(tmp_path / "outside.jpg", 5)
    os.symlink(outside, root / "img" / "link.jpg")
    write_jsonl(root, [
        {"path": "img/a.jpg", "label": "dent", "region": "EU", "license": "cc-by", "group": "car1", "zone": 2},
        {"path": "img/./b.jpg", "label": NO_DAMAGE_LABEL},
        {"path": "img/c.jpg", "label": "scratch", "has_damage": False, "damage_types": []},
        {"url": "https://example.com/x.jpg", "label": "dent"},
        {"path": "../outside.jpg", "label": "dent"},
        {"path": str(outside), "label": "dent"},
        {"path": "img/link.jpg", "label": "dent"},
        {"path": "img/nope.jpg", "label": "dent"},
        "{not json",
        {"path": "img/a.jpg"},
        {"label": "dent"},
        {"path": "img/a.jpg", "label": "dent"},
        {"path": "img/d.jpg", "label": "dent", "zone": 11},
        "",
    ])
    result = scan(root, "jsonl", DataConfig())
    assert_accounted(result)
    by_path = {c.path: c for c in result.candidates}
    assert sorted(by_path) == ["img/a.jpg", "img/b.jpg", "img/c.jpg"]
    a = by_path["img/a.jpg"]
    assert (a.label, a.has_damage, a.damage_types, a.group_id, a.region, a.license) == ("dent", True, ["dent"], "car1", "EU", "cc-by")
    assert (a.zone, a.zone_name, a.zone_area, a.annotation_path) == (2, "hood_center", "frontal", "manifest.jsonl")
    b = by_path["img/b.jpg"]
    assert (b.has_damage, b.damage_types, b.group_id) == (False, [], "img/b.jpg")
    assert (by_path["img/c.jpg"].has_damage, by_path["img/c.jpg"].label) == (False, "scratch")
    rows = reasons(result)
    assert rows["https://example.com/x.jpg"] == "url_not_fetchable"
    assert rows["../outside.jpg"] == "path_escape" and rows[str(outside)] == "path_escape"
    assert rows["img/link.jpg"] == "path_escape"
    assert rows["img/nope.jpg"] == "missing_file"
    assert rows["stray.jpg"] == "unsupported_file" and rows["img/d.jpg"] == "unsupported_file"
    bad = {q.path: q.detail for q in result.quarantine if q.reason == "bad_record"}
    assert sorted(bad) == ["manifest.jsonl:10", "manifest.jsonl:11", "manifest.jsonl:12", "manifest.jsonl:13", "manifest.jsonl:9"]
    assert "second record" in bad["manifest.jsonl:12"] and "zone" in bad["manifest.jsonl:13"]


def test_jsonl_symlink_dir_escape_and_orphan_manifest(tmp_path):
    root = tmp_path / "root"
    save_image(tmp_path / "elsewhere" / "x.jpg", 1)
    root.mkdir()
    os.symlink(tmp_path / "elsewhere", root / "linked")
    write_jsonl(root, [{"path": "linked/x.jpg", "label": "dent"}])
    result = scan(root, "jsonl", DataConfig())
    assert_accounted(result)
    # the folder link itself is listed (never followed) and the record through it is refused
    assert reasons(result) == {"linked": "path_escape", "linked/x.jpg": "path_escape", "manifest.jsonl": "orphan_annotation"}


def test_jsonl_needs_a_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="jsonl"):
        scan(tmp_path, "jsonl", DataConfig())


# -- folders ---------------------------------------------------------------------------------------------


def test_folders_labels_clean_folders_and_nesting(tmp_path):
    save_image(tmp_path / "dent" / "a.jpg", 1)
    save_image(tmp_path / "dent" / "more" / "b.png", 2)
    save_image(tmp_path / "ok" / "c.jpg", 3)
    save_image(tmp_path / "loose.jpg", 4)
    (tmp_path / "dent" / "notes.txt").write_text("x")
    result = scan(tmp_path, "folders", DataConfig())
    assert_accounted(result)
    got = {c.path: (c.label, c.has_damage, c.damage_types, c.group_id) for c in result.candidates}
    assert got == {
        "dent/a.jpg": ("dent", True, ["dent"], "dent/a.jpg"),
        "dent/more/b.png": ("dent", True, ["dent"], "dent/more/b.png"),
        "ok/c.jpg": (NO_DAMAGE_LABEL, False, [], "ok/c.jpg"),
    }
    assert reasons(result) == {"loose.jpg": "unsupported_file", "dent/notes.txt": "unsupported_file"}


# -- labelme: shape types, copies, contradictions, format sniffing ------------------------------------


def test_labelme_every_shape_type_is_a_region_with_its_area(tmp_path):
    import math

    from pipeline.core.geometry import LINE_HALF_WIDTH_PX, POINT_RADIUS_PX, polygon_area

    shapes = [
        {"label": "2", "points": [[10, 10], [50, 30]], "shape_type": "rectangle"},  # 40 x 20
        {"label": "5", "points": [[80, 60], [80, 80]], "shape_type": "circle"},  # radius 20
        {"label": "1", "points": [[10, 100], [110, 100]], "shape_type": "line"},  # 100 px stroke
        {"label": "4", "points": [[10, 5], [60, 5], [60, 55]], "shape_type": "linestrip"},
        {"label": "3", "points": [[140, 20]], "shape_type": "point"},
        {"label": "6", "points": [[100, 40], [120, 40], [100, 50]], "shape_type": "ellipse"},  # semi-axes 20, 10
        {"label": "7", "points": [[1, 1]], "shape_type": "mask"},
        {"label": "8", "points": [[5, 5], [5, 5]], "shape_type": "circle"},  # zero radius
    ]
    name = write_labelme(tmp_path, 1, shapes)
    result = scan(tmp_path, "labelme", DataConfig())
    (c,) = result.candidates
    area = {a.label: polygon_area(a.points) for a in c.annotations}
    kinds = {a.label: a.shape_type for a in c.annotations}
    assert kinds == {"dent": "rectangle", "crack": "circle", "surface_scratch": "line", "deep_scratch": "linestrip",
                     "paint_peeling": "point", "missing_part": "ellipse"}
    assert area["dent"] == 800
    assert area["crack"] == pytest.approx(math.pi * 400, rel=0.01)
    w = LINE_HALF_WIDTH_PX
    assert area["surface_scratch"] == pytest.approx(100 * 2 * w + math.pi * w * w, rel=0.01)
    assert area["deep_scratch"] == pytest.approx(100 * 2 * w + math.pi * w * w, rel=0.02)
    assert area["paint_peeling"] == pytest.approx(math.pi * POINT_RADIUS_PX**2, rel=0.01)
    assert area["missing_part"] == pytest.approx(math.pi * 200, rel=0.01)
    assert c.label == "crack"  # the circle is the largest region
    assert result.stats["n_shapes_buffered"] == 3
    issues = {(i.reason, i.detail.split(": ", 1)[0].rsplit(" ", 1)[-1]) for i in c.issues}
    assert issues == {("unsupported_shape", "6"), ("degenerate_polygon", "7")}
    assert all(i.path == name and i.level == "shape" for i in c.issues)


def test_labelme_ok_photo_with_damage_shapes_is_a_contradiction(tmp_path):
    ok = write_labelme(tmp_path, 1, [shape("9", BIG), shape("2", BIG), {"label": "5", "points": [[0, 0], [9, 9]],
                                                                       "shape_type": "rectangle"}], state="ok", truth=True)
    clean = write_labelme(tmp_path, 2, [shape("9", BIG)], state="ok")  # label 9 only: not damage
    result = scan(tmp_path, "labelme", DataConfig())
    assert_accounted(result)
    assert [c.path for c in result.candidates] == [clean]
    rows = {q.path: q for q in result.quarantine if q.level == "file"}
    assert {p: q.reason for p, q in rows.items()} == {
        ok: "label_contradiction",
        ok.replace("_imageDANO_original.jpg", "_labelDANO_modificado.json"): "label_contradiction",
        ok.replace(".jpg", ".json"): "label_contradiction",
    }
    assert "2 damage shape(s)" in rows[ok].detail and "#1 dent (polygon)" in rows[ok].detail
    assert "#2 crack (rectangle)" in rows[ok].detail


def test_labelme_copies_and_non_ascii_names(tmp_path):
    stem = labelme_stem("ok", "2", "3", 3, ts=TS)
    clean = f"{stem}_imageDANO_original (copia) ñ.jpg"
    save_image(tmp_path / clean, 1)
    ko = labelme_stem("ko", "2", "3", 4, ts=TS)
    doc = {"shapes": [shape("2", BIG)]}
    plain_img, copy_img = f"{ko}_imageDANO_original.jpg", f"{ko}_imageDANO_original (copia).jpg"
    save_image(tmp_path / plain_img, 2)
    save_image(tmp_path / copy_img, 3)
    (tmp_path / f"{ko}_labelDANO_modificado.json").write_text(json.dumps(doc))
    # A second ko stem whose copy has its own copied label file, with a different shape.
    ko2 = labelme_stem("ko", "2", "3", 5, ts=TS)
    save_image(tmp_path / f"{ko2}_imageDANO_original.jpg", 4)
    save_image(tmp_path / f"{ko2}_imageDANO_original - copia (2).JPG", 5)
    (tmp_path / f"{ko2}_labelDANO_modificado.json").write_text(json.dumps(doc))
    (tmp_path / f"{ko2}_labelDANO_modificado - copia (2).json").write_text(json.dumps({"shapes": [shape("5", SMALL)]}))
    result = scan(tmp_path, "labelme", DataConfig())
    assert_accounted(result)
    assert result.quarantine == []
    by_path = {c.path: c for c in result.candidates}
    assert (by_path[clean].has_damage, by_path[clean].zone, by_path[clean].label) == (False, 3, NO_DAMAGE_LABEL)
    assert by_path[copy_img].annotation_path == f"{ko}_labelDANO_modificado.json"  # no copy: the plain one
    assert by_path[plain_img].annotation_path == f"{ko}_labelDANO_modificado.json"
    copy2 = by_path[f"{ko2}_imageDANO_original - copia (2).JPG"]
    assert copy2.annotation_path == f"{ko2}_labelDANO_modificado - copia (2).json" and copy2.label == "crack"
    assert by_path[f"{ko2}_imageDANO_original.jpg"].label == "dent"
    # A name that only starts like the scheme (letters glued to the suffix) is still a bad name.
    save_image(tmp_path / f"{stem}_imageDANO_originalX.jpg", 6)
    assert reasons(scan(tmp_path, "labelme", DataConfig()))[f"{stem}_imageDANO_originalX.jpg"] == "bad_filename"


def test_sniff_format_recognises_each_layout(tmp_path):
    from pipeline.data.adapters.sniff import sniff_format

    write_labelme(tmp_path / "lm", 1, [shape("2", BIG)])
    write_coco(tmp_path / "coco" / "annotations.json", [], [])
    (tmp_path / "jl").mkdir()
    (tmp_path / "jl" / "data.jsonl").write_text("{}\n")
    save_image(tmp_path / "fold" / "dent" / "a.jpg", 1)
    (tmp_path / "empty").mkdir()
    got = {d: sniff_format(tmp_path / d, DataConfig())[0] for d in ("lm", "coco", "jl", "fold", "empty")}
    assert got == {"lm": "labelme", "coco": "coco", "jl": "jsonl", "fold": "folders", "empty": None}
