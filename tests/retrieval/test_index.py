"""FAISS index: kind choice, build, self-check, recall, on-disk formats (no pickle)."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import EmbedConfig, IndexConfig


def mixture(n: int, dim: int, k: int = 20, seed: int = 0) -> np.ndarray:
    """L2-normalised Gaussian-mixture vectors (k clusters)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim))
    x = centers[rng.integers(0, k, n)] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_choose_index_thresholds():
    from pipeline.retrieval.index import (
        choose_index,
        hnsw_bytes,
        ivf_bytes,
        ivf_params,
        ivfpq_bytes,
        ivfpq_params,
    )

    cfg = IndexConfig(flat_max=1000, memory_budget_mb=100, hnsw_m=32)
    assert choose_index(1000, 512, cfg) == "flat"
    assert choose_index(1001, 512, cfg) == "hnsw"
    fits = 100 * 2**20 // (512 * 4 + 32 * 2 * 4)
    assert hnsw_bytes(fits, 512, 32) <= 100 * 2**20 < hnsw_bytes(fits + 1, 512, 32)
    assert choose_index(fits, 512, cfg) == "hnsw" and choose_index(fits + 1, 512, cfg) == "ivf"
    # past HNSW: IVF with fp16 codes, then 8-bit codes, then IVF-PQ
    assert ivf_params(fits + 1, 512, cfg)["codes"] == "SQfp16"
    sq8 = 100 * 2**20 // (512 * 2 + 8) + 1000
    assert ivf_params(sq8, 512, cfg)["codes"] == "SQ8" and ivf_bytes(sq8, 512, ivf_params(sq8, 512, cfg)["nlist"],
                                                                         "SQ8") <= 100 * 2**20
    too_many = 100 * 2**20 // (512 + 8) + 1000
    assert choose_index(too_many, 512, cfg) == "ivfpq"
    with pytest.raises(ValueError, match="ivfpq compresses further"):
        ivf_params(too_many, 512, cfg)
    p = ivfpq_params(1_000_000, 1664, cfg)
    assert 1664 % p["pq_m"] == 0 and p["pq_nbits"] == 4 and p["nlist"] == 4000
    # 100 MB cannot hold fp16 or 8-bit refine codes of 1M x 1664, so the PQ codes alone, as large as fit
    assert p["refine"] == "none" and p["k_factor"] == 1
    assert ivfpq_bytes(1_000_000, 1664, 4000, p["pq_m"], "none") <= 100 * 2**20
    # the finest refine that fits the budget: fp16 at 2 GB for 500k x 1664, 8-bit at 1 GB, none at 200 MB
    assert ivfpq_params(500_000, 1664, IndexConfig(memory_budget_mb=2048))["refine"] == "SQfp16"
    assert ivfpq_params(500_000, 1664, IndexConfig(memory_budget_mb=1024))["refine"] == "SQ8"
    assert ivfpq_params(500_000, 1664, IndexConfig(memory_budget_mb=200))["refine"] == "none"
    forced = ivfpq_params(500_000, 1664, IndexConfig(memory_budget_mb=2048, ivf_refine="SQ8", ivf_k_factor=50))
    # k_factor is cfg's at cfg.ivf_nprobe probes, scaled with the probes of 500k vectors' 2828 lists (23)
    assert forced["refine"] == "SQ8" and forced["nprobe"] == 23 and forced["k_factor"] == math.ceil(50 * 23 / 16)
    assert choose_index(10, 512, IndexConfig(kind="hnsw")) == "hnsw"
    with pytest.raises(ValueError, match="memory_budget_mb"):
        ivfpq_params(10**9, 1664, IndexConfig(memory_budget_mb=1))


def test_flat_self_check_is_exact():
    from pipeline.retrieval.index import build_index, quality

    x = mixture(500, 64)
    idx = build_index(x, IndexConfig(), "flat")
    q = quality(idx, x, 200)
    assert q["self_hit_rate"] == 1.0 and q["recall_at_10"] == 1.0


def test_hnsw_recall_on_mixture():
    from pipeline.retrieval.index import build_index, quality

    x = mixture(3000, 64)
    idx = build_index(x, IndexConfig(ef_construction=100, ef_search=64), "hnsw")
    q = quality(idx, x, 200)
    assert q["recall_at_10"] >= 0.9 and q["self_hit_rate"] >= 0.95


