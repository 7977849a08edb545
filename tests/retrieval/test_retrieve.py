"""Retriever: filtered search returns k hits satisfying the filter (Flat and HNSW), text/image/vector queries."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import EmbedConfig, IndexConfig

N = 40


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """40 crops embedded with the real hybrid models; Flat, HNSW, low-ef HNSW, IVF-SQ8, IVF-PQ with and without
    refine indexes over them."""
    from test_embed import make_crops

    from pipeline.retrieval.embeddings import make_embedder, run_embeddings
    from pipeline.retrieval.index import run_index

    root = tmp_path_factory.mktemp("retrieve")
    crops, ctx = make_crops(root, N)
    run_embeddings(crops, ctx, EmbedConfig(batch_size=20), root / "emb", None, device="cpu", progress=False)
    run_index(root / "emb", crops, ctx, IndexConfig(kind="flat"), root / "flat")
    run_index(root / "emb", crops, ctx, IndexConfig(kind="hnsw"), root / "hnsw")
    # a deliberately poor graph: filtered HNSW search comes back short, so the fallbacks must fill in
    run_index(root / "emb", crops, ctx, IndexConfig(kind="hnsw", hnsw_m=8, ef_construction=40, ef_search=4),
              root / "hnsw_low_ef")
    run_index(root / "emb", crops, ctx, IndexConfig(kind="ivfpq", ivf_nprobe=1), root / "ivfpq")
    run_index(root / "emb", crops, ctx, IndexConfig(kind="ivfpq", ivf_nprobe=1, ivf_refine="none"),
              root / "ivfpq_norefine")
    run_index(root / "emb", crops, ctx, IndexConfig(kind="ivf", ivf_codes="SQ8"), root / "ivf")
    return root, make_embedder(EmbedConfig(), "cpu")


def satisfies(hit: dict, zones=None, has_damage=None, damage_type=None, exclude_ids=()) -> bool:
    if zones is not None and hit["zone"] not in np.atleast_1d(zones):
        return False
    if has_damage is not None and hit["has_damage"] != has_damage:
        return False
    return damage_type is None or damage_type in (hit["damage_types"] or [])


FILTERS = [
    {"zones": 1},
    {"zones": [1, 3]},
    {"has_damage": True},
    {"has_damage": False},
    {"damage_type": "dent"},
    {"zones": 1, "has_damage": True, "damage_type": "scratch"},
    {"zones": 2, "has_damage": False},
    {"zones": 9},
    {"zones": np.int64(3)},
    {"zones": (2,), "exclude_ids": ()},
]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "hnsw_low_ef", "ivf", "ivfpq", "ivfpq_norefine"])
@pytest.mark.parametrize("k", [5, 12])
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: "-".join(f"{a}={b!r}" for a, b in f.items()))
@pytest.mark.slow
def test_filtered_search_returns_k_matching(built, kind, k, filters):
    from pipeline.retrieval.retrieve import Retriever

    root, emb = built
    r = Retriever.open(root / kind, crops_dir=root / "crops", embedder=emb)
    n_match = sum(satisfies(m, **filters) for m in r.metadata)
    for query in (r.metadata[0]["crop_path"], "a dent on the bumper"):
        hits = r.search(query, k=k, **filters)
        assert len(hits) == min(k, n_match)
        assert all(satisfies(h, **filters) for h in hits)
        assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert len({h["crop_id"] for h in hits}) == len(hits)


def test_fixture_has_fewer_than_k_cases(built):
    from pipeline.retrieval.retrieve import Retriever

    r = Retriever.open(built[0] / "flat", crops_dir=built[0] / "crops", embedder=built[1])
    combined = sum(satisfies(m, zones=1, has_damage=True, damage_type="scratch") for m in r.metadata)
    assert 0 < combined < 12  # the combined filter exercises "fewer only when fewer exist"


def test_low_ef_hnsw_exercises_fallback(built):
    from pipeline.retrieval.retrieve import Retriever

    r = Retriever.open(built[0] / "hnsw_low_ef", crops_dir=built[0] / "crops", embedder=built[1])
    allowed = r.allowed_rows(zones=1)
    q = r.query_vector("a dent on the bumper")[None, :]
    assert len(r._prefiltered(q, 12, allowed)[0]) < 12  # the pre-filter alone is short here
    hits = r.search(q[0], k=12, zones=1)
    assert len(hits) == 12 and all(h["zone"] == 1 for h in hits)
    exact = Retriever.open(built[0] / "flat", crops_dir=built[0] / "crops", embedder=built[1]).search(q[0], k=12, zones=1)
    assert np.allclose([h["score"] for h in hits], [h["score"] for h in exact], atol=1e-5)  # ids may tie


@pytest.mark.parametrize("kind", ["flat", "hnsw", "hnsw_low_ef"])
def test_image_queries_find_the_crop(built, kind):
    from pipeline.retrieval.retrieve import Retriever

    root, emb = built
    r = Retriever.open(root / kind, crops_dir=root / "crops", embedder=emb)
    meta = r.metadata[7]
    by_path = r.search(meta["crop_path"], k=3)
    assert by_path[0]["crop_id"] == meta["crop_id"]
    with Image.open(meta["crop_path"]) as im:
        assert r.search(im.convert("RGB"), k=3)[0]["crop_id"] == meta["crop_id"]
    assert r.search(Path(meta["crop_path"]), k=1)[0]["crop_id"] == meta["crop_id"]
    excl = r.search(meta["crop_path"], k=5, exclude_ids=[meta["crop_id"]])
    assert len(excl) == 5 and meta["crop_id"] not in {h["crop_id"] for h in excl}


def test_vector_queries_and_search_many(built):
    from pipeline.retrieval.embeddings import load_embeddings
    from pipeline.retrieval.retrieve import Retriever

    root, emb = built
    r = Retriever.open(root / "hnsw", crops_dir=root / "crops", embedder=emb)
    ids, x = load_embeddings(root / "emb")
    res = r.search_many(x[:10], k=4)
    assert [h[0]["crop_id"] for h in res] == ids[:10]
    assert all(len(h) == 4 for h in res)
    filtered = r.search_many(x[:10], k=4, has_damage=True)
    assert all(len(h) == 4 and all(x["has_damage"] for x in h) for h in filtered)
    hit = r.search(x[3], k=1)[0]
    assert hit["crop_id"] == ids[3] and abs(hit["score"] - 1.0) < 1e-4 and hit["row"] == 3
    assert {"split", "crop_type", "zone", "zone_name", "part", "text", "crop_path"} <= set(hit)


def test_text_query_rebuilds_embedder_from_json(built):
    from pipeline.retrieval.retrieve import Retriever

    r = Retriever.open(built[0] / "flat", crops_dir=built[0] / "crops")
    hits = r.search("scratch on the door of the front", k=5)
    assert len(hits) == 5 and r.embedder.describe()["backend"] == "hybrid"
    assert hits[0]["text"] is not None


def test_bad_query(built):
    from pipeline.retrieval.retrieve import Retriever

    r = Retriever.open(built[0] / "flat", crops_dir=built[0] / "crops", embedder=built[1])
    with pytest.raises(TypeError):
        r.search(42)
    with pytest.raises(ValueError, match="dim"):
        r.search(np.ones(3, dtype=np.float32))


def test_filtered_search_survives_faiss_torch_utils():
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which replaces Index.search."""
    import faiss
    import faiss.contrib.torch_utils  # noqa: F401

    from pipeline.retrieval.index import np_search

    x = np.eye(8, dtype=np.float32)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    index.add_with_ids(x, np.arange(8, dtype=np.int64))
    params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.array([3, 5], dtype=np.int64)))
    _, rows = np_search(index, x[:1], 2, params)
    assert sorted(rows[0].tolist()) == [3, 5]


