"""Image loading and the audit phase: every quarantine reason, outputs, determinism, file accounting."""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_adapters import BIG, SMALL, save_image, shape, smooth_image, write_coco, write_jsonl, write_labelme

from pipeline.data.adapters import scan
from pipeline.core.components import component_roots, components
from pipeline.core.config import AuditConfig, DataConfig
from pipeline.core.errors import DatasetError
from pipeline.core.geometry import clip_to_image, clipped_extent, ring, valid_parts
from pipeline.data.audit import run_audit
from pipeline.data.near_duplicates import near_duplicate_pairs, near_duplicate_pairs_exhaustive
from pipeline.data.images import DecodeError, DecompressionBomb, load_rgb, phash, to_rgb
from pipeline.data.manifest import MANIFEST_SCHEMA, QUARANTINE_SCHEMA, REASONS, annotations_from_json

OUTPUTS = ("manifest.parquet", "quarantine.parquet", "report.md", "class_hist.png", "zone_hist.png", "audit_summary.json")


def audit(root: Path, fmt: str, out: Path, data: DataConfig | None = None, **audit_cfg) -> tuple[dict, list[dict], list[dict]]:
    """Run the audit; returns (metrics, manifest rows, quarantine rows)."""
    cfg = AuditConfig(**{"min_side": 32, "workers": 2, **audit_cfg})
    metrics = run_audit(root, fmt, data or DataConfig(), cfg, out, progress=False)
    return metrics, pq.read_table(out / "manifest.parquet").to_pylist(), pq.read_table(out / "quarantine.parquet").to_pylist()


def file_rows(quarantine: list[dict]) -> dict[str, tuple[str, str]]:
    return {q["path"]: (q["reason"], q["detail"]) for q in quarantine if q["level"] == "file"}


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


# -- images.load_rgb -----------------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save_image(tmp_path / "rot.jpg", 1, (160, 120), exif=exif)
    img, info = load_rgb(path, 10**8)
    assert img.size == (120, 160) and info == {"orig_mode": "RGB", "exif_rotated": True, "width": 120, "height": 160}
    _, plain = load_rgb(save_image(tmp_path / "plain.jpg", 1), 10**8)
    assert plain["exif_rotated"] is False and (plain["width"], plain["height"]) == (160, 120)


def test_modes_convert_to_8bit_rgb(tmp_path):
    gray = Image.new("L", (4, 4), 77)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red
    rgba = Image.new("RGBA", (4, 4), (0, 0, 255, 0))  # fully transparent blue -> white
    la = Image.new("LA", (4, 4), (0, 128))  # half-transparent black -> mid grey
    i16 = Image.fromarray(np.array([[0, 65535], [32896, 257]], dtype=np.uint16))
    f32 = Image.fromarray(np.array([[0.0, 1.0], [0.5, 0.25]], dtype=np.float32))
    pal = Image.new("P", (4, 4), 3)
    pal.info["transparency"] = 3
    assert i16.mode == "I;16" and f32.mode == "F"
    expected = {
        "L": (gray, (77, 77, 77)),
        "CMYK": (cmyk, (255, 0, 0)),
        "RGBA": (rgba, (255, 255, 255)),
        "LA": (la, (127, 127, 127)),
        "I;16": (i16, (255, 255, 255)),
        "F": (f32, (255, 255, 255)),
        "P": (pal, (255, 255, 255)),
    }
    for mode, (img, pixel) in expected.items():
        out = to_rgb(img)
        assert out.mode == "RGB", mode
        probe = (1, 0) if mode in ("I;16", "F") else (0, 0)
        assert np.allclose(out.getpixel(probe), pixel, atol=1), (mode, out.getpixel(probe))
    scaled = np.asarray(to_rgb(i16))[..., 0]
    assert scaled.tolist() == [[0, 255], [128, 1]]  # scaled by 1/257, not clipped at 255
    i16.save(tmp_path / "deep.png")
    img, info = load_rgb(tmp_path / "deep.png", 10**8)
    assert info["orig_mode"].startswith("I") and np.asarray(img)[..., 0].tolist() == [[0, 255], [128, 1]]
    cmyk.save(tmp_path / "cmyk.jpg")
    img, info = load_rgb(tmp_path / "cmyk.jpg", 10**8)
    assert info["orig_mode"] == "CMYK" and img.mode == "RGB" and img.getpixel((0, 0))[0] > 200


