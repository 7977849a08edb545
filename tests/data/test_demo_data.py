"""The synthetic demo data: naming, balance, annotations, bad examples, determinism."""
from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline.core.config import DemoConfig
from pipeline.demo.generator import generate_demo_data
from pipeline.demo.geometry import polygon_area
from pipeline.data.manifest import DAMAGE_TYPES, REASONS

NAME = re.compile(
    r"^zona1_(ko|ok)_(\d+)_(\d+)_(\d{8}T\d{6})_zona_(\d+)_(imageDANO_original\.jpg|labelDANO_modificado\.json)$"
)
DAMAGE_LABELS = {str(k) for k in DAMAGE_TYPES}
W, H = 256, 192


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("demo") / "data"
    summary = generate_demo_data(root, DemoConfig(n_images=48, seed=3, width=W, height=H), progress=False)
    return root, summary


def stem(name: str) -> str:
    return name.rsplit("_", 2)[0]


def normal_files(root: Path, summary: dict[str, Any]) -> list[Path]:
    """Files of the normal photos (not of a bad example: an annotation's image counts as bad too)."""
    bad = {stem(n) for n in summary["bad_examples"]}
    return sorted(p for p in root.iterdir() if p.name != "dataset.json" and stem(p.name) not in bad)


def label_file(image: Path) -> Path:
    return image.with_name(image.name.replace("_imageDANO_original.jpg", "_labelDANO_modificado.json"))


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    cfg = DemoConfig(n_images=20, seed=11, width=160, height=120)
    generate_demo_data(tmp_path / "a", cfg, progress=False)
    generate_demo_data(tmp_path / "b", cfg, progress=False)
    generate_demo_data(tmp_path / "c", cfg.model_copy(update={"seed": 12}), progress=False)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir() if p.suffix == ".jpg"}
    assert set(other).isdisjoint(n for n in names if n.endswith(".jpg"))


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_demo_data(tmp_path, DemoConfig(n_images=20, width=160, height=120), progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_names_and_dataset_json(demo: tuple[Path, dict[str, Any]]) -> None:
    root, summary = demo
    for p in root.iterdir():
        if p.name != "dataset.json":
            m = NAME.match(p.name)
            assert m, p.name
            assert 1 <= int(m.group(5)) <= 10
    meta = json.loads((root / "dataset.json").read_text())
    assert meta == {"synthetic": True, "generator": "pipeline demo-data", "seed": 3, "n_images": 48,
                    "license": "CC0-1.0 (synthetic)"}
    assert summary["n_files"] == sum(1 for _ in root.iterdir())


def test_balance_zones_types_and_vehicles(demo: tuple[Path, dict[str, Any]]) -> None:
    root, summary = demo
    images = [p for p in normal_files(root, summary) if p.suffix == ".jpg"]
    assert len(images) == 48
    status = Counter(NAME.match(p.name).group(1) for p in images)  # type: ignore[union-attr]
    assert status == {"ko": 24, "ok": 24}
    assert {int(NAME.match(p.name).group(5)) for p in images} == set(range(1, 11))  # type: ignore[union-attr]
    vehicles = Counter("_".join(NAME.match(p.name).group(2, 3)) for p in images)  # type: ignore[union-attr]
    assert all(3 <= n <= 6 for n in vehicles.values())
    by_vehicle: dict[str, set[str]] = {}
    for p in images:
        m = NAME.match(p.name)
        by_vehicle.setdefault(m.group(2), set()).add(m.group(1))  # type: ignore[union-attr]
    assert any(s == {"ko", "ok"} for s in by_vehicle.values())
    dominant = Counter()
    for p in images:
        if p.name.startswith("zona1_ko_"):
            dominant[json.loads(label_file(p).read_text())["shapes"][0]["label"]] += 1
    assert set(dominant) == DAMAGE_LABELS and max(dominant.values()) - min(dominant.values()) <= 1
    assert summary["dominant_types"] == {DAMAGE_TYPES[int(k)]: n for k, n in sorted(dominant.items(), key=lambda kv: int(kv[0]))}


def test_annotations(demo: tuple[Path, dict[str, Any]]) -> None:
    root, summary = demo
    labels = Counter()
    for p in normal_files(root, summary):
        if p.suffix != ".jpg":
            continue
        lab = label_file(p)
        with Image.open(p) as im:
            assert im.size == (W, H)
        if p.name.startswith("zona1_ok_"):
            if lab.exists():  # an ok photo may carry a label file with label "9" (not damage) only
                shapes = json.loads(lab.read_text())["shapes"]
                assert {s["label"] for s in shapes} == {"9"}
                labels["9"] += len(shapes)
            continue
        doc = json.loads(lab.read_text())
        assert doc["imagePath"] == p.name and doc["imageData"] is None and doc["version"] == "5.2.1"
        assert (doc["imageWidth"], doc["imageHeight"]) == (W, H)
        damage = [s for s in doc["shapes"] if s["label"] in DAMAGE_LABELS]
        assert 1 <= len(damage) <= 3 and all(s["label"] in DAMAGE_LABELS | {"9"} for s in doc["shapes"])
        area: Counter[str] = Counter()
        for s in doc["shapes"]:
            assert s["shape_type"] == "polygon" and len(s["points"]) >= 3
            assert all(0 <= x <= W and 0 <= y <= H for x, y in s["points"])
            assert polygon_area(s["points"]) > 0
            labels[s["label"]] += 1
            if s["label"] in DAMAGE_LABELS:
                area[s["label"]] += polygon_area(s["points"])
        first = damage[0]["label"]
        assert max(area, key=area.get) == first  # type: ignore[arg-type]
        assert max(damage, key=lambda s: polygon_area(s["points"]))["label"] == first
    assert DAMAGE_LABELS <= set(labels)
    assert summary["damage_shapes"] == {DAMAGE_TYPES[int(k)]: n for k, n in labels.items() if k != "9"} | {
        name: 0 for k, name in DAMAGE_TYPES.items() if str(k) not in labels}
    assert summary["sticker_shapes"] == labels["9"]


def test_bad_examples(demo: tuple[Path, dict[str, Any]]) -> None:
    root, summary = demo
    bad = summary["bad_examples"]
    assert set(bad.values()) <= set(REASONS) | {"polygon_clipped"}
    assert {"decode_error", "too_small", "exact_duplicate", "near_duplicate", "missing_annotation",
            "malformed_annotation", "unknown_label", "degenerate_polygon", "polygon_clipped",
            "polygon_outside_image"} == set(bad.values())
    normal = {p.name: p.read_bytes() for p in normal_files(root, summary) if p.suffix == ".jpg"}
    for name, reason in bad.items():
        path = root / name
        assert path.is_file() and NAME.match(name), name
        if reason == "decode_error":
            with pytest.raises(Exception):
                with Image.open(path) as im:
                    im.load()
        elif reason == "too_small":
            assert Image.open(path).size == (60, 40)
        elif reason == "exact_duplicate":
            assert path.read_bytes() in normal.values() and name not in normal
            original = next(n for n, b in normal.items() if b == path.read_bytes())
            assert name.split("_")[2:4] == original.split("_")[2:4] and original < name  # kept one sorts first
        elif reason == "near_duplicate":
            size = Image.open(path).size
            assert size != (W, H) and abs(size[0] - W) <= 0.02 * W
            vehicle = name.split("_")[2:4]
            assert any(n.split("_")[2:4] == vehicle for n in normal)
        elif reason == "missing_annotation":
            assert name.startswith("zona1_ko_") and not label_file(path).exists()
        else:
            image = root / name.replace("_labelDANO_modificado.json", "_imageDANO_original.jpg")
            assert image.is_file()
            if reason == "malformed_annotation":
                with pytest.raises(json.JSONDecodeError):
                    json.loads(path.read_text())
                continue
            shapes = json.loads(path.read_text())["shapes"]
            assert any(s["label"] in DAMAGE_LABELS and len(s["points"]) >= 3 and
                       all(0 <= x <= W and 0 <= y <= H for x, y in s["points"]) for s in shapes)
            extra = shapes[-1]["points"]
            if reason == "unknown_label":
                assert shapes[-1]["label"] == "12"
            elif reason == "degenerate_polygon":
                assert len(extra) == 2
            elif reason == "polygon_clipped":
                assert any(x > W for x, _ in extra) and any(x < W for x, _ in extra)
            else:
                assert all(x > W for x, _ in extra)


def test_without_bad_examples(tmp_path: Path) -> None:
    summary = generate_demo_data(tmp_path / "d", DemoConfig(n_images=20, seed=2, width=160, height=120,
                                                            bad_examples=False), progress=False)
    files = list((tmp_path / "d").iterdir())
    n_labels = sum(p.suffix == ".json" and p.name != "dataset.json" for p in files)
    assert summary["bad_examples"] == {} and len(files) == 20 + n_labels + 1
    for p in files:
        if p.suffix == ".jpg":
            Image.open(io.BytesIO(p.read_bytes())).load()


@pytest.mark.slow
def test_users_naming_constant_2_3_splits_into_three_non_empty_parts(tmp_path: Path, caplog) -> None:
    import pyarrow.parquet as pq

    from pipeline.core.config import AuditConfig, DataConfig, SplitConfig
    from pipeline.data.audit import run_audit
    from pipeline.data.split import LABELME_NO_VEHICLE, run_split
    from pipeline.demo.generator import USERS_VEHICLE_ID

    root = tmp_path / "users"
    summary = generate_demo_data(root, DemoConfig(n_images=81, seed=5, width=160, height=120, bad_examples=False),
                                 progress=False, vehicle_id=USERS_VEHICLE_ID)
    images = [p.name for p in root.iterdir() if p.suffix == ".jpg"]
    assert len(images) == 81 and summary["n_vehicles"] == 1
    assert all(NAME.match(n) and n.split("_")[2:4] == ["2", "3"] for n in images)

    def split_of(group_by: str) -> tuple[dict, str]:
        out = tmp_path / group_by
        run_audit(root, "labelme", DataConfig(labelme_group_by=group_by), AuditConfig(workers=2), out / "audit",
                  progress=False)
        metrics = run_split(out / "audit" / "manifest.parquet", SplitConfig(), out / "split")
        return metrics, (out / "split" / "report.md").read_text()

    metrics, report = split_of("image")  # the default
    assert metrics["n_items"] == 81 and metrics["n_groups"] >= 80  # near duplicates aside, one group per photo
    assert min(metrics["n_train"], metrics["n_val"], metrics["n_test"]) > 0
    assert metrics["n_warnings"] == 0 and metrics["largest_group_share"] < 0.05
    assert LABELME_NO_VEHICLE in report and "WARNING" not in report

    with caplog.at_level("WARNING", logger="pipeline.data.split"):
        metrics, report = split_of("vehicle")  # every photo in the one group "veh_2_3"
    assert metrics["n_groups"] == 1 and metrics["largest_group_share"] == 1.0
    assert metrics["n_train"] == 81 and metrics["n_val"] == metrics["n_test"] == 0
    assert metrics["n_warnings"] == 3 and metrics["n_empty_splits"] == 2
    assert "one group holds 81 of 81 items" in report and "split `val` is empty" in report
    assert sum("split:" in r.getMessage() for r in caplog.records) == 3
    assert pq.read_table(tmp_path / "vehicle" / "split" / "split.parquet")["split"].unique().to_pylist() == ["train"]


def test_small_frames_with_any_seed_render(tmp_path):
    """A zone's panel box can reach past a small frame (zoom, shift); the marks still render (seed 5 at
    224x160 used to raise IndexError from getpixel)."""
    from pipeline.core.config import DemoConfig
    from pipeline.demo.generator import generate_demo_data

    for seed in (5, 7):
        out = tmp_path / f"d{seed}"
        generate_demo_data(out, DemoConfig(n_images=20, seed=seed, width=224, height=160, bad_examples=False),
                           progress=False)
        assert len(list(out.rglob("*.jpg"))) == 20
