"""FAISS index over the fused crop vectors (inner product on L2-normalised vectors = cosine).

`choose_index` picks the kind like autofaiss: exact Flat for small sets, HNSW when its memory fits
the budget, else IVF-PQ sized to the budget. Every index is an IndexIDMap2 whose int64 ids are the
row numbers of metadata.parquet (= rows of the embeddings, crop_id order).

On disk (`run_index`): index.faiss (faiss.write_index), metadata.parquet (row, crop_id, split,
crop_type, zone, zone_name, has_damage, damage_types, part, text, crop_path absolute), index.json
(kind, dim, n, metric, params, crops_dir, emb_dir) and report.md. No pickle.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import IndexConfig
from .embed import load_embeddings

METRIC = "inner_product"
PQ_NBITS = 8
PQ_M_CANDIDATES = (64, 56, 48, 40, 32, 28, 24, 20, 16, 12, 8, 4, 2, 1)
MIN_POINTS_PER_CENTROID = 39  # FAISS warns below this many training points per list
METADATA_COLUMNS = ("row", "crop_id", "split", "crop_type", "zone", "zone_name", "has_damage", "damage_types",
                    "part", "text", "crop_path")


def hnsw_bytes(n: int, dim: int, m: int) -> int:
    """Approximate HNSW memory: vectors plus 2*M neighbour links of 4 bytes per vector."""
    return n * (dim * 4 + m * 2 * 4)


def ivfpq_params(n: int, dim: int, cfg: IndexConfig) -> dict[str, int]:
    """nlist ~ 4*sqrt(n) (at most n/39), the largest PQ m dividing dim whose codes + ids fit the budget.

    PQ codes are 8 bits, fewer (>= 4) when n is too small to train 256 centroids per sub-quantizer.
    """
    nlist = max(1, min(int(round(4 * math.sqrt(n))), n // MIN_POINTS_PER_CENTROID))
    budget = cfg.memory_budget_mb * 2**20
    fitting = [m for m in PQ_M_CANDIDATES if dim % m == 0 and n * (m + 8) + nlist * dim * 4 <= budget]
    if not fitting:
        raise ValueError(f"{n} vectors of dim {dim} do not fit index.memory_budget_mb={cfg.memory_budget_mb} even as IVF-PQ")
    nbits = PQ_NBITS if n >= MIN_POINTS_PER_CENTROID * 2**PQ_NBITS else max(4, int(math.log2(max(n, 1) / MIN_POINTS_PER_CENTROID)))
    return {"nlist": nlist, "pq_m": fitting[0], "pq_nbits": nbits, "nprobe": min(cfg.ivf_nprobe, nlist)}


def choose_index(n: int, dim: int, cfg: IndexConfig) -> str:
    """'flat' up to cfg.flat_max vectors, 'hnsw' if it fits cfg.memory_budget_mb, else 'ivfpq'; cfg.kind wins unless 'auto'."""
    if cfg.kind != "auto":
        return cfg.kind
    if n <= cfg.flat_max:
        return "flat"
    if hnsw_bytes(n, dim, cfg.hnsw_m) <= cfg.memory_budget_mb * 2**20:
        return "hnsw"
    return "ivfpq"


def index_params(kind: str, n: int, dim: int, cfg: IndexConfig) -> dict[str, Any]:
    """The build and search parameters of an index kind (recorded in index.json)."""
    if kind == "hnsw":
        return {"M": cfg.hnsw_m, "efConstruction": cfg.ef_construction, "efSearch": cfg.ef_search}
    if kind == "ivfpq":
        return ivfpq_params(n, dim, cfg)
    return {}


def _gpus(cfg: IndexConfig, kind: str) -> int:
    import faiss

    if not cfg.use_gpu or kind == "hnsw" or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return 0
    return int(faiss.get_num_gpus())


def build_index(vectors: np.ndarray, cfg: IndexConfig, kind: str) -> Any:
    """An IndexIDMap2 (ids = row numbers) around Flat / HNSW / IVF-PQ, inner product, on the CPU.

    Flat and IVF-PQ are built on all GPUs when faiss has GPUs and cfg.use_gpu, then copied back.
    """
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = x.shape
    p = index_params(kind, n, dim, cfg)
    if kind == "flat":
        base = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, p["M"], faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = p["efConstruction"]
        base.hnsw.efSearch = p["efSearch"]
    elif kind == "ivfpq":
        quantizer = faiss.IndexFlatIP(dim)
        base = faiss.IndexIVFPQ(quantizer, dim, p["nlist"], p["pq_m"], p["pq_nbits"], faiss.METRIC_INNER_PRODUCT)
        base.own_fields = True
        quantizer.this.disown()
    else:
        raise ValueError(f"unknown index kind {kind!r}; expected flat, hnsw or ivfpq")
    index = faiss.IndexIDMap2(base)
    gpu = _gpus(cfg, kind) > 0
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    if not index.is_trained:
        rng = np.random.default_rng(0)
        train = x if n <= 256 * p["nlist"] else x[np.sort(rng.choice(n, 256 * p["nlist"], replace=False))]
        index.train(train)
    index.add_with_ids(x, np.arange(n, dtype=np.int64))
    if gpu:
        index = faiss.index_gpu_to_cpu(index)
    if kind == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = p["nprobe"]
    return index


def search_params(index: Any, selector: Any = None) -> Any:
    """SearchParameters matching the index's inner kind (keeps its efSearch / nprobe), with `selector`."""
    import faiss

    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(base, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = base.hnsw.efSearch
    elif isinstance(base, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = base.nprobe
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params


def _metadata(ids: list[str], crops_dir: Path, contexts_dir: Path | None) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    crops = {r["crop_id"]: r for r in pq.read_table(crops_dir / "crops.parquet").to_pylist()}
    texts: dict[str, str] = {}
    if contexts_dir is not None and (Path(contexts_dir) / "contexts.parquet").is_file():
        t = pq.read_table(Path(contexts_dir) / "contexts.parquet", columns=["crop_id", "text"]).to_pydict()
        texts = dict(zip(t["crop_id"], t["text"]))
    missing = [c for c in ids if c not in crops]
    if missing:
        raise ValueError(f"{len(missing)} embedded crops are not in {crops_dir}/crops.parquet (e.g. {missing[0]})")
    root = crops_dir.resolve()
    rows = [{"row": i, **{k: crops[c][k] for k in ("crop_id", "split", "crop_type", "zone", "zone_name", "has_damage",
                                                   "damage_types", "part")},
             "text": texts.get(c), "crop_path": str(root / crops[c]["crop_path"])} for i, c in enumerate(ids)]
    schema = pa.schema([("row", pa.int64()), ("crop_id", pa.string()), ("split", pa.string()),
                        ("crop_type", pa.string()), ("zone", pa.int32()), ("zone_name", pa.string()),
                        ("has_damage", pa.bool_()), ("damage_types", pa.list_(pa.string())), ("part", pa.string()),
                        ("text", pa.string()), ("crop_path", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def quality(index: Any, x: np.ndarray, sample: int, k: int = 10, seed: int = 0) -> dict[str, float]:
    """self_hit_rate (a sampled vector finds itself first) and recall@k against exact IndexFlatIP."""
    import faiss

    n = len(x)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(sample, n), replace=False))
    q = np.ascontiguousarray(x[rows])
    k = min(k, n)
    _, got = index.search(q, k)
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(np.ascontiguousarray(x))
    _, want = exact.search(q, k)
    recall = float(np.mean([len(set(g) & set(w)) / k for g, w in zip(got, want)]))
    return {"self_hit_rate": float(np.mean(got[:, 0] == rows)), f"recall_at_{k}": recall, "n_checked": len(rows)}


def np_search(index: Any, q: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """index.search on numpy arrays, also after `faiss.contrib.torch_utils` (imported by
    pytorch-metric-learning) replaced `search` with a torch-aware version that takes no params."""
    search = getattr(index, "search_numpy", index.search)
    return search(q, k, params=params) if params is not None else search(q, k)


def run_index(emb_dir: Path, crops_dir: Path, contexts_dir: Path | None, cfg: IndexConfig,
              out_dir: Path) -> dict[str, Any]:
    """Build, check and save the index of an embeddings dir; returns metrics."""
    import faiss
    import pyarrow.parquet as pq

    from .audit import PARQUET_OPTIONS

    emb_dir, crops_dir, out_dir = Path(emb_dir), Path(crops_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, x = load_embeddings(emb_dir)
    n, dim = x.shape
    if n == 0:
        raise ValueError(f"no embeddings in {emb_dir}")
    kind = choose_index(n, dim, cfg)
    t0 = time.perf_counter()
    index = build_index(x, cfg, kind)
    build_seconds = time.perf_counter() - t0
    faiss.write_index(index, str(out_dir / "index.faiss"))
    pq.write_table(_metadata(ids, crops_dir, contexts_dir), out_dir / "metadata.parquet", **PARQUET_OPTIONS)
    params = index_params(kind, n, dim, cfg)
    info = {"kind": kind, "dim": dim, "n": n, "metric": METRIC, "params": params, "gpu_build": _gpus(cfg, kind) > 0,
            "crops_dir": str(crops_dir.resolve()), "emb_dir": str(emb_dir.resolve()),
            "contexts_dir": str(Path(contexts_dir).resolve()) if contexts_dir is not None else None}
    (out_dir / "index.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    metrics: dict[str, Any] = {"kind": kind, "n": n, "dim": dim, "build_seconds": round(build_seconds, 3),
                               **quality(index, x, cfg.self_check_sample),
                               "index_mb": round((out_dir / "index.faiss").stat().st_size / 2**20, 3)}
    (out_dir / "report.md").write_text(_report(info, metrics), encoding="utf-8")
    return metrics


def _report(info: dict[str, Any], metrics: dict[str, Any]) -> str:
    lines = ["# Index", "", f"`{info['kind']}` over {info['n']} vectors of dim {info['dim']} ({info['metric']}), "
             f"params {json.dumps(info['params'])}.", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"
