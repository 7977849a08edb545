"""The nightly's embedding head (phase embedding_head): adopted where it clearly helps, refused where it cannot
(shuffled labels), with the reason in both cases; test photos never train, choose or decide it; the index and
the retriever serve the adopted head's vectors and project image queries the same way."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import EmbedHeadConfig, StudyConfig

IMG, TXT, PER_PHOTO = 48, 8, 3
FAST = EmbedHeadConfig(losses=["contrastive"], folds=4, min_steps=60, max_steps=60, lr=1e-2, bootstrap=500, dim=16)


def features(n_photos: int, seed: int = 0, shuffle: bool = False) -> tuple[np.ndarray, list[dict]]:
    """Image vectors whose damage state lives in 2 of 48 dims under a strong per-photo component: cosine on the
    raw vectors ranks by photo look (chance for other photos), a linear head can find the state."""
    rng = np.random.default_rng(seed)
    rows, x = [], []
    for p in range(n_photos):
        look = rng.normal(size=IMG) * 1.5
        look[:2] = 0.0
        split = "test" if p % 10 == 0 else "val" if p % 10 == 1 else "train"
        for w in range(PER_PHOTO):
            damaged = bool(rng.random() < 0.5)
            v = look + rng.normal(size=IMG) * 0.3
            v[:2] = (1.0 if damaged else -1.0) + rng.normal(size=2) * 0.3
            x.append(v)
            rows.append({"crop_id": f"c{p:03d}-{w}", "item_id": f"photo-{p:03d}", "split": split, "has_damage": damaged,
                         "defects": json.dumps([{"type": "dent"}]) if damaged else "[]",
                         "damage_types": ["dent"] if damaged else []})
    if shuffle:  # labels that carry no information about the vectors
        perm = rng.permutation(len(rows))
        keep = [{k: rows[i][k] for k in ("has_damage", "defects", "damage_types")} for i in perm]
        rows = [{**r, **k} for r, k in zip(rows, keep)]
    return np.array(x, dtype=np.float32), rows


def write_artifacts(root: Path, x: np.ndarray, rows: list[dict]) -> tuple[Path, Path]:
    """An embeddings dir (hybrid-style concat: image part, then a text part) and a crops dir."""
    emb, crops = root / "emb", root / "crops"
    (emb / "shards").mkdir(parents=True)
    crops.mkdir()
    img = x / np.linalg.norm(x, axis=1, keepdims=True)
    txt = np.random.default_rng(9).normal(size=(len(x), TXT)).astype(np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    fused = np.concatenate([0.7 * img, 0.3 * txt], axis=1)
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    np.save(emb / "shards" / "emb_00000.npy", fused.astype(np.float32))
    pq.write_table(pa.table({"crop_id": [r["crop_id"] for r in rows], "shard": [0] * len(rows),
                             "row": list(range(len(rows)))}), emb / "embeddings.parquet")
    (emb / "embedder.json").write_text(json.dumps({"dim": IMG + TXT, "image_dim": IMG, "text_dim": TXT,
                                                   "fusion": {"mode": "concat", "alpha": 0.7, "beta": 0.3}}))
    pq.write_table(pa.Table.from_pylist(rows), crops / "crops.parquet")
    return emb, crops


def decide(tmp: Path, x: np.ndarray, rows: list[dict], cfg: EmbedHeadConfig = FAST) -> tuple[dict, dict, Path]:
    from pipeline.retrieval.adopt import run_embedding_head

    emb, crops = write_artifacts(tmp, x, rows)
    metrics = run_embedding_head(emb, crops, tmp / "out", cfg, StudyConfig(), k=5)
    return metrics, json.loads((tmp / "out" / "decision.json").read_text()), tmp / "out"


@pytest.fixture(scope="module")
def helpful(tmp_path_factory):
    x, rows = features(40)
    return (x, rows, *decide(tmp_path_factory.mktemp("helpful"), x, rows))


def test_a_head_that_clearly_helps_is_adopted_and_says_why(helpful):
    _, _, metrics, decision, out = helpful
    assert decision["adopted"] is True and metrics["adopted"] == 1.0
    assert decision["loss"] == "contrastive"
    frozen, head = decision["rows"]
    assert head["balanced_coverage"]["value"] > frozen["balanced_coverage"]["value"] + 0.1
    assert decision["gain"]["lo"] > 0 and decision["gain"]["n_photos"] == 36  # train + val photos only
    assert "beats the frozen features by more than its interval" in metrics["reason"]
    assert "gain +" in metrics["reason"]
    report = (out / "report.md").read_text()
    assert "**adopted**" in report and "test photos never used" in report
    assert (out / "head" / "head.safetensors").is_file()


def test_a_head_that_cannot_help_is_refused_and_says_why(tmp_path):
    x, rows = features(40, shuffle=True)
    metrics, decision, out = decide(tmp_path, x, rows)
    assert decision["adopted"] is False and metrics["adopted"] == 0.0
    assert decision["gain"]["lo"] <= 0
    assert "does not beat the frozen features by more than its interval" in metrics["reason"]
    assert "not adopted" in (out / "report.md").read_text()
    assert (out / "head" / "head.json").is_file()  # trained all the same: validation shows its row


def test_test_photos_never_train_choose_or_decide(helpful, tmp_path):
    """Scrambling every test crop (vectors and labels) changes neither the decision nor the served head."""
    x, rows, _, decision, out = helpful
    rng = np.random.default_rng(7)
    x2 = x.copy()
    rows2 = [dict(r) for r in rows]
    for i, r in enumerate(rows2):
        if r["split"] == "test":
            x2[i] = rng.normal(size=IMG)
            r["has_damage"] = not r["has_damage"]
            r["defects"] = json.dumps([{"type": "crack"}]) if r["has_damage"] else "[]"
    _, decision2, out2 = decide(tmp_path, x2, rows2)
    assert decision2 == decision
    assert (out2 / "head" / "head.safetensors").read_bytes() == (out / "head" / "head.safetensors").read_bytes()


def test_refusals_without_anything_to_learn(tmp_path):
    x, rows = features(40)
    one_class = [{**r, "has_damage": True, "defects": json.dumps([{"type": "dent"}])} for r in rows]
    (tmp_path / "a").mkdir()
    m, d, _ = decide(tmp_path / "a", x, one_class)
    assert not d["adopted"] and "one class only" in m["reason"] and not (tmp_path / "a" / "out" / "head").exists()
    (tmp_path / "b").mkdir()
    m, d, _ = decide(tmp_path / "b", *features(4))
    assert not d["adopted"] and "too few to judge a head" in m["reason"]


def test_index_and_retriever_serve_the_adopted_head(helpful, tmp_path):
    """The index holds the projected vectors; an image query through the Retriever's embedder is projected
    the same way (the projection resolved through index.json and the store)."""
    from pipeline.retrieval.adopt import load_head, searched_vectors
    from pipeline.retrieval.embedder import Embedder, Preprocess
    from pipeline.retrieval.head import l2n

    x, rows, _, _, out = helpful
    emb, _ = write_artifacts(tmp_path, x, rows)
    ids, z, meta = searched_vectors(emb, out)
    head = load_head(out)
    assert z.shape == (len(rows), head.dim + TXT) and meta["image_dim"] == head.dim
    assert meta["projection"]["dim"] == head.dim and meta["projection"]["path"] == "head"
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    # the image part of a stored vector is the head's vector of the crop's image vector
    assert np.allclose(l2n(z[:, : head.dim]), head.project(x), atol=1e-5)

    class Tower:  # an Embedder around fixed vectors: what Retriever.embedder does with a projection
        random_init = False

    from pipeline.core.config import EmbedConfig

    e = Embedder(EmbedConfig(), "cpu", Tower(), Tower(), Preprocess(lambda im: im, 8, False), IMG, TXT)
    e.set_projection(head, meta["projection"])
    q = e.image_query(x[:3])
    assert q.shape == (3, head.dim + TXT) and not q[:, head.dim:].any()
    assert np.allclose(q[:, : head.dim], head.project(x[:3]), atol=1e-5)


def test_cross_validation_queries_are_capped(tmp_path):
    """At scale the judgement samples its queries (seeded); every development crop stays a reference."""
    x, rows = features(40)
    m, d, _ = decide(tmp_path, x, rows, FAST.model_copy(update={"max_queries": 30}))
    assert [r["balanced_coverage"]["n_queries"] for r in d["rows"]] == [30, 30]
    assert d["protocol"]["max_queries"] == 30 and d["protocol"]["n_development_crops"] == 108
