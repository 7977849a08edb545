"""Validation metrics on embeddings whose structure is known."""
import json

import numpy as np
import pytest

from pipeline.retrieval.validate import anisotropy, damage_label, knn, precision_recall, validate


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
                         "zone_name": f"z{1 + i % 2}", "split": "val" if i % 3 == 0 else "train"})
    return np.array(x, dtype=np.float32), meta


def test_separated_classes_score_high(tmp_path):
    x, meta = make()
    m = validate(x, meta, tmp_path, k=5)
    assert m["coverage_damaged"] > 0.95 and m["coverage_clean"] > 0.95 and m["coverage_bar_met"] == 1.0
    assert m["precision_at_5_damage_type"] > 0.95 and m["map_at_r_damage_type"] > 0.9
    assert m["cosine_euclidean_agreement"] == pytest.approx(1.0)  # unit vectors: same neighbours
    assert m["silhouette_damage_type"] > 0.3
    assert m["n_queries"] == 30  # the val crops are the queries
    for f in ("report.md", "metrics.json", "pca.png", "tsne.png"):
        assert (tmp_path / f).is_file()
    assert "meets the users' bar" in (tmp_path / "report.md").read_text()


def test_random_vectors_score_near_chance(tmp_path):
    rng = np.random.default_rng(1)
    _, meta = make()
    x = rng.normal(size=(len(meta), 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = validate(x, meta, tmp_path, k=5)
    assert abs(m["precision_at_5_damage_type"] - 1 / 3) < 0.2
    assert m["map_at_r_damage_type"] < 0.6
    assert abs(anisotropy(x)) < 0.05


def test_precision_recall_and_knn_exclude_self():
    x = np.eye(4, dtype=np.float32)[[0, 0, 1, 1]] + np.array([[0, 0, 0, 0.01 * i] for i in range(4)], dtype=np.float32)
    labels = np.array(["a", "a", "b", "b"])
    neigh = knn(x, np.arange(4), 1)
    assert [int(n[0]) for n in neigh] == [1, 0, 3, 2]
    p, r = precision_recall(neigh, np.arange(4), labels)
    assert p.tolist() == [1, 1, 1, 1] and r.tolist() == [1, 1, 1, 1]


def test_damage_label_takes_the_most_frequent_defect():
    row = {"has_damage": True, "defects": json.dumps([{"type": "dent"}, {"type": "crack"}, {"type": "dent"}])}
    assert damage_label(row) == "dent"
    assert damage_label({"has_damage": False}) == "clean"


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


def test_image_only_metrics_use_the_image_part_of_a_concatenation(tmp_path):
    """A text part that names the class makes the fused vectors look perfect; the image_only_* metrics
    are computed on the image part alone, here noise, so they fall to chance."""
    x_sep, meta = make()
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(len(meta), 32)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    fused = np.concatenate([0.3 * noise, 0.95 * x_sep], axis=1)
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    m = validate(fused, meta, tmp_path, k=5, image_dims=32)
    assert m["map_at_r_damage_type"] > 0.9 and m["coverage_damaged"] > 0.95
    assert m["image_only_map_at_r_damage_type"] < 0.6 and m["image_only_coverage_damaged"] < 0.85
    assert "Image part alone" in (tmp_path / "report.md").read_text()
    # the image part carrying the structure scores high on its own
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    m2 = validate(np.concatenate([x_sep, 0.2 * noise[:, :16]], axis=1), meta, tmp_path / "b", k=5, image_dims=16)
    assert m2["image_only_map_at_r_damage_type"] > 0.9
    assert "image_only_coverage_damaged" not in validate(x_sep, meta, tmp_path / "c", k=5)
