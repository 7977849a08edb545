"""The split phase: per-class rules, group awareness, train coverage, determinism, stability."""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import SplitConfig
from pipeline.data.manifest import MANIFEST_SCHEMA
from pipeline.data.split import Unit, class_targets, cover_train, run_split

DEFAULTS: dict[str, Any] = {
    "width": 64, "height": 48, "has_damage": False, "damage_types": [], "annotations": "[]", "n_annotations": 0,
    "source_format": "labelme", "extra_paths": [], "orig_mode": "RGB", "exif_rotated": False, "synthetic": True,
}


def item(path: str, label: str, group: str | None = None, **extra: Any) -> dict[str, Any]:
    """A manifest row; item_id derives from the path unless given."""
    return {"path": path, "item_id": hashlib.sha256(path.encode()).hexdigest(), "label": label,
            "group_id": group if group is not None else f"g-{path}", **extra}


def write_manifest(rows: list[dict[str, Any]], path: Path) -> Path:
    cols = {name: [r.get(name, DEFAULTS.get(name)) for r in rows] for name in MANIFEST_SCHEMA.names}
    pq.write_table(pa.table(cols, schema=MANIFEST_SCHEMA), path)
    return path


def split_of(out: Path) -> dict[str, str]:
    t = pq.read_table(out / "split.parquet")
    return dict(zip(t["path"].to_pylist(), t["split"].to_pylist()))


def run(rows: list[dict[str, Any]], tmp: Path, name: str = "out", **cfg: Any) -> tuple[dict[str, float], dict[str, str], Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(rows, tmp / f"{name}-manifest.parquet")
    out = tmp / name
    metrics = run_split(manifest, SplitConfig(**cfg), out)
    return metrics, split_of(out), out


def counts(rows: list[dict[str, Any]], splits: dict[str, str], key: str = "label") -> dict[str, Counter]:
    per: dict[str, Counter] = {}
    for r in rows:
        per.setdefault(str(r[key]), Counter())[splits[r["path"]]] += 1
    return per


def vehicles(n: int, seed: int = 0, prefix: str = "v") -> list[dict[str, Any]]:
    """n vehicles of 3-6 photos each, half without damage, the rest of eight damage classes."""
    rnd = random.Random(seed)
    rows = []
    for v in range(n):
        for k in range(rnd.randint(3, 6)):
            label = "no_damage" if rnd.random() < 0.5 else f"d{rnd.randint(1, 8)}"
            rows.append(item(f"{prefix}{v:04d}_{k}.jpg", label, group=f"{prefix}{v:04d}", zone=k + 1,
                             has_damage=label != "no_damage"))
    return rows


@pytest.mark.parametrize(
    "n, ratios, expected",
    [
        (1, (0.8, 0.1, 0.1), (1, 0, 0)),
        (2, (0.8, 0.1, 0.1), (1, 1, 0)),
        (3, (0.8, 0.1, 0.1), (1, 1, 1)),
        (10, (0.8, 0.1, 0.1), (8, 1, 1)),
        (100, (0.8, 0.1, 0.1), (80, 10, 10)),
        (10, (0.7, 0.15, 0.15), (6, 2, 2)),
        (20, (0.7, 0.15, 0.15), (14, 3, 3)),
        (100, (0.7, 0.15, 0.15), (70, 15, 15)),
        (2, (0.9, 0.0, 0.1), (1, 0, 1)),
        (5, (1.0, 0.0, 0.0), (5, 0, 0)),
        (3, (0.0, 0.5, 0.5), (1, 1, 1)),
    ],
)
def test_class_targets(n: int, ratios: tuple[float, float, float], expected: tuple[int, int, int]) -> None:
    assert class_targets(n, ratios) == expected


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.7, 0.15, 0.15)])
def test_singleton_groups_meet_the_targets_exactly(tmp_path: Path, ratios: tuple[float, float, float]) -> None:
    sizes = {"one": 1, "two": 2, "three": 3, "ten": 10, "hundred": 100}
    rows = [item(f"{c}/{i:03d}.jpg", c) for c, n in sizes.items() for i in range(n)]
    metrics, splits, out = run(rows, tmp_path, ratios=ratios)
    per = counts(rows, splits)
    for c, n in sizes.items():
        assert tuple(per[c][s] for s in ("train", "val", "test")) == class_targets(n, ratios), c
    assert metrics["target_deviation"] == 0
    assert metrics["n_items"] == len(rows) and metrics["n_excluded"] == 0
    summary = json.loads((out / "split_summary.json").read_text())
    assert summary["classes"]["two"]["target"] == [1, 1, 0]