def test_ivfpq_refine_recovers_recall(tmp_path):
    """4-bit PQ codes alone rank near neighbours poorly; the refine stage re-ranks with finer codes."""
    import faiss

    from pipeline.retrieval.index import build_index, quality

    x = mixture(2000, 32)
    plain = quality(build_index(x, IndexConfig(ivf_nprobe=16, ivf_refine="none"), "ivfpq"), x, 100)
    idx = build_index(x, IndexConfig(ivf_nprobe=16, ivf_k_factor=10), "ivfpq")
    refined = quality(idx, x, 100)
    assert idx.ntotal == 2000 and isinstance(faiss.downcast_index(idx.index), faiss.IndexRefine)
    assert refined["recall_at_10"] >= 0.95 and refined["self_hit_rate"] == 1.0
    assert plain["recall_at_10"] < refined["recall_at_10"] - 0.3
    # nprobe and k_factor survive write/read (search settings are part of the artifact)
    faiss.write_index(idx, str(tmp_path / "i.faiss"))
    back = faiss.read_index(str(tmp_path / "i.faiss"))
    assert faiss.extract_index_ivf(back).nprobe == 16 and faiss.downcast_index(back.index).k_factor == 10
    assert quality(back, x, 100)["recall_at_10"] == refined["recall_at_10"]


@pytest.mark.parametrize("codes", ["SQfp16", "SQ8"])
def test_ivf_scalar_quantised_is_near_exact_at_a_fraction_of_the_memory(codes):
    import faiss

    from pipeline.retrieval.index import build_index, quality

    x = mixture(3000, 64)
    flat = build_index(x, IndexConfig(), "flat")
    idx = build_index(x, IndexConfig(ivf_codes=codes), "ivf")
    q = quality(idx, x, 200)
    assert q["recall_at_10"] >= 0.95 and q["self_hit_rate"] >= 0.99
    ratio = faiss.serialize_index(idx).nbytes / faiss.serialize_index(flat).nbytes
    assert ratio < {"SQfp16": 0.65, "SQ8": 0.4}[codes]


@pytest.mark.slow
def test_run_index_files(tmp_path):
    from test_embed import make_crops

    from pipeline.retrieval.embeddings import load_embeddings, run_embeddings
    from pipeline.retrieval.index import METADATA_COLUMNS, run_index

    crops, ctx = make_crops(tmp_path, 12)
    run_embeddings(crops, ctx, EmbedConfig(batch_size=16), tmp_path / "emb", None, device="cpu", progress=False)
    m = run_index(tmp_path / "emb", crops, ctx, IndexConfig(), tmp_path / "idx")
    assert m["kind"] == "flat" and m["n"] == 12 and m["dim"] == 1664 and m["self_hit_rate"] == 1.0
    assert m["recall_at_10"] == 1.0 and m["build_seconds"] >= 0
    info = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert {"kind", "dim", "n", "metric", "params", "inputs", "embedder"} <= set(info)
    # outside a store the inputs have no ids; nothing in the artifact names a local path
    assert info["inputs"] == {"crops": None, "embeddings": None, "contexts": None}
    assert info["embedder"] == json.loads((tmp_path / "emb" / "embedder.json").read_text())
    assert str(tmp_path) not in (tmp_path / "idx" / "index.json").read_text()
    assert "seconds" not in (tmp_path / "idx" / "report.md").read_text()
    meta = pq.read_table(tmp_path / "idx" / "metadata.parquet")
    assert tuple(meta.column_names) == METADATA_COLUMNS
    ids, _ = load_embeddings(tmp_path / "emb")
    assert meta.column("crop_id").to_pylist() == ids and meta.column("row").to_pylist() == list(range(12))
    rows = pq.read_table(crops / "crops.parquet").to_pydict()
    rel = dict(zip(rows["crop_id"], rows["crop_path"]))
    assert meta.column("crop_path").to_pylist() == [rel[c] for c in ids]  # relative to the crops artifact
    assert all((crops / p).is_file() for p in meta.column("crop_path").to_pylist())
    assert all(t for t in meta.column("text").to_pylist())
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pkl", ".pickle")]


def test_auto_ivf_parameters_scale_with_n():
    """nlist ~ 4*sqrt(n) (capped), nprobe a fixed share of the lists once cfg.ivf_nprobe is below it, the
    refine's k_factor raised with nprobe, the k-means sample capped; <= 100k as before (16 probes, k_factor
    cfg)."""
    from pipeline.retrieval.index import (
        NLIST_MAX,
        PROBE_FRACTION,
        TRAIN_MAX,
        _train_size,
        choose_index,
        ivf_params,
        ivfpq_params,
    )

    cfg = IndexConfig()
    small, mid, big = (ivf_params(n, 512, cfg) for n in (10_000, 100_000, 1_000_000))
    assert (small["nlist"], small["nprobe"]) == (256, 16)  # n / 39: training points for every list
    assert (mid["nlist"], mid["nprobe"]) == (1265, 16)  # 1.26% of the lists, as before
    assert big["nlist"] == 4000 and big["nprobe"] == 32  # not 16 of 4000 (recall@10 0.906 -> 0.954 at 1M)
    huge = ivf_params(10_000_000, 512, IndexConfig(memory_budget_mb=8192))
    assert huge["nlist"] == NLIST_MAX and huge["nprobe"] == math.ceil(NLIST_MAX * PROBE_FRACTION)
    # a larger configured nprobe is kept
    assert ivf_params(1_000_000, 512, IndexConfig(ivf_nprobe=64))["nprobe"] == 64
    # IVF-PQ: the refine re-ranks proportionally more candidates as more lists are probed
    budget = IndexConfig(memory_budget_mb=4096)
    assert ivfpq_params(100_000, 512, budget)["k_factor"] == budget.ivf_k_factor
    assert ivfpq_params(1_000_000, 512, budget)["k_factor"] == budget.ivf_k_factor * 2
    # k-means sample: all points up to 256 per list, at most TRAIN_MAX (>= 39 per list)
    assert _train_size(100_000, 1265) == 100_000 and _train_size(1_000_000, 4000) == TRAIN_MAX
    # at a million within 0.3 x Flat's bytes (614 MB for 512-d): IVF with 8-bit codes
    flat_mb = 1_000_000 * 512 * 4 / 2**20
    at_million = IndexConfig(memory_budget_mb=int(0.3 * flat_mb))
    assert choose_index(1_000_000, 512, at_million) == "ivf"
    assert ivf_params(1_000_000, 512, at_million)["codes"] == "SQ8"