def test_load_rgb_rejects_bombs_and_broken_files(tmp_path):
    path = save_image(tmp_path / "a.png", 1, (100, 100))
    pil_limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DecompressionBomb):
        load_rgb(path, 100 * 100 - 1)  # above the limit at all, not only at PIL's 2x error level
    assert load_rgb(path.read_bytes(), 100 * 100)[1]["width"] == 100
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's global is left as it was
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DecodeError):
        load_rgb(tmp_path / "junk.jpg", 10**8)
    data = jpeg_bytes(smooth_image(1))
    with pytest.raises(DecodeError):
        load_rgb(data[: len(data) // 2], 10**8)


def test_phash_is_64_bit_and_stable_under_reencoding():
    img = smooth_image(3)
    h = phash(img)
    assert 0 <= h < 2**64
    again = Image.open(io.BytesIO(jpeg_bytes(img.resize((150, 112)), quality=60))).convert("RGB")
    assert (h ^ phash(again)).bit_count() <= 4
    assert (h ^ phash(smooth_image(4))).bit_count() > 10


# -- geometry and duplicates -----------------------------------------------------------------------


def same_ring(got: list, expected: list) -> bool:
    """Whether `got` is `expected` up to the starting vertex."""
    return len(got) == len(expected) and any(got[k:] + got[:k] == expected for k in range(len(got)))


def clip_polygon(points: list, width: float, height: float) -> list:
    """The single ring of a polygon clipped to the image ([] when nothing is inside)."""
    pieces = clip_to_image(valid_parts(points), width, height)
    assert len(pieces) <= 1
    return ring(pieces[0]) if pieces else []


def test_clip_polygon_against_the_image_rectangle():
    assert same_ring(clip_polygon([[-10, 10], [50, 10], [50, 50], [-10, 50]], 100, 80), [[0, 10], [50, 10], [50, 50], [0, 50]])
    assert same_ring(clip_polygon([[90, 70], [120, 70], [120, 100], [90, 100]], 100, 80), [[90, 70], [100, 70], [100, 80], [90, 80]])
    assert same_ring(clip_polygon([[50, -20], [90, 20], [10, 20]], 100, 80), [[70, 0], [90, 20], [10, 20], [30, 0]])
    assert clip_polygon([[200, 200], [300, 200], [300, 300]], 100, 80) == []
    # A concave U crossing the bottom border twice: two pieces, the area of both.
    u = [[0, 50], [30, 50], [30, 100], [20, 100], [20, 60], [10, 60], [10, 100], [0, 100]]
    pieces = clip_to_image(valid_parts(u), 100, 80)
    assert len(pieces) == 1 and pieces[0].area == 30 * 10 + 2 * 10 * 20  # still one U inside y <= 80
    pieces = clip_to_image(valid_parts(u), 100, 55)
    assert len(pieces) == 1 and pieces[0].area == 150
    legs = [[0, 0], [10, 0], [10, 90], [20, 90], [20, 0], [30, 0], [30, 100], [0, 100]]  # legs cross y = 80
    assert sorted(p.area for p in clip_to_image(valid_parts(legs), 100, 80)) == [800, 800]  # two pieces
    assert clipped_extent(legs, 100, 80) == ((0.0, 0.0, 30.0, 80.0), 1600.0)


def test_connected_components_name_each_by_its_smallest_member():
    assert component_roots(6, [(5, 3), (3, 1), (2, 4)]).tolist() == [0, 1, 2, 1, 2, 1]
    assert components(4, []) == [[0], [1], [2], [3]]
    assert components(3, np.array([[2, 0]])) == [[0, 2], [1]]
    with pytest.raises(ValueError):
        component_roots(2, [(0, 2)])


def test_near_duplicate_pairs_popcount():
    hashes = np.array([0, 0b111, 2**63, 0b1], dtype=np.uint64)  # distances: 0-1 3, 0-2 1, 0-3 1, 1-3 2, 2-3 2, 1-2 4
    for search in (near_duplicate_pairs, near_duplicate_pairs_exhaustive):
        assert search(hashes, 1).tolist() == [[0, 2], [0, 3]]
        assert search(hashes, 2).tolist() == [[0, 2], [0, 3], [1, 3], [2, 3]]
        assert search(hashes, 0).tolist() == []
    assert near_duplicate_pairs(np.array([5, 5, 5], dtype=np.uint64), 0).tolist() == [[0, 1], [0, 2], [1, 2]]


@pytest.mark.parametrize("threshold", [0, 1, 4, 7, 9])
def test_near_duplicate_index_finds_exactly_the_all_pairs_result(threshold):
    rng = np.random.default_rng(threshold)
    hashes = rng.integers(0, 2**64, size=2000, dtype=np.uint64, endpoint=False)
    for k in range(200):  # plant copies with 0..threshold+1 random bits flipped (some just past the threshold)
        bits = rng.choice(64, size=int(rng.integers(0, threshold + 2)), replace=False)
        hashes[rng.integers(2000)] = hashes[rng.integers(2000)] ^ np.uint64(sum(1 << int(b) for b in bits))
    expected = near_duplicate_pairs_exhaustive(hashes, threshold)
    assert len(expected) > 50
    assert np.array_equal(near_duplicate_pairs(hashes, threshold), expected)


# -- audit: file-level reasons ---------------------------------------------------------------------


def test_decode_errors_bombs_and_small_images(tmp_path):
    root = tmp_path / "data"
    save_image(root / "dent" / "ok.jpg", 1)
    save_image(root / "dent" / "big.png", 2, (400, 300))
    save_image(root / "dent" / "tiny.jpg", 3, (30, 60))
    (root / "dent" / "corrupt.jpg").write_bytes(os.urandom(500))
    data = jpeg_bytes(smooth_image(4))
    (root / "dent" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    metrics, manifest, quarantine = audit(root, "folders", tmp_path / "out", max_pixels=100_000)
    assert [r["path"] for r in manifest] == ["dent/ok.jpg"]
    rows = file_rows(quarantine)
    assert {p: r for p, (r, _) in rows.items()} == {
        "dent/big.png": "decompression_bomb", "dent/corrupt.jpg": "decode_error",
        "dent/truncated.jpg": "decode_error", "dent/tiny.jpg": "too_small"}
    assert "30x60" in rows["dent/tiny.jpg"][1]
    assert all(q["item_id"] and len(q["item_id"]) == 64 for q in quarantine)
    assert (metrics["quarantine_decode_error"], metrics["quarantine_decompression_bomb"], metrics["quarantine_too_small"]) == (2, 1, 1)


def test_exact_duplicates_keep_the_first_path(tmp_path):
    root = tmp_path / "data"
    save_image(root / "dent" / "b.jpg", 1)
    shutil.copy(root / "dent" / "b.jpg", root / "dent" / "a.jpg")
    shutil.copy(root / "dent" / "b.jpg", root / "dent" / "c.jpg")
    metrics, manifest, quarantine = audit(root, "folders", tmp_path / "out")
    assert [r["path"] for r in manifest] == ["dent/a.jpg"]
    assert file_rows(quarantine) == {"dent/b.jpg": ("exact_duplicate", "dent/a.jpg"), "dent/c.jpg": ("exact_duplicate", "dent/a.jpg")}
    assert metrics["quarantine_exact_duplicate"] == 2


def near_dup_dataset(root: Path) -> None:
    """a ~ b (b = a resized and re-encoded); b shares group g2 with c; d is alone."""
    save_image(root / "a.jpg", 1, quality=95)
    (root / "b.jpg").write_bytes(jpeg_bytes(smooth_image(1).resize((150, 112)), quality=60))
    save_image(root / "c.jpg", 2)
    save_image(root / "d.jpg", 3)
    write_jsonl(root, [{"path": "a.jpg", "label": "dent", "group": "g1"}, {"path": "b.jpg", "label": "dent", "group": "g2"},
                       {"path": "c.jpg", "label": "crack", "group": "g2"}, {"path": "d.jpg", "label": "crack", "group": "g3"}])


def test_near_duplicates_policy_group_merges_groups(tmp_path):
    near_dup_dataset(tmp_path / "data")
    metrics, manifest, quarantine = audit(tmp_path / "data", "jsonl", tmp_path / "out")
    got = {r["path"]: (r["group_id"], r["near_duplicate_of"]) for r in manifest}
    assert got == {"a.jpg": ("g1", None), "b.jpg": ("g1", "a.jpg"), "c.jpg": ("g1", None), "d.jpg": ("g3", None)}
    assert quarantine == []
    assert (metrics["n_near_duplicate_groups"], metrics["n_near_duplicates"], metrics["n_groups"]) == (1, 1, 2)


def test_near_duplicates_policy_drop(tmp_path):
    near_dup_dataset(tmp_path / "data")
    metrics, manifest, quarantine = audit(tmp_path / "data", "jsonl", tmp_path / "out", near_duplicate_policy="drop")
    assert {r["path"]: r["group_id"] for r in manifest} == {"a.jpg": "g1", "c.jpg": "g2", "d.jpg": "g3"}
    assert file_rows(quarantine) == {"b.jpg": ("near_duplicate", "a.jpg")}
    assert metrics["quarantine_near_duplicate"] == 1


@pytest.mark.slow
def test_licence_filter(tmp_path):
    root = tmp_path / "data"
    for i, name in enumerate("abc"):
        save_image(root / f"{name}.jpg", i)
    write_jsonl(root, [{"path": "a.jpg", "label": "dent", "license": "cc-by"},
                       {"path": "b.jpg", "label": "dent", "license": "proprietary"},
                       {"path": "c.jpg", "label": "dent"}])
    _, manifest, quarantine = audit(root, "jsonl", tmp_path / "out", allowed_licenses=["cc-by"])
    assert [(r["path"], r["license"]) for r in manifest] == [("a.jpg", "cc-by"), ("c.jpg", None)]
    assert file_rows(quarantine) == {"b.jpg": ("license_rejected", "'proprietary' not in allowed_licenses")}
    _, manifest, _ = audit(root, "jsonl", tmp_path / "out2")
    assert len(manifest) == 3


def test_jsonl_path_problems_reach_the_quarantine(tmp_path):
    root = tmp_path / "data"
    save_image(root / "a.jpg", 1)
    outside = save_image(tmp_path / "outside.jpg", 2)
    os.symlink(outside, root / "link.jpg")
    write_jsonl(root, [{"path": "a.jpg", "label": "dent"}, {"path": "../outside.jpg", "label": "dent"},
                       {"path": str(outside), "label": "dent"}, {"path": "link.jpg", "label": "dent"},
                       {"path": "gone.jpg", "label": "dent"}, {"url": "s3://bucket/x.jpg", "label": "dent"}, "[1, 2"])
    metrics, manifest, quarantine = audit(root, "jsonl", tmp_path / "out")
    assert [r["path"] for r in manifest] == ["a.jpg"]
    assert {p: r for p, (r, _) in file_rows(quarantine).items()} == {
        "../outside.jpg": "path_escape", str(outside): "path_escape", "link.jpg": "path_escape",
        "gone.jpg": "missing_file", "s3://bucket/x.jpg": "url_not_fetchable", "manifest.jsonl:7": "bad_record"}
    assert metrics["quarantine_path_escape"] == 3 and metrics["quarantine_bad_record"] == 1


# -- audit: annotations (LabelMe) -------------------------------------------------------------------


def test_annotation_checks_clip_drop_and_relabel(tmp_path):
    root = tmp_path / "data"
    w, h = 160, 120
    name = write_labelme(root, 1, [
        shape("2", [[-20, 10], [60, 10], [60, 50], [-20, 50]]),  # dent, partly outside: clipped to x >= 0
        shape("5", [[500, 500], [600, 500], [600, 600], [500, 600]]),  # crack, entirely outside
        shape("4", [[1, 1], [5, 5]]),  # 2 points
        shape("3", [[0, 0], [10, 10], [20, 20]]),  # collinear: zero area
        shape("1", [[100, 60], [150, 60], [150, 110], [100, 110]]),  # surface_scratch 2500 px^2 inside
        shape("77", SMALL),  # unknown label
    ], size=(w, h))
    metrics, manifest, quarantine = audit(root, "labelme", tmp_path / "out")
    (row,) = manifest
    dent, scratch = annotations_from_json(row["annotations"])
    assert dent.label == "dent" and same_ring(dent.points, [[0.0, 10.0], [60.0, 10.0], [60.0, 50.0], [0.0, 50.0]])
    assert (scratch.label, scratch.points) == ("surface_scratch", [[100.0, 60.0], [150.0, 60.0], [150.0, 110.0], [100.0, 110.0]])
    # the dent lost area to clipping (2400 < 2500): the label is recomputed from what is left
    assert (row["label"], row["damage_types"], row["n_annotations"]) == ("surface_scratch", ["dent", "surface_scratch"], 2)
    shapes = sorted((q["reason"], q["level"], q["path"]) for q in quarantine)
    assert shapes == sorted([("polygon_outside_image", "shape", name), ("degenerate_polygon", "shape", name),
                             ("degenerate_polygon", "shape", name), ("unknown_label", "shape", name)])
    assert all(q["item_id"] == row["item_id"] for q in quarantine)
    assert metrics["n_polygons_clipped"] == 1 and metrics["n_shapes_quarantined"] == 4 and metrics["n_quarantined"] == 0


def test_no_valid_annotation_and_sidecars_of_rejected_images(tmp_path):
    root = tmp_path / "data"
    bad = write_labelme(root, 1, [shape("2", [[1, 1], [2, 2]])], truth=True)
    small = write_labelme(root, 2, [shape("2", BIG)], size=(40, 20))
    good = write_labelme(root, 3, [shape("2", BIG)])
    metrics, manifest, quarantine = audit(root, "labelme", tmp_path / "out")
    assert [r["path"] for r in manifest] == [good]
    rows = file_rows(quarantine)

    def label_of(image: str) -> str:
        return image.replace("_imageDANO_original.jpg", "_labelDANO_modificado.json")

    assert rows[bad][0] == "no_valid_annotation"
    assert rows[label_of(bad)][0] == "no_valid_annotation" and rows[bad.replace(".jpg", ".json")][0] == "no_valid_annotation"
    assert rows[small][0] == "too_small" and rows[label_of(small)] == ("too_small", f"annotation of quarantined image {small}")
    assert metrics["quarantine_no_valid_annotation"] == 3


def test_labelme_file_problems_and_report(tmp_path):
    root = tmp_path / "data"
    write_labelme(root, 1, [shape("2", BIG)])
    write_labelme(root, 2, None)  # ko without damage file
    write_labelme(root, 3, None, state="ok", a="7", b="8", zone=9)
    malformed = write_labelme(root, 4, [])
    (root / malformed.replace("_imageDANO_original.jpg", "_labelDANO_modificado.json")).write_text("{")
    save_image(root / "photo.jpg", 5)
    (root / "zona1_ko_1_2_x_zona_3_labelDANO_modificado.json").write_text("{}")
    (root / "notes.txt").write_text("x")
    metrics, manifest, _ = audit(root, "labelme", tmp_path / "out")
    assert [(r["label"], r["zone"], r["zone_name"]) for r in manifest] == [("dent", 3, "front_right_fender"),
                                                                          ("no_damage", 9, "passenger_side_door")]
    for reason, n in {"missing_annotation": 2, "malformed_annotation": 1, "bad_filename": 1, "orphan_annotation": 1,
                      "unsupported_file": 1}.items():
        assert metrics[f"quarantine_{reason}"] == n, reason
    report = (tmp_path / "out" / "report.md").read_text()
    assert "![class histogram](class_hist.png)" in report and "![zone histogram](zone_hist.png)" in report
    assert "| missing_annotation | 2 | 0 |" in report and "| dent | 1 |" in report and "| 3 front_right_fender | 1 |" in report
    assert json.loads((tmp_path / "out" / "audit_summary.json").read_text()) == metrics
    assert all(isinstance(v, int) for v in metrics.values())
    assert {f"quarantine_{r}" for r in REASONS} <= set(metrics)


# -- outputs: schema, determinism, accounting --------------------------------------------------------


def mixed_dataset(root: Path) -> None:
    """LabelMe data with most kinds of trouble at once."""
    write_labelme(root, 1, [shape("2", BIG), shape("9", SMALL)], truth=True)
    write_labelme(root, 2, [shape("1", [[-5, -5], [50, -5], [50, 50], [-5, 50]])], a="3", b="4")
    write_labelme(root, 3, None, state="ok", zone=5)
    write_labelme(root, 4, None)
    write_labelme(root, 5, [shape("2", [[1, 1], [3, 3]])], size=(20, 20))
    dup = write_labelme(root, 6, [shape("6", BIG)], a="9", b="9")
    shutil.copy(root / dup, root / dup.replace("_zona_3_", "_zona_4_"))
    (root / "broken_imageDANO_original.jpg").write_bytes(b"\xff\xd8garbage")
    (root / write_labelme(root, 7, None, state="ok", zone=1)).write_bytes(b"neither JPEG nor anything")
    (root / "README.md").write_text("about")


def test_outputs_schema_and_byte_identical_reruns(tmp_path):
    mixed_dataset(tmp_path / "data")
    audit(tmp_path / "data", "labelme", tmp_path / "one")
    audit(tmp_path / "data", "labelme", tmp_path / "two", workers=1)
    for name in OUTPUTS:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    manifest = pq.read_table(tmp_path / "one" / "manifest.parquet")
    assert manifest.schema.equals(MANIFEST_SCHEMA)
    assert pq.read_table(tmp_path / "one" / "quarantine.parquet").schema.equals(QUARANTINE_SCHEMA)
    paths = manifest.column("path").to_pylist()
    assert paths == sorted(paths) and len(paths) == 4
    assert (tmp_path / "one" / "class_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    quarantine = pq.read_table(tmp_path / "one" / "quarantine.parquet").to_pylist()
    assert [q["detail"] for q in quarantine if q["reason"] == "decode_error"] == ["UnidentifiedImageError: cannot identify image file"]


@pytest.mark.parametrize("fmt", ["labelme", "coco", "jsonl", "folders"])
def test_every_file_lands_in_exactly_one_place(tmp_path, fmt):
    root = tmp_path / "data"
    if fmt == "labelme":
        mixed_dataset(root)
    elif fmt == "coco":
        for i in range(4):
            save_image(root / "imgs" / f"{i}.jpg", i, (160, 120) if i else (20, 20))
        shutil.copy(root / "imgs" / "1.jpg", root / "imgs" / "dup.jpg")
        save_image(root / "loose" / "u.jpg", 9)
        imgs = [{"id": i, "file_name": f"{i}.jpg"} for i in range(4)] + [{"id": 9, "file_name": "dup.jpg"}]
        write_coco(root / "imgs" / "annotations.json", imgs, [{"id": 1, "image_id": 2, "category_id": 6, "segmentation": [[1, 1, 2, 2]]}])
    elif fmt == "jsonl":
        near_dup_dataset(root)
        (root / "extra.txt").write_text("x")
    else:
        save_image(root / "dent" / "a.jpg", 1)
        shutil.copy(root / "dent" / "a.jpg", root / "dent" / "b.jpg")
        (root / "dent" / "c.jpg").write_bytes(b"junk")
        (root / "top.txt").write_text("x")
    _, manifest, quarantine = audit(root, fmt, tmp_path / "out", near_duplicate_policy="drop")
    files = scan(root, fmt, DataConfig()).files
    in_manifest = {p for r in manifest for p in (r["path"], r["annotation_path"], *r["extra_paths"]) if p}
    quarantined = [q["path"] for q in quarantine if q["level"] == "file"]
    assert len(quarantined) == len(set(quarantined))
    for f in files:
        assert (f in in_manifest) + (f in quarantined) == 1, f
    assert in_manifest <= set(files)


# -- real data ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_coco_dataset(tmp_path):
    coco = Path(__file__).resolve().parents[3] / "shared" / "data" / "car-damage-coco"
    if not coco.is_dir():
        pytest.skip(f"real dataset not present at {coco}")
    scanned = scan(coco, "coco", DataConfig())
    assert len(scanned.candidates) == 70
    metrics, manifest, quarantine = audit(coco, "coco", tmp_path / "out", min_side=100, workers=0)
    rows = file_rows(quarantine)
    unlabeled = {p for p, (r, _) in rows.items() if r == "missing_annotation"}
    assert len(unlabeled) == 8 and all(p.startswith("unlabeled/") for p in unlabeled)
    # train/48.jpg is a byte-identical copy of train/25.jpg: 69 images stay, one exact duplicate
    assert rows.get("train/48.jpg") == ("exact_duplicate", "train/25.jpg")
    assert len(manifest) + metrics["quarantine_exact_duplicate"] == 70
    assert {r["label"] for r in manifest} == {"damage"} and all(r["has_damage"] for r in manifest)
    parts = {"headlamp", "door", "front_bumper", "hood", "rear_bumper"}
    assert sum(r["zone_name"] in parts for r in manifest) >= 0.9 * len(manifest)
    assert all(r["license"] and r["width"] >= 100 for r in manifest)


def test_nothing_usable_is_one_dataset_error_that_names_the_format(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"0 files seen.*no candidate image at all.*do not look like any"):
        audit(tmp_path / "empty", "labelme", tmp_path / "out1")
    coco = tmp_path / "coco"
    save_image(coco / "images" / "a.jpg", 1)
    save_image(coco / "images" / "b.jpg", 2)
    write_coco(coco / "annotations.json", [{"id": 1, "file_name": "images/a.jpg", "width": 160, "height": 120}], [])
    with pytest.raises(DatasetError) as err:
        audit(coco, "labelme", tmp_path / "out2")
    msg = str(err.value)
    assert "3 files seen" in msg and "bad_filename x2" in msg and "unsupported_file x1" in msg
    assert "look like `coco`, not `labelme`" in msg and "--format coco" in msg
    assert not (tmp_path / "out2" / "manifest.parquet").exists()
    # The same files of the right format would pass; files of the right format that are all bad say so.
    bad = tmp_path / "bad"
    write_labelme(bad, 1, None)  # ko photo without its damage file
    with pytest.raises(DatasetError, match=r"missing_annotation x1.*do look like `labelme`"):
        audit(bad, "labelme", tmp_path / "out3")


def test_non_polygon_shapes_reach_the_manifest_as_regions(tmp_path):
    root = tmp_path / "data"
    write_labelme(root, 1, [
        {"label": "2", "points": [[150, 60], [190, 100]], "shape_type": "rectangle"},  # crosses x = 160: clipped
        {"label": "5", "points": [[40, 40], [40, 50]], "shape_type": "circle"},
        {"label": "1", "points": [[10, 10], [10, 10], [20, 20], [20, 20]], "shape_type": "polygon"},  # no area
        shape("3", [[100, 10], [140, 50], [140, 10], [100, 50]]),  # bow-tie: two triangles of 400 px^2
    ])
    metrics, manifest, quarantine = audit(root, "labelme", tmp_path / "out")
    (row,) = manifest
    anns = annotations_from_json(row["annotations"])
    from pipeline.core.geometry import polygon_area

    got = sorted((a.label, a.shape_type, round(polygon_area(a.points))) for a in anns)
    assert got == [("crack", "circle", 314), ("dent", "rectangle", 400), ("paint_peeling", "polygon", 400),
                   ("paint_peeling", "polygon", 400)]
    assert row["label"] == "paint_peeling" and row["n_annotations"] == 4
    assert metrics["n_polygons_clipped"] == 1 and metrics["n_polygons_repaired"] == 1
    assert [(q["reason"], q["level"]) for q in quarantine] == [("degenerate_polygon", "shape")]
