"""Validation metrics on embeddings whose structure is known: honest (own photo and group excluded),
headline on the image-query ranking."""
import json

import numpy as np
import pytest

from pipeline.retrieval.validate import _ap_at_r, anisotropy, damage_label, excluded, knn, validate


def make(n_per=30, sep=4.0, seed=0, dim=16):
    rng = np.random.default_rng(seed)
    types = ["dent", "crack", None]
    x, meta = [], []
    for c, t in enumerate(types):
        centre = rng.normal(size=dim) * sep
        for i in range(n_per):
            v = centre + rng.normal(size=dim)
            x.append(v / np.linalg.norm(v))
            meta.append({"crop_id": f"{c}-{i}", "has_damage": t is not None, "damage_types": [t] if t else [],
                         "defects": json.dumps([{"type": t}]) if t else "[]", "zone": 1 + i % 2,
                         "zone_name": f"z{1 + i % 2}", "split": "val" if i % 3 == 0 else "train",
                         "item_id": f"photo-{c}-{i}", "group_id": f"g-{c}-{i}"})
    return np.array(x, dtype=np.float32), meta


@pytest.mark.slow
def test_separated_classes_score_high(tmp_path):
    x, meta = make()
    m = validate(x, meta, tmp_path, k=5)
    assert m["coverage_damaged"] > 0.95 and m["coverage_clean"] > 0.95 and m["coverage_bar_met"] == 1.0
    assert m["precision_at_5_damage_type"] > 0.95 and m["map_at_r_damage_type"] > 0.9
    assert m["cosine_euclidean_agreement"] == pytest.approx(1.0)  # unit vectors: same neighbours
    assert m["silhouette_damage_type"] > 0.3
    assert (m["n_queries"], m["n_query_photos"], m["image_query_headline"]) == (30, 30, 0.0)  # the val crops
    for f in ("report.md", "metrics.json", "pca.png", "tsne.png"):
        assert (tmp_path / f).is_file()
    report = (tmp_path / "report.md").read_text()
    assert "meets the users' bar" in report and "30 queries from 30 photos" in report
    assert "image-only ranking cannot be separated" in report