def test_allocate_sub_centroids():
    from pipeline.retrieval.coarse import allocate

    # proportional, at least one per non-empty cluster, never more than its points, summing to the total
    alloc = allocate(np.array([0, 1, 5, 1000, 3]), 20)
    assert alloc.tolist() == [0, 1, 1, 17, 1] and alloc.sum() == 20
    assert allocate(np.array([10, 10, 10]), 30).tolist() == [10, 10, 10]
    assert allocate(np.array([1, 1, 1, 1, 100]), 5).tolist() == [1, 1, 1, 1, 1]


@pytest.mark.slow
def test_many_lists_get_an_hnsw_quantizer_over_two_level_centroids(tmp_path):
    """From HNSW_QUANTIZER_MIN lists: centroids by two-level k-means (one per list, unit norm for inner
    product), an HNSW quantizer (accurate while adding, QUANTIZER_EF for queries, kept in the file), one
    query scanning its lists on every thread; recall like the exact quantizer's."""
    import faiss

    from pipeline.retrieval.coarse import EF_ASSIGN, HNSW_QUANTIZER_MIN, QUANTIZER_EF, search_ready, two_level_kmeans
    from pipeline.retrieval.index import build_index, index_params, np_search, quality, search_params

    x = mixture(70_000, 32, k=40, seed=3)
    cfg = IndexConfig(ivf_codes="SQ8")
    p = index_params("ivf", len(x), 32, cfg)
    assert p["nlist"] >= HNSW_QUANTIZER_MIN
    cents = two_level_kmeans(x[:50_000], 1100, spherical=True)
    assert cents.shape == (1100, 32) and np.all(np.isfinite(cents))
    idx = build_index(x, cfg, "ivf")
    ivf = faiss.extract_index_ivf(idx)
    q = faiss.downcast_index(ivf.quantizer)
    assert isinstance(q, faiss.IndexHNSWFlat) and q.ntotal == p["nlist"] == ivf.nlist
    centroids = faiss.rev_swig_ptr(faiss.downcast_index(q.storage).get_xb(), q.ntotal * 32).reshape(-1, 32).copy()
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-4)  # spherical: inner product
    assert q.hnsw.efSearch == max(QUANTIZER_EF, 2 * p["nprobe"]) < EF_ASSIGN
    assert ivf.parallel_mode == 1
    got = quality(idx, x, 300)
    # the same lists probed through an exact quantizer: the HNSW graph loses (almost) nothing
    exact = faiss.IndexFlatIP(32)
    exact.add(centroids)
    queries = x[np.random.default_rng(1).choice(len(x), 300, replace=False)]
    dist, lists = exact.search(queries, p["nprobe"])
    _, via_exact = ivf.search_preassigned(queries, 10, lists, dist)
    _, via_hnsw = np_search(idx, queries, 10)
    same = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(via_exact, via_hnsw)])
    assert got["recall_at_10"] >= 0.9 and same >= 0.99, (got, same)
    # a larger nprobe asks the quantizer for at least twice as many candidates
    params = search_params(idx, nprobe=100)
    assert params.nprobe == 100 and params.quantizer_params is not None and params._keep_q.efSearch == 200
    assert np_search(idx, queries[:5], 10, params)[1].shape == (5, 10)
    # written and read back: the quantizer's efSearch is in the file; parallel_mode is set by search_ready
    faiss.write_index(idx, str(tmp_path / "i.faiss"))
    back = faiss.read_index(str(tmp_path / "i.faiss"))
    assert faiss.downcast_index(faiss.extract_index_ivf(back).quantizer).hnsw.efSearch == q.hnsw.efSearch
    assert faiss.extract_index_ivf(search_ready(back)).parallel_mode == 1
    assert np.array_equal(np_search(back, queries, 10)[1], via_hnsw)
