"""FAISS index: kind choice, build, self-check, recall, on-disk formats (no pickle)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.config import EmbedConfig, IndexConfig


def mixture(n: int, dim: int, k: int = 20, seed: int = 0) -> np.ndarray:
    """L2-normalised Gaussian-mixture vectors (k clusters)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim))
    x = centers[rng.integers(0, k, n)] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_choose_index_thresholds():
    from pipeline.index import choose_index, hnsw_bytes, ivfpq_params

    cfg = IndexConfig(flat_max=1000, memory_budget_mb=100, hnsw_m=32)
    assert choose_index(1000, 512, cfg) == "flat"
    assert choose_index(1001, 512, cfg) == "hnsw"
    fits = 100 * 2**20 // (512 * 4 + 32 * 2 * 4)
    assert hnsw_bytes(fits, 512, 32) <= 100 * 2**20 < hnsw_bytes(fits + 1, 512, 32)
    assert choose_index(fits, 512, cfg) == "hnsw" and choose_index(fits + 1, 512, cfg) == "ivfpq"
    p = ivfpq_params(1_000_000, 1664, cfg)
    assert 1664 % p["pq_m"] == 0 and 1_000_000 * (p["pq_m"] + 8) <= 100 * 2**20
    assert p["nlist"] == 4000
    assert choose_index(10, 512, IndexConfig(kind="hnsw")) == "hnsw"
    with pytest.raises(ValueError, match="memory_budget_mb"):
        ivfpq_params(10**9, 1664, IndexConfig(memory_budget_mb=1))


def test_flat_self_check_is_exact():
    from pipeline.index import build_index, quality

    x = mixture(500, 64)
    idx = build_index(x, IndexConfig(), "flat")
    q = quality(idx, x, 200)
    assert q["self_hit_rate"] == 1.0 and q["recall_at_10"] == 1.0


def test_hnsw_recall_on_mixture():
    from pipeline.index import build_index, quality

    x = mixture(3000, 64)
    idx = build_index(x, IndexConfig(ef_construction=100, ef_search=64), "hnsw")
    q = quality(idx, x, 200)
    assert q["recall_at_10"] >= 0.9 and q["self_hit_rate"] >= 0.95


def test_ivfpq_builds_and_searches():
    from pipeline.index import build_index, quality

    x = mixture(2000, 32)
    idx = build_index(x, IndexConfig(memory_budget_mb=1, ivf_nprobe=16), "ivfpq")
    q = quality(idx, x, 100)
    assert q["recall_at_10"] > 0.3 and idx.ntotal == 2000


def test_run_index_files(tmp_path):
    from test_embed import make_crops

    from pipeline.embed import load_embeddings, run_embeddings
    from pipeline.index import METADATA_COLUMNS, run_index

    crops, ctx = make_crops(tmp_path, 12)
    run_embeddings(crops, ctx, EmbedConfig(batch_size=16), tmp_path / "emb", None, device="cpu", progress=False)
    m = run_index(tmp_path / "emb", crops, ctx, IndexConfig(), tmp_path / "idx")
    assert m["kind"] == "flat" and m["n"] == 12 and m["dim"] == 1664 and m["self_hit_rate"] == 1.0
    assert m["recall_at_10"] == 1.0 and m["build_seconds"] >= 0
    info = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert {"kind", "dim", "n", "metric", "params", "crops_dir", "emb_dir"} <= set(info)
    meta = pq.read_table(tmp_path / "idx" / "metadata.parquet")
    assert tuple(meta.column_names) == METADATA_COLUMNS
    ids, _ = load_embeddings(tmp_path / "emb")
    assert meta.column("crop_id").to_pylist() == ids and meta.column("row").to_pylist() == list(range(12))
    assert all(p.startswith("/") and p.endswith(".jpg") for p in meta.column("crop_path").to_pylist())
    assert all(t for t in meta.column("text").to_pylist())
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pkl", ".pickle")]