@pytest.mark.slow
def test_random_vectors_score_near_chance(tmp_path):
    rng = np.random.default_rng(1)
    _, meta = make()
    x = rng.normal(size=(len(meta), 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = validate(x, meta, tmp_path, k=5)
    assert abs(m["precision_at_5_damage_type"] - 1 / 3) < 0.2
    assert m["map_at_r_damage_type"] < 0.6
    assert abs(anisotropy(x)) < 0.05


@pytest.mark.slow
def test_own_photo_and_group_neighbours_do_not_count(tmp_path):
    """Each photo gives 4 near-identical windows, photos themselves are random: counting the query's own
    windows would make retrieval look perfect; excluded, the figures fall to chance."""
    rng = np.random.default_rng(3)
    x, meta = [], []
    for p in range(60):
        base = rng.normal(size=32)
        damaged = p % 2 == 0
        for w in range(4):
            v = base + 0.01 * rng.normal(size=32)
            x.append(v / np.linalg.norm(v))
            meta.append({"crop_id": f"{p}-{w}", "has_damage": damaged, "damage_types": ["dent"] if damaged else [],
                         "zone": 1, "split": "val" if p % 3 == 0 else "train", "item_id": f"photo-{p}",
                         "group_id": f"vehicle-{p // 2}"})
    x = np.array(x, dtype=np.float32)
    leaky = [{**m, "item_id": None, "group_id": None} for m in meta]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    inflated = validate(x, leaky, tmp_path / "a", k=3)
    honest = validate(x, meta, tmp_path / "b", k=3)
    assert inflated["coverage_damaged"] == 1.0 and inflated["map_at_r_damage_type"] > 0.05
    assert honest["coverage_damaged"] < 0.75 and honest["coverage_clean"] < 0.75
    assert honest["n_queries"] == 80 and honest["n_query_photos"] == 20 and honest["n_query_groups"] == 20
    # a photo's 3 other windows and its group partner's 4 are excluded
    assert honest["mean_excluded_references"] == 7.0


def test_knn_and_exclusion_masks():
    x = np.eye(4, dtype=np.float32)[[0, 0, 1, 1]] + np.array([[0, 0, 0, 0.01 * i] for i in range(4)], dtype=np.float32)
    assert knn(x, np.arange(4), 1)[:, 0].tolist() == [1, 0, 3, 2]
    item = np.array(["p", "p", "q", "r"], dtype=object)
    # 0 and 1 come from one photo: their nearest allowed neighbours are elsewhere
    assert knn(x, np.arange(4), 1, item=item)[:, 0].tolist() == [2, 3, 3, 2]
    group = np.array(["", "", "g", "g"], dtype=object)  # an empty key matches nothing
    ex = excluded(np.array([0, 2]), np.array(["", "", "", ""], dtype=object), group)
    assert ex.tolist() == [[True, False, False, False], [False, False, True, True]]
    assert knn(x, np.array([2]), 3, group=group).tolist() == [[1, 0, -1]]  # row 1 shares a tiny component


def test_ap_at_r_matches_pytorch_metric_learning():
    """Our AP@R (needed for per-query exclusions) equals pytorch-metric-learning's mAP@R without them."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from pipeline.retrieval.validate import ranking

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, 3, size=60)
    q = np.arange(60)
    order, allowed = ranking(x, x, excluded(q, np.full(60, "", dtype=object), np.full(60, "", dtype=object)))
    rel = (y[order] == y[:, None]) & (np.arange(60)[None, :] < allowed[:, None])
    ours = float(np.nanmean(_ap_at_r(rel, rel.sum(axis=1))))
    calc = AccuracyCalculator(include=("mean_average_precision_at_r",), device=torch.device("cpu"))
    t = torch.from_numpy(x)
    theirs = calc.get_accuracy(t, torch.from_numpy(y), t, torch.from_numpy(y), ref_includes_query=True)
    assert ours == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert _ap_at_r(np.array([[True, False, True, False]]), np.array([2])).tolist() == [pytest.approx((1 + 0) / 2)]


def test_damage_label_takes_the_most_frequent_defect():
    row = {"has_damage": True, "defects": json.dumps([{"type": "dent"}, {"type": "crack"}, {"type": "dent"}])}
    assert damage_label(row) == "dent"
    assert damage_label({"has_damage": False}) == "clean"


@pytest.mark.slow
def test_filter_checks_flag_a_wrong_retriever(tmp_path):
    x, meta = make()

    def honest(q, k=5, zones=None, has_damage=None, damage_type=None):
        zs = [zones] if isinstance(zones, int) else zones
        ok = [m for m in meta if (has_damage is None or m["has_damage"] == has_damage)
              and (zs is None or m["zone"] in zs) and (damage_type is None or damage_type in m["damage_types"])]
        return [{"crop_id": m["crop_id"]} for m in ok[:k]]

    def sloppy(q, k=5, **kw):  # ignores filters
        return [{"crop_id": m["crop_id"]} for m in meta[-k:]]

    (tmp_path / "g").mkdir()
    (tmp_path / "b").mkdir()
    good = validate(x, meta, tmp_path / "g", k=5, search=honest)
    assert good["filter_checks_passed"] == good["filter_checks_total"] >= 4
    bad = validate(x, meta, tmp_path / "b", k=5, search=sloppy)
    assert bad["filter_checks_passed"] < bad["filter_checks_total"]


@pytest.mark.slow
def test_headline_is_the_image_query_ranking(tmp_path):
    """A text part that names the class makes the fused vectors look perfect; the headline ranks image
    queries (text part zero), here noise, so it falls to chance, and the fused figures sit beside it."""
    x_sep, meta = make()
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(len(meta), 32)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    fused = np.concatenate([0.3 * noise, 0.95 * x_sep], axis=1)
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    m = validate(fused, meta, tmp_path, k=5, image_dims=32)
    assert m["image_query_headline"] == 1.0
    assert m["fused_map_at_r_damage_type"] > 0.9 and m["fused_coverage_damaged"] > 0.95
    assert m["map_at_r_damage_type"] < 0.6 and m["coverage_damaged"] < 0.85 and m["coverage_bar_met"] == 0.0
    report = (tmp_path / "report.md").read_text()
    assert "Image queries" in report and "DOES NOT meet" in report and "Fused vectors" in report
    # the image part carrying the structure scores high on its own
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    m2 = validate(np.concatenate([x_sep, 0.2 * noise[:, :16]], axis=1), meta, tmp_path / "b", k=5, image_dims=16)
    assert m2["map_at_r_damage_type"] > 0.9 and m2["coverage_bar_met"] == 1.0
    assert "fused_coverage_damaged" not in validate(x_sep, meta, tmp_path / "c", k=5)


@pytest.mark.slow
def test_every_figure_has_its_n_and_a_seeded_interval_over_photos(tmp_path):
    x, meta = make()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    m = validate(x, meta, tmp_path / "a", k=5)
    for key in ("coverage_damaged", "coverage_clean", "balanced_coverage", "map_at_r_damage_type",
                "precision_at_5_damage_type", "qe_coverage_damaged", "kreciprocal_map_at_r_damage_type"):
        assert m[f"{key}_lo"] <= m[key] <= m[f"{key}_hi"], key
        assert m[f"{key}_n_queries"] > 0 and m[f"{key}_n_photos"] > 0, key
    assert (m["coverage_damaged_n_queries"], m["coverage_damaged_n_photos"]) == (20, 20)  # 2 damaged types x 10
    again = validate(x, meta, tmp_path / "b", k=5)
    assert {k: v for k, v in again.items() if k.endswith(("_lo", "_hi"))} == {
        k: v for k, v in m.items() if k.endswith(("_lo", "_hi"))}
    content = json.loads((tmp_path / "a" / "metrics.json").read_text())
    labels = [r["label"] for r in content["rows"]]
    assert labels[0] == "stored vectors" and any("query expansion" in lab for lab in labels)
    assert content["bootstrap"]["unit"] == "photo group"
    report = (tmp_path / "a" / "report.md").read_text()
    assert "## Rows" in report and "k-reciprocal" in report and "bootstrap over the query photos" in report


def test_variant_rows_sit_beside_the_served_one(tmp_path):
    """A head row next to the frozen one (or the other way round): same queries, paired difference."""
    from pipeline.retrieval.validate import Variant

    x, meta = make()
    rng = np.random.default_rng(2)
    noise = rng.normal(size=x.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    m = validate(x, meta, tmp_path, k=5, variants=[Variant("frozen", "frozen features", noise, None)],
                 served="head (adopted)", rerank=False, notes=["Embedding head: **adopted**; because.", ""])
    assert m["frozen_coverage_damaged"] < m["coverage_damaged"]
    assert m["served_minus_frozen_balanced_coverage_lo"] > 0
    assert "qe_coverage_damaged" not in m
    report = (tmp_path / "report.md").read_text()
    assert report.index("Embedding head: **adopted**") < report.index("## Rows")
    assert "| head (adopted) |" in report and "| frozen features |" in report and "Served minus `frozen`" in report