@pytest.mark.parametrize("kind", ["flat", "hnsw_low_ef", "ivfpq"])
@pytest.mark.parametrize("rerank", ["qe", "kreciprocal"])
def test_reranked_search_keeps_the_filter_and_is_deterministic(built, kind, rerank):
    """Re-ranking only reorders or re-searches rows that passed the filter: k hits that all meet it whenever k
    such crops exist, the same hits every time."""
    from pipeline.retrieval.retrieve import Retriever

    root, emb = built
    r = Retriever.open(root / kind, crops_dir=root / "crops", embedder=emb)
    queries = {"image": r.query_vector(r.metadata[3]["crop_path"]), "text": r.query_vector("a dent on the bumper")}
    for filters in FILTERS:
        n_match = sum(satisfies(m, **filters) for m in r.metadata)
        for q in queries.values():
            hits = r.search(q, k=5, rerank=rerank, **filters)
            assert len(hits) == min(5, n_match) and all(satisfies(h, **filters) for h in hits)
            assert len({h["crop_id"] for h in hits}) == len(hits)
            assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
            again = r.search(q, k=5, rerank=rerank, **filters)
            assert [(h["crop_id"], h["score"]) for h in again] == [(h["crop_id"], h["score"]) for h in hits]


def test_reranking_changes_rankings_in_the_query_part(built):
    """Both re-rankers do change some rankings; an image query re-ranks in the image part, a text query in the
    text part (an image query is never re-ranked by the index's context texts)."""
    from pipeline.retrieval.embeddings import load_embeddings
    from pipeline.retrieval.retrieve import Retriever

    root, emb = built
    r = Retriever.open(root / "flat", crops_dir=root / "crops", embedder=emb)
    _, x = load_embeddings(root / "emb")
    d = emb.image_dim
    img = emb.image_query(x[:, :d])
    plain = [[h["crop_id"] for h in hits] for hits in r.search_many(img, k=10)]
    for rerank in ("qe", "kreciprocal"):
        other = [[h["crop_id"] for h in hits] for hits in r.search_many(img, k=10, rerank=rerank)]
        assert other != plain and all(len(o) == 10 for o in other)
    assert r._part(img[0]) == slice(0, d)
    assert r._part(r.query_vector("a scratch")) == slice(d, None)
    assert r._part(x[0]) == slice(None)
    with pytest.raises(ValueError, match="rerank"):
        r.search(x[0], rerank="magic")