def test_outputs_columns_order_and_report(tmp_path: Path) -> None:
    rows = vehicles(20)
    random.Random(1).shuffle(rows)
    metrics, _, out = run(rows, tmp_path)
    t = pq.read_table(out / "split.parquet")
    assert t.column_names == MANIFEST_SCHEMA.names + ["split"]
    assert t.schema.field("split").type == pa.string()
    assert t["path"].to_pylist() == sorted(r["path"] for r in rows)
    assert set(t["split"].to_pylist()) == {"train", "val", "test"}
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == len(rows)
    report = (out / "report.md").read_text()
    for text in ("| train |", "## Items per class", "## Classes per split", "group_overlap", "item_id_overlap",
                 "near_duplicate_pairs_split", "val_test_classes_missing_in_train", "excluded by the subset filter: 0"):
        assert text in report
    assert "FAIL" not in report


@pytest.mark.parametrize("n_vehicles", [8, 60, 300])
def test_groups_stay_together_and_val_test_classes_are_in_train(tmp_path: Path, n_vehicles: int) -> None:
    rows = vehicles(n_vehicles, seed=n_vehicles)
    metrics, splits, _ = run(rows, tmp_path)
    by_group: dict[str, set[str]] = {}
    for r in rows:
        by_group.setdefault(r["group_id"], set()).add(splits[r["path"]])
    assert all(len(s) == 1 for s in by_group.values())
    per = counts(rows, splits)
    assert all(c["train"] > 0 for c in per.values() if c["val"] or c["test"])
    for key in ("leak_group_overlap", "leak_item_id_overlap", "leak_near_duplicate_pairs_split",
                "leak_val_test_classes_missing_in_train"):
        assert metrics[key] == 0, key
    if n_vehicles == 300:  # enough groups: every class is close to its targets
        for c, cnt in per.items():
            targets = class_targets(sum(cnt.values()), (0.8, 0.1, 0.1))
            assert all(abs(cnt[s] - t) <= max(4, 0.4 * t) for s, t in zip(("train", "val", "test"), targets)), c


def test_cover_train_moves_the_smallest_unit() -> None:
    units = [Unit("a", [0], Counter({"x": 1})), Unit("b", [1, 2], Counter({"x": 2})), Unit("c", [3], Counter({"y": 5}))]
    choice = [1, 2, 0]  # x only in val and test
    assert cover_train(units, choice) == [0]
    assert choice == [0, 2, 0]


def test_multi_class_group_holding_a_rare_class(tmp_path: Path) -> None:
    rows = [item(f"common/{i:03d}.jpg", "common") for i in range(40)]
    rows += [item("mixed/a.jpg", "rare", group="mixed"), item("mixed/b.jpg", "common", group="mixed")]
    metrics, splits, _ = run(rows, tmp_path)
    assert splits["mixed/a.jpg"] == splits["mixed/b.jpg"] == "train"  # the only 'rare' item must be in train
    assert metrics["leak_val_test_classes_missing_in_train"] == 0


