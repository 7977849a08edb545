"""Crops: grid windows, damage clustering, resize rules, crop coordinates, the per-item cache."""
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

import pipeline.retrieval.crops as crops_mod
from pipeline.core.config import CropsConfig, DetectConfig
from pipeline.retrieval.crops import CROPS_SCHEMA, crop_item, grid_windows, intersection, polygon_box, run_crops
from pipeline.retrieval.detect import Detection, WholeImageDetector
from pipeline.data.manifest import MANIFEST_SCHEMA

SPLIT_SCHEMA = MANIFEST_SCHEMA.append(pa.field("split", pa.string()))


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _rect(x0, y0, x1, y1, label="dent", kind="damage") -> dict:
    return {"label": label, "kind": kind, "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "shape_type": "polygon"}


def _row(anns: list[dict], has_damage: bool | None = None, item_id: str = "item", path: str = "a.jpg",
         split: str = "train", zone: int | None = 2, source_format: str = "labelme", size=(1200, 800)) -> dict:
    damage = sorted({a["label"] for a in anns if a["kind"] == "damage"})
    return {
        "item_id": item_id, "path": path, "width": size[0], "height": size[1],
        "label": damage[0] if damage else "no_damage", "group_id": path,
        "has_damage": bool(damage) if has_damage is None else has_damage,
        "zone": zone, "zone_name": "hood_center" if zone == 2 else None, "zone_area": "frontal" if zone == 2 else None,
        "damage_types": damage, "annotations": json.dumps(anns), "n_annotations": len(anns), "region": None,
        "license": None, "source_format": source_format, "annotation_path": None, "extra_paths": [],
        "orig_mode": "RGB", "exif_rotated": False, "phash": "0" * 16, "near_duplicate_of": None, "synthetic": True,
        "split": split,
    }


def _whole(img: Image.Image) -> Detection:
    return WholeImageDetector(DetectConfig(backend="none")).detect(img)


# -- grid windows ------------------------------------------------------------------------------------


def test_grid_windows_tile_the_vehicle_box_with_the_overlap():
    cfg = CropsConfig(grid_size=400, grid_overlap=0.5, min_vehicle_fraction=0.7)
    wins = grid_windows((0, 0, 1000, 600), (1000, 600), cfg)
    assert len(wins) == 8  # x: 0 200 400 600, y: 0 200 (stride 200)
    assert [b for _, _, b in wins][:4] == [(0, 0, 400, 400), (200, 0, 600, 400), (400, 0, 800, 400), (600, 0, 1000, 400)]
    assert {(r, c) for r, c, _ in wins} == {(r, c) for r in range(2) for c in range(4)}


def test_grid_windows_vehicle_fraction_filter():
    # x starts 0..800 in steps of 200; the last window (800-1200) holds 300/400 = 75% vehicle
    box, size = (0, 0, 1100, 600), (1200, 800)
    assert len(grid_windows(box, size, CropsConfig(grid_size=400, grid_overlap=0.5, min_vehicle_fraction=0.7))) == 10
    kept = grid_windows(box, size, CropsConfig(grid_size=400, grid_overlap=0.5, min_vehicle_fraction=0.8))
    assert len(kept) == 8 and max(c for _, c, _ in kept) == 3


def test_a_vehicle_smaller_than_a_window_gives_one_centred_window_inside_the_image():
    cfg = CropsConfig(grid_size=400)
    assert grid_windows((500, 300, 600, 380), (1200, 800), cfg) == [(0, 0, (350, 140, 750, 540))]
    assert grid_windows((0, 700, 100, 800), (1200, 800), cfg) == [(0, 0, (0, 400, 400, 800))]  # shifted in
    assert grid_windows((0, 0, 100, 100), (300, 200), cfg) == [(0, 0, (0, 0, 300, 200))]  # image < window


# -- damage crops ------------------------------------------------------------------------------------


def test_nearby_defects_share_a_crop_and_distant_ones_do_not():
    img = _noise(1200, 800)
    cfg = CropsConfig(cluster_distance=0.15, clean_from_damaged=False)  # 0.15 x 1442 px diagonal = 216 px
    near = _row([_rect(100, 100, 150, 150), _rect(200, 120, 250, 170, "crack")])
    (rec, _), = crop_item(img, near, _whole(img), cfg)
    assert rec["n_defects"] == 2 and rec["damage_types"] == ["crack", "dent"]
    far = _row([_rect(100, 100, 150, 150), _rect(900, 600, 1000, 700)])
    assert len(crop_item(img, far, _whole(img), cfg)) == 2


def test_crop_box_is_the_union_plus_margin_and_defects_are_in_crop_pixels():
    img = _noise(1200, 800)
    row = _row([_rect(200, 100, 300, 150)])
    (rec, crop), = crop_item(img, row, _whole(img), CropsConfig(crop_margin=0.1, clean_from_damaged=False))
    assert (rec["x0"], rec["y0"], rec["x1"], rec["y1"]) == (190, 95, 310, 155)
    assert crop.size == (120, 60) == (rec["width"], rec["height"])  # smaller than target: kept at its size
    assert json.loads(rec["defects"]) == [{"type": "dent", "box": [10, 5, 110, 55], "area_px": 5000}]
    assert rec["has_damage"] and rec["crop_type"] == "damage" and rec["grid_row"] is None


def test_a_large_crop_is_downscaled_with_lanczos_and_its_defects_scaled():
    img = _noise(1200, 800)
    row = _row([_rect(100, 100, 900, 500)])
    cfg = CropsConfig(crop_margin=0.0, target_size=400, clean_from_damaged=False)
    (rec, crop), = crop_item(img, row, _whole(img), cfg)
    assert (rec["x0"], rec["y0"], rec["x1"], rec["y1"]) == (100, 100, 900, 500)
    assert crop.size == (400, 200)
    expected = img.crop((100, 100, 900, 500)).resize((400, 200), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(crop), np.asarray(expected))
    assert json.loads(rec["defects"])[0]["box"] == [0, 0, 400, 200]
    assert json.loads(rec["defects"])[0]["area_px"] == 80000


def test_crops_at_the_edge_are_clipped_never_padded():
    img = _noise(1200, 800)
    row = _row([_rect(1150, 0, 1200, 60)])
    (rec, crop), = crop_item(img, row, _whole(img), CropsConfig(crop_margin=0.5, clean_from_damaged=False))
    box = (rec["x0"], rec["y0"], rec["x1"], rec["y1"])
    assert box == (1125, 0, 1200, 90)
    assert np.array_equal(np.asarray(crop), np.asarray(img)[0:90, 1125:1200])


def test_clean_windows_of_a_damaged_photo_touch_no_damage_box():
    img = _noise(1200, 800)
    anns = [_rect(100, 100, 180, 160), _rect(700, 500, 760, 560, "crack")]
    row = _row(anns)
    out = crop_item(img, row, _whole(img), CropsConfig(grid_size=300, grid_overlap=0.25))
    clean = [r for r, _ in out if r["crop_type"] == "clean"]
    damage_boxes = [polygon_box(a["points"]) for a in anns]
    assert clean and len([r for r, _ in out if r["crop_type"] == "damage"]) == 2
    for r in clean:
        assert not r["has_damage"] and r["n_defects"] == 0 and r["grid_row"] is not None
        assert all(intersection((r["x0"], r["y0"], r["x1"], r["y1"]), b) == 0 for b in damage_boxes)
    off = crop_item(img, row, _whole(img), CropsConfig(grid_size=300, clean_from_damaged=False))
    assert all(r["crop_type"] == "damage" for r, _ in off)


def test_a_clean_photo_gives_grid_crops_inside_the_detected_vehicle():
    img = _noise(1200, 800)
    det = Detection(200, 100, 1000, 700, 0.8, "car", 0.5, (200.0, 100.0, 1000.0, 700.0), "test", True)
    out = crop_item(img, _row([], has_damage=False), det, CropsConfig(grid_size=400, grid_overlap=0.5))
    assert len(out) == 6  # 3 x 2 windows at stride 200
    for r, crop in out:
        assert r["crop_type"] == "clean" and r["vehicle_box"] == [200, 100, 1000, 700] and r["det_conf"] == 0.8
        assert 200 <= r["x0"] and r["x1"] <= 1000 and crop.size == (400, 400)


def test_coco_part_is_the_part_overlapping_the_crop_most():
    img = _noise(1200, 800)
    anns = [_rect(0, 0, 600, 800, "door", "part"), _rect(600, 0, 1200, 800, "hood", "part"), _rect(560, 100, 700, 200)]
    (rec, _), = crop_item(img, _row(anns, zone=None, source_format="coco"), _whole(img),
                          CropsConfig(crop_margin=0.0, clean_from_damaged=False))
    assert rec["part"] == "hood" and rec["zone"] is None
    labelme = crop_item(img, _row([_rect(560, 100, 700, 200)]), _whole(img), CropsConfig(clean_from_damaged=False))
    assert labelme[0][0]["part"] is None


def test_a_damaged_photo_without_polygons_gives_one_vehicle_crop_with_the_image_labels():
    img = _noise(640, 480)
    row = _row([], has_damage=True)
    row["damage_types"] = ["dent"]
    (rec, crop), = crop_item(img, row, _whole(img), CropsConfig(target_size=320))
    assert rec["crop_type"] == "damage" and rec["damage_types"] == ["dent"] and rec["n_defects"] == 0
    assert crop.size == (320, 240)


# -- run_crops ---------------------------------------------------------------------------------------


def _dataset(root: Path, n: int, corrupt: bool = False) -> Path:
    """n small photos (alternately damaged / clean), a split.parquet over them."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = f"img{i}.jpg"
        _noise(320, 240, seed=i).save(root / path, quality=90)
        item_id = hashlib.sha256((root / path).read_bytes()).hexdigest()
        anns = [_rect(40, 40, 90, 80), _rect(250, 170, 300, 220, "crack")] if i % 2 == 0 else []
        rows.append(_row(anns, item_id=item_id, path=path, split=("train", "val", "test")[i % 3], size=(320, 240)))
    if corrupt:
        (root / "bad.jpg").write_bytes(b"not a jpeg")
        rows.append(_row([], has_damage=False, item_id="bad", path="bad.jpg", split="test"))
    split = root / "split.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SPLIT_SCHEMA), split)
    return split


CFG = CropsConfig(grid_size=128, grid_overlap=0.25, target_size=128)
NONE = DetectConfig(backend="none")


def test_run_crops_writes_the_tables_and_crops_inherit_their_photo_split(tmp_path):
    split = _dataset(tmp_path / "data", 4)
    m = run_crops(split, tmp_path / "data", NONE, CFG, tmp_path / "out", None, progress=False)
    table = pq.read_table(tmp_path / "out" / "crops.parquet")
    assert table.schema.equals(CROPS_SCHEMA)
    crops = table.to_pylist()
    assert [c["crop_id"] for c in crops] == sorted(c["crop_id"] for c in crops)
    photo_split = {r["path"]: r["split"] for r in pq.read_table(split).to_pylist()}
    assert all(c["split"] == photo_split[c["source_path"]] for c in crops)
    assert m["n_items"] == 4 and m["n_items_processed"] == 4 and m["detection_rate"] == 1.0
    assert m["n_crops"] == m["n_damage_crops"] + m["n_clean_crops"] == len(crops)
    assert m["n_damage_crops"] == 4 and m["n_clean_crops"] > 0  # 2 far-apart defects per damaged photo
    for c in crops:
        with Image.open(tmp_path / "out" / c["crop_path"]) as im:
            assert im.size == (c["width"], c["height"])
    assert (tmp_path / "out" / "contact_sheet.png").is_file()
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith("# Crops report\n") and "Detector: `none`. detect.backend=none: the whole image" in report
    assert m["detector"] == "none" and m["detector_reason"].startswith("detect.backend=none")


def test_the_per_item_cache_reuses_every_item_and_processes_only_new_ones(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    split = _dataset(data, 4)
    m1 = run_crops(split, data, NONE, CFG, tmp_path / "run1", cache, progress=False)
    assert m1["n_items_processed"] == 4 and m1["n_items_cached"] == 0

    built = []
    monkeypatch.setattr(crops_mod, "make_detector", lambda cfg, *_: built.append(cfg) or WholeImageDetector(cfg))
    m2 = run_crops(split, data, NONE, CFG, tmp_path / "run2", cache, progress=False)
    assert m2["n_items_cached"] == m2["n_items"] == 4 and m2["n_items_processed"] == 0
    assert not built  # no detector when nothing misses the cache
    assert (tmp_path / "run1" / "crops.parquet").read_bytes() == (tmp_path / "run2" / "crops.parquet").read_bytes()
    for c in pq.read_table(tmp_path / "run2" / "crops.parquet").to_pylist():
        assert (tmp_path / "run1" / c["crop_path"]).read_bytes() == (tmp_path / "run2" / c["crop_path"]).read_bytes()

    split5 = _dataset(data, 5)  # one more photo
    m3 = run_crops(split5, data, NONE, CFG, tmp_path / "run3", cache, progress=False)
    assert (m3["n_items"], m3["n_items_cached"], m3["n_items_processed"]) == (5, 4, 1)
    assert len(built) == 1

    changed = CropsConfig(grid_size=128, grid_overlap=0.5, target_size=128)  # other params: other keys
    assert run_crops(split5, data, NONE, changed, tmp_path / "run4", cache, progress=False)["n_items_cached"] == 0


def test_a_cached_crop_takes_the_current_split(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    split = _dataset(data, 2)
    run_crops(split, data, NONE, CFG, tmp_path / "run1", cache, progress=False)
    table = pq.read_table(split)
    pq.write_table(table.set_column(table.schema.get_field_index("split"), "split", pa.array(["test", "test"])), split)
    m = run_crops(split, data, NONE, CFG, tmp_path / "run2", cache, progress=False)
    assert m["n_items_cached"] == 2
    assert {c["split"] for c in pq.read_table(tmp_path / "run2" / "crops.parquet").to_pylist()} == {"test"}


class _Blind:
    """A detector that never finds a vehicle (stands in for a random-initialised YOLO)."""

    def detect(self, img):
        return Detection.miss(img.size, "fake")

    def describe(self):
        return {"backend": "fake", "weights": "fake.yaml", "random_init": True}


def test_misses_skip_or_take_the_whole_image_and_bad_photos_are_skipped_with_a_reason(tmp_path, monkeypatch):
    data = tmp_path / "data"
    split = _dataset(data, 2, corrupt=True)
    monkeypatch.setattr(crops_mod, "make_detector", lambda cfg, *_: _Blind())
    random = DetectConfig(backend="ultralytics", allow_random_init=True, on_miss="skip")  # resolved, never loaded
    m = run_crops(split, data, random, CFG, tmp_path / "skip", tmp_path / "cache", progress=False)
    skipped = pq.read_table(tmp_path / "skip" / "skipped.parquet").to_pylist()
    assert sorted(s["reason"] for s in skipped) == ["decode_error", "no_vehicle", "no_vehicle"]
    assert m["n_crops"] == 0 and m["detection_rate"] == 0.0 and m["n_skipped_no_vehicle"] == 2
    assert (tmp_path / "skip" / "report.md").read_text().splitlines()[0].startswith("# Crops report (RANDOM-INITIALISED")

    again = run_crops(split, data, random, CFG, tmp_path / "skip2", tmp_path / "cache", progress=False)
    assert again["n_items_cached"] == 2 and again["n_items_processed"] == 1  # decode errors are retried
    assert (tmp_path / "skip2" / "report.md").read_text().startswith("# Crops report (RANDOM-INITIALISED")

    m = run_crops(split, data, DetectConfig(on_miss="whole_image"), CFG, tmp_path / "whole", None, progress=False)
    crops = pq.read_table(tmp_path / "whole" / "crops.parquet").to_pylist()
    assert m["n_crops"] > 0 and all(not c["det_found"] and c["vehicle_box"] == [0, 0, 320, 240] for c in crops)


# -- the default config, offline; what the artifact holds ------------------------------------------


def test_the_default_config_crops_offline_and_says_which_detector_and_why(tmp_path):
    from pipeline.core.config import PipelineConfig
    from pipeline.core.workspace import Workspace

    cfg = PipelineConfig()  # detect.backend auto; no YOLO weights in the (empty) work-dir weights dir
    split = _dataset(tmp_path / "data", 3)
    m = run_crops(split, tmp_path / "data", cfg.detect, cfg.crops, tmp_path / "out", tmp_path / "cache",
                  progress=False, weights_dir=Workspace(tmp_path / "work").weights)
    assert m["detector"] == "none" and "detector_weights" not in m
    assert m["detector_reason"] == ("detect.backend=auto, no Ultralytics weights ('yolov8n.pt' is not in the weights "
                                    "dir) and no detect.dnn_model: the whole image is the vehicle box")
    assert (m["n_items"], m["n_skipped"], m["detection_rate"]) == (3, 0, 1.0)
    assert m["n_damage_crops"] == 4 and m["n_clean_crops"] > 0  # 2 damaged photos with 2 far-apart defects each
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"Detector: `none`. {m['detector_reason']}." in report


def test_the_artifact_holds_no_cache_counts_and_is_byte_identical_from_the_cache(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    split = _dataset(data, 3)
    m1 = run_crops(split, data, DetectConfig(), CFG, tmp_path / "run1", cache, progress=False)
    m2 = run_crops(split, data, DetectConfig(), CFG, tmp_path / "run2", cache, progress=False)
    assert (m1["n_items_processed"], m1["n_items_cached"], m2["n_items_processed"], m2["n_items_cached"]) == (3, 0, 0, 3)
    report = (tmp_path / "run1" / "report.md").read_text()
    assert "cache" not in report.lower() and "processed" not in report and str(tmp_path) not in report
    for name in ("report.md", "contact_sheet.png", "crops.parquet", "skipped.parquet"):
        assert (tmp_path / "run1" / name).read_bytes() == (tmp_path / "run2" / name).read_bytes(), name


def test_weights_arriving_in_the_weights_dir_switch_auto_to_ultralytics_and_miss_the_item_cache(tmp_path, monkeypatch):
    data, cache, weights = tmp_path / "data", tmp_path / "cache", tmp_path / "weights"
    weights.mkdir()
    split = _dataset(data, 2)
    assert run_crops(split, data, DetectConfig(), CFG, tmp_path / "run1", cache, progress=False,
                     weights_dir=weights)["detector"] == "none"
    (weights / "yolov8n.pt").write_bytes(b"not loaded: make_detector is replaced below")
    built = []
    monkeypatch.setattr(crops_mod, "make_detector", lambda cfg, wd, choice: built.append(choice) or WholeImageDetector(cfg))
    m = run_crops(split, data, DetectConfig(), CFG, tmp_path / "run2", cache, progress=False, weights_dir=weights)
    assert (m["detector"], m["detector_weights"], m["n_items_cached"], m["n_items_processed"]) == ("ultralytics", "yolov8n.pt", 0, 2)
    assert [c.weights for c in built] == [weights / "yolov8n.pt"]
    report = (tmp_path / "run2" / "report.md").read_text()
    assert "Detector: `ultralytics`. detect.backend=auto: Ultralytics weights 'yolov8n.pt' found" in report
    assert "Model files: `yolov8n.pt` (sha256 " in report and str(weights) not in report


# -- the detector the id names: resolved once, found again by the phase and its shards --------------


def _weights(tmp_path: Path, content: bytes = b"yolo weights v1") -> tuple[Path, dict]:
    """A weights dir holding yolov8n.pt, and the identity the crops id holds for it (auto picks it)."""
    from pipeline.retrieval.detect import resolve_detector

    weights = tmp_path / "weights"
    weights.mkdir(exist_ok=True)
    (weights / "yolov8n.pt").write_bytes(content)
    return weights, dict(resolve_detector(DetectConfig(), weights).identity)


def test_run_crops_builds_the_detector_the_id_names_and_fails_on_other_weights(tmp_path, monkeypatch):
    from pipeline.core.errors import ModelUnavailable

    data = tmp_path / "data"
    split = _dataset(data, 2)
    weights, named = _weights(tmp_path)
    built = []
    monkeypatch.setattr(crops_mod, "make_detector", lambda cfg, wd, choice: built.append(choice) or WholeImageDetector(cfg))
    m = run_crops(split, data, DetectConfig(), CFG, tmp_path / "run1", None, progress=False, weights_dir=weights,
                  detector=named)
    assert [c.identity for c in built] == [named] and m["detector_weights"] == "yolov8n.pt"

    # the id was computed before the weights arrived: the run keeps the detector it names (never re-decided)
    none = {"backend": "none", "arch": None, "random_init": False}
    m = run_crops(split, data, DetectConfig(), CFG, tmp_path / "run2", None, progress=False, weights_dir=weights,
                  detector=none)
    assert m["detector"] == "none" and built[1].identity == none

    (weights / "yolov8n.pt").write_bytes(b"other weights, same name")
    with pytest.raises(ModelUnavailable, match="names the detector `ultralytics`.*but here it is"):
        run_crops(split, data, DetectConfig(), CFG, tmp_path / "run3", None, progress=False, weights_dir=weights,
                  detector=named)
    (weights / "yolov8n.pt").unlink()
    with pytest.raises(ModelUnavailable, match="its weights are not here"):
        run_crops(split, data, DetectConfig(), CFG, tmp_path / "run4", None, progress=False, weights_dir=weights,
                  detector=named)
    assert len(built) == 2  # a wrong detector fails before any photo is cropped


def _crops_run(tmp_path: Path, data: Path, weights: Path, named: dict | None, runtime: dict | None = None) -> Any:
    from pipeline.core.config import build_config
    from pipeline.core.phases import PhaseRun

    cfg = build_config(overrides=["crops.grid_size=128", "crops.grid_overlap=0.25", "crops.target_size=128"])
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    rt = {"dataset_root": str(data), "item_cache": str(tmp_path / "items"), "weights_dir": str(weights),
          **(runtime or {})}
    return PhaseRun(inputs={"split": data}, cfg=cfg, params={"max_pixels": 89_478_485, "detector": named},
                    out_dir=scratch, runtime=rt)


def test_crops_shards_use_the_detector_the_id_names(tmp_path, monkeypatch):
    """A shard builds the detector of `run.params["detector"]` (the flow's, handed over in the runtime's
    `resolved`, never resolved again by the source hook), and refuses other weights on its machine."""
    from pipeline.core.errors import ModelUnavailable
    from pipeline.retrieval.phases import RESOLVED, _detector
    from pipeline.retrieval.shards import crops_plan, crops_work

    data = tmp_path / "data"
    _dataset(data, 3)
    weights, named = _weights(tmp_path)
    other = tmp_path / "other"
    other.mkdir()  # a machine without the weights: resolving there would pick `none`
    cfg = _crops_run(tmp_path, data, other, named).cfg
    assert _detector(cfg, {"weights_dir": str(other)}) == {
        "detector": {"backend": "none", "arch": None, "random_init": False}}
    assert _detector(cfg, {"weights_dir": str(other), RESOLVED: {"detector": named}}) == {"detector": named}

    built = []
    monkeypatch.setattr(crops_mod, "make_detector", lambda cfg, wd, choice: built.append(choice) or WholeImageDetector(cfg))
    run = _crops_run(tmp_path, data, weights, named)
    items, _ = crops_plan(run)
    assert crops_work(run, items, {})["n_processed"] == len(items) == 3
    assert [c.identity for c in built] == [named]

    with pytest.raises(ModelUnavailable, match="names the detector `ultralytics`"):
        crops_work(_crops_run(tmp_path, data, other, named), items, {})
    assert len(built) == 1


# -- real data ---------------------------------------------------------------------------------------


def _coco_split(coco_dir: Path, n: int) -> list[dict]:
    doc = json.loads((coco_dir / "train" / "annotations.json").read_text())
    kinds = {c["id"]: (c["name"], "damage" if c["supercategory"] == "damage" else "part") for c in doc["categories"]}
    rows = []
    for img in doc["images"][:n]:
        anns = []
        for a in doc["annotations"]:
            if a["image_id"] == img["id"]:
                name, kind = kinds[a["category_id"]]
                for flat in a["segmentation"]:
                    anns.append({"label": name, "kind": kind, "points": [flat[i:i + 2] for i in range(0, len(flat), 2)],
                                 "shape_type": "polygon"})
        path = f"train/{img['file_name']}"
        row = _row(anns, item_id=hashlib.sha256((coco_dir / path).read_bytes()).hexdigest(), path=path, zone=None,
                   source_format="coco", size=(img["width"], img["height"]))
        rows.append(row)
    return rows


def test_real_coco_photos_give_damage_and_clean_crops_with_parts(coco_dir, tmp_path):
    rows = _coco_split(coco_dir, 4)
    split = tmp_path / "split.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SPLIT_SCHEMA), split)
    m = run_crops(split, coco_dir, NONE, CropsConfig(grid_size=256), tmp_path / "out", None, progress=False)
    crops = pq.read_table(tmp_path / "out" / "crops.parquet").to_pylist()
    assert m["n_damage_crops"] > 0 and m["n_clean_crops"] > 0 and m["n_skipped"] == 0
    assert any(c["part"] for c in crops)
    for c in crops:
        assert 0 <= c["x0"] < c["x1"] <= c["source_width"] and 0 <= c["y0"] < c["y1"] <= c["source_height"]
        assert max(c["width"], c["height"]) <= 448
        if c["crop_type"] == "damage":
            assert c["n_defects"] >= 1 and c["damage_types"] == ["damage"]


SSD_DIR = Path(__file__).resolve().parents[3] / "shared" / "models" / "ssd_mobilenet_v2_coco"


@pytest.mark.slow
def test_real_coco_photos_with_the_opencv_dnn_ssd_detector(coco_dir, tmp_path):
    """The COCO SSD (OpenCV DNN) as the crops phase's detector on real damage photos: a found car gives a
    recorded box and confidence and the clean windows are >= 70% inside it; a miss (close-ups of a panel) takes
    the whole image, by the default policy, and is counted, not an error."""
    pb, pbtxt = SSD_DIR / "frozen_inference_graph.pb", SSD_DIR / "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"
    if not (pb.is_file() and pbtxt.is_file()):
        pytest.skip(f"shared SSD model not present under {SSD_DIR}")
    rows = _coco_split(coco_dir, 8)
    split = tmp_path / "split.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SPLIT_SCHEMA), split)
    det = DetectConfig(backend="opencv_dnn", dnn_model=str(pb), dnn_config=str(pbtxt), conf=0.3)
    m = run_crops(split, coco_dir, det, CropsConfig(grid_size=256), tmp_path / "out", None, progress=False)
    crops = pq.read_table(tmp_path / "out" / "crops.parquet").to_pylist()
    assert m["n_skipped"] == 0 and {c["item_id"] for c in crops} == {r["item_id"] for r in rows}
    assert m["n_detected"] >= 1, m  # the SSD finds the car in some of these photos
    assert 0 < m["detection_rate"] <= 1 and m["n_detected"] == round(m["detection_rate"] * len(rows))
    for c in crops:
        x0, y0, x1, y1 = c["vehicle_box"]
        if c["det_found"]:
            assert 0.3 <= c["det_conf"] <= 1 and (x1 - x0) * (y1 - y0) < c["source_width"] * c["source_height"] + 1
            if c["crop_type"] == "clean":  # a window is kept when >= 70% of it is vehicle
                inter = max(0, min(x1, c["x1"]) - max(x0, c["x0"])) * max(0, min(y1, c["y1"]) - max(y0, c["y0"]))
                assert inter >= 0.7 * (c["x1"] - c["x0"]) * (c["y1"] - c["y0"]) - 1
        else:
            assert [x0, y0, x1, y1] == [0, 0, c["source_width"], c["source_height"]]
    assert "detection rate" in (tmp_path / "out" / "report.md").read_text()