def test_deterministic_outputs(tmp_path: Path) -> None:
    rows = vehicles(40)
    manifest = write_manifest(rows, tmp_path / "m.parquet")
    run_split(manifest, SplitConfig(), tmp_path / "a")
    run_split(manifest, SplitConfig(), tmp_path / "b")
    for name in ("split.parquet", "report.md", "split_summary.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = run_split(manifest, SplitConfig(seed=7), tmp_path / "c")
    assert other["n_items"] == len(rows)
    assert split_of(tmp_path / "a") != split_of(tmp_path / "c")


def test_changed_item_bytes_change_no_assignment(tmp_path: Path) -> None:
    rows = vehicles(60)
    _, before, _ = run(rows, tmp_path, "before")
    changed = [dict(r) for r in rows]
    for k in (0, 17, 101):
        changed[k]["item_id"] = hashlib.sha256(b"new bytes %d" % k).hexdigest()
    _, after, _ = run(changed, tmp_path, "after")
    assert before == after


@pytest.mark.parametrize("n_vehicles", [60, 300])
def test_new_group_moves_few_others(tmp_path: Path, n_vehicles: int) -> None:
    rows = vehicles(n_vehicles)
    group = {r["path"]: r["group_id"] for r in rows}
    _, before, _ = run(rows, tmp_path, "before")
    moved_groups = []
    for k in range(10):
        new = item(f"new{k}.jpg", ["no_damage", "d3", "d7"][k % 3], group=f"new-vehicle-{k}")
        _, after, _ = run(rows + [new], tmp_path, f"after{k}")
        moved_groups.append(len({group[p] for p in before if before[p] != after[p]}))
    assert max(moved_groups) <= 3, moved_groups  # a new group takes room from at most a few others
    assert sum(moved_groups) <= 6, moved_groups


def test_subset_filter(tmp_path: Path) -> None:
    rows = [item(f"{i:03d}.jpg", f"c{i % 3}", zone=i % 10 + 1, region=["north", "south"][i % 2]) for i in range(60)]
    metrics, splits, out = run(rows, tmp_path, "zones", subset_zones=[1, 2, 3])
    assert metrics["n_items"] == 18 and metrics["n_excluded"] == 42
    assert set(splits) == {r["path"] for r in rows if r["zone"] in (1, 2, 3)}
    assert "excluded by the subset filter: 42" in (out / "report.md").read_text()
    metrics, splits, _ = run(rows, tmp_path, "regions", subset_regions=["south"])
    assert metrics["n_items"] == 30 and set(splits) == {r["path"] for r in rows if r["region"] == "south"}
    metrics, _, _ = run(rows, tmp_path, "both", subset_zones=[2, 4], subset_regions=["south"])
    assert metrics["n_items"] == 12


def test_empty_subset_is_a_clear_error(tmp_path: Path) -> None:
    rows = [item(f"{i}.jpg", "a", zone=1) for i in range(5)]
    with pytest.raises(ValueError, match="subset filter"):
        run(rows, tmp_path, subset_zones=[9])


def test_near_and_exact_duplicates_stay_together(tmp_path: Path) -> None:
    rows = vehicles(60)
    # near duplicates carry their original's group (audit policy 'group') ...
    rows.append(item("near-same-group.jpg", rows[0]["label"], group=rows[0]["group_id"], near_duplicate_of=rows[0]["path"]))
    # ... and stay with it even when they do not; exact duplicates (same item_id) too
    rows += [item(f"near{k}.jpg", rows[k]["label"], near_duplicate_of=rows[k]["path"]) for k in range(1, 40, 3)]
    rows += [dict(item(f"dup{k}.jpg", rows[k]["label"]), item_id=rows[k]["item_id"]) for k in range(2, 40, 3)]
    metrics, splits, _ = run(rows, tmp_path)
    for r in rows:
        if r.get("near_duplicate_of"):
            assert splits[r["path"]] == splits[r["near_duplicate_of"]]
    ids: dict[str, set[str]] = {}
    for r in rows:
        ids.setdefault(r["item_id"], set()).add(splits[r["path"]])
    assert all(len(s) == 1 for s in ids.values())
    assert metrics["leak_near_duplicate_pairs_split"] == 0 and metrics["leak_item_id_overlap"] == 0


@pytest.mark.parametrize("column, classes", [("has_damage", {"True", "False"}), ("zone", {str(z) for z in range(1, 7)})])
def test_stratify_by_other_columns(tmp_path: Path, column: str, classes: set[str]) -> None:
    rows = vehicles(30)
    metrics, _, out = run(rows, tmp_path, stratify_by=column)
    summary = json.loads((out / "split_summary.json").read_text())
    assert set(summary["classes"]) == classes
    assert metrics["leak_group_overlap"] == 0


def test_split_warnings_name_the_dominant_group_and_empty_splits(caplog):
    from pipeline.data.split import split_warnings

    with caplog.at_level("WARNING", logger="pipeline.data.split"):
        warns, share = split_warnings(["g1"] * 6 + ["g2", "g3", "g4"], {"train": 9, "val": 0, "test": 0}, (0.8, 0.2, 0.0))
    assert share == pytest.approx(6 / 9)
    assert len(warns) == 2 and "6 of 9 items (67%): group `g1`" in warns[0] and "`val` is empty" in warns[1]
    assert len(caplog.records) == 2  # the test split's ratio is 0: being empty is no problem
    warns, share = split_warnings(["a", "b", "b", "c"], {"train": 2, "val": 1, "test": 1}, (0.5, 0.25, 0.25))
    assert warns == [] and share == 0.5  # exactly half is not "most"
