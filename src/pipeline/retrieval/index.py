"""FAISS index over the fused crop vectors (inner product on L2-normalised vectors = cosine).

`choose_index` picks the kind like autofaiss: exact Flat for small sets, HNSW when its memory fits
the budget, else IVF with scalar-quantised codes, else IVF-PQ sized to the budget; the IVF kinds' coarse
level (k-means, HNSW quantizer over many centroids) is `pipeline.retrieval.coarse`. Every index is an
IndexIDMap2 whose int64 ids are the row numbers of metadata.parquet (= rows of the embeddings, crop_id
order).

On disk (`run_index`): index.faiss (faiss.write_index), metadata.parquet (row, crop_id, split,
crop_type, zone, zone_name, has_damage, damage_types, part, text, crop_path relative to the crops
artifact), index.json (kind, dim, n, metric, params, `inputs`: the artifact ids of the crops,
embeddings, contexts and embedding head it was built from, `embedder`: the embeddings' embedder.json,
with the adopted head's `projection` when the embedding_head phase adopted one, so that queries need
only the index) and report.md. No pickle, no absolute path, no timing: one artifact id has the
same bytes in every work dir, and the index is opened through the store (`Retriever.open`), which
resolves the crops artifact by id. (An IVF index trained on a GPU may differ in its centroids from one
trained on a CPU; whether training ran on a GPU is the `gpu_trained` metric.)
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import IndexConfig
from pipeline.retrieval.coarse import coarse_spec, quantizer_bytes, quantizer_params, search_ready, set_search_ef, train_ivf
from pipeline.retrieval.lineage import artifact_id_of

METRIC = "inner_product"
SQ_ORDER = ("SQfp16", "SQ8")
REFINE_ORDER = ("SQfp16", "SQ8", "none")
CODE_BYTES_PER_DIM = {"Flat": 4, "SQfp16": 2, "SQ8": 1, "none": 0}
REFINE_FACTORY = {"Flat": "RFlat", "SQfp16": "Refine(SQfp16)", "SQ8": "Refine(SQ8)", "none": ""}
MIN_POINTS_PER_CENTROID = 39  # FAISS warns below this many training points per list
NLIST_MAX = 4096  # 1M vectors: 4000 lists; k-means over 4096 centroids x TRAIN_MAX points is minutes on 2 cores
TRAIN_MAX = 200_000  # k-means training sample cap (50 points per list at 4000 lists)
PROBE_FRACTION = 1 / 128  # share of the lists probed once above cfg.ivf_nprobe (32 of 4000 at 1M)
METADATA_COLUMNS = ("row", "crop_id", "split", "crop_type", "zone", "zone_name", "has_damage", "damage_types",
                    "part", "text", "crop_path")


def hnsw_bytes(n: int, dim: int, m: int) -> int:
    """Approximate HNSW memory: vectors plus 2*M neighbour links of 4 bytes per vector."""
    return n * (dim * 4 + m * 2 * 4)


def _nlist(n: int) -> int:
    """~4*sqrt(n) inverted lists, at most n/39 so that every list has training points, at most NLIST_MAX (the
    k-means cost grows with nlist x training points)."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID, NLIST_MAX))


def _nprobe(nlist: int, cfg: IndexConfig) -> int:
    """Lists probed per query: cfg.ivf_nprobe, raised to PROBE_FRACTION of the lists as nlist grows with n.

    Neighbours spread over a share of the lists that does not shrink with n (bench/faiss_recall.py, 100
    clusters x 512-d, IVF-SQ8: recall@10 0.966 at 100k with 16 of 1265 lists; at 1M 0.906 with 16 of 4000,
    0.954 with 32, 0.955 with 50 for ~0.1 ms more per query), so a fixed nprobe loses recall as n grows."""
    return min(nlist, max(cfg.ivf_nprobe, math.ceil(nlist * PROBE_FRACTION)))


def _train_size(n: int, nlist: int) -> int:
    """k-means training points: up to 256 per list (faiss's own cap), at most TRAIN_MAX (the build time)."""
    return min(n, 256 * nlist, max(TRAIN_MAX, MIN_POINTS_PER_CENTROID * nlist))


def ivf_bytes(n: int, dim: int, nlist: int, codes: str) -> int:
    """IVF with scalar-quantised codes: codes + int64 id per vector, plus the coarse level (centroids and,
    with many lists, their HNSW graph)."""
    return n * (CODE_BYTES_PER_DIM[codes] * dim + 8) + quantizer_bytes(nlist, dim)


def ivf_params(n: int, dim: int, cfg: IndexConfig) -> dict[str, Any]:
    """IVF over scalar-quantised vectors: the finest codes (fp16, then 8-bit) that fit `memory_budget_mb`.

    Every probed vector is scored from its own codes, so recall stays near exact (bench: recall@10 0.999 at
    100k x 512, nprobe 16) at half (fp16) or a quarter (8-bit) of the Flat/HNSW memory.
    """
    nlist = _nlist(n)
    budget = cfg.memory_budget_mb * 2**20
    codes = SQ_ORDER if cfg.ivf_codes == "auto" else (cfg.ivf_codes,)
    for c in codes:
        if ivf_bytes(n, dim, nlist, c) <= budget:
            return {"nlist": nlist, "codes": c, "nprobe": _nprobe(nlist, cfg)}
    raise ValueError(f"{n} vectors of dim {dim} do not fit index.memory_budget_mb={cfg.memory_budget_mb} as IVF "
                     f"with {'/'.join(codes)} codes; index.kind=ivfpq compresses further")


def _pq_m_choices(dim: int) -> list[int]:
    """Even divisors of dim from dim/2 down (each 4-bit sub-quantizer codes >= 2 dims), largest first."""
    return [m for m in range(max(2, dim // 2), 1, -1) if dim % m == 0 and m % 2 == 0] or [1]


def ivfpq_bytes(n: int, dim: int, nlist: int, pq_m: int, refine: str) -> int:
    """IVF-PQ memory: 4-bit PQ codes (pq_m/2 bytes) + int64 id per vector, the refine codes, the coarse level."""
    return n * (pq_m // 2 + 8 + CODE_BYTES_PER_DIM[refine] * dim) + quantizer_bytes(nlist, dim)


def ivfpq_params(n: int, dim: int, cfg: IndexConfig) -> dict[str, Any]:
    """nlist as IVF, 4-bit fast-scan PQ with pq_m sub-quantizers, and a refine stage re-ranking k_factor*k
    PQ candidates with finer codes when those fit the budget too.

    PQ codes alone rank the near neighbours of embedding-like vectors poorly (bench: recall@10 0.26 at 10k x
    512); refined, recall climbs with k_factor. `ivf_refine: auto` takes the finest refine codes (SQfp16,
    SQ8, none) that fit `memory_budget_mb`, then the largest pq_m that fits.
    """
    nlist = _nlist(n)
    budget = cfg.memory_budget_mb * 2**20
    refines = REFINE_ORDER if cfg.ivf_refine == "auto" else (cfg.ivf_refine,)
    for refine in refines:
        fitting = [m for m in _pq_m_choices(dim) if ivfpq_bytes(n, dim, nlist, m, refine) <= budget]
        if fitting:
            return {"nlist": nlist, "pq_m": fitting[0], "pq_nbits": 4, "refine": refine,
                    "k_factor": _k_factor(nlist, cfg) if refine != "none" else 1, "nprobe": _nprobe(nlist, cfg)}
    raise ValueError(f"{n} vectors of dim {dim} do not fit index.memory_budget_mb={cfg.memory_budget_mb} even as "
                     f"IVF-PQ with refine {'/'.join(refines)}")


def _k_factor(nlist: int, cfg: IndexConfig) -> int:
    """Refine candidates per result: cfg.ivf_k_factor, scaled like nprobe (as many more PQ candidates re-ranked
    as more vectors are scanned)."""
    return math.ceil(cfg.ivf_k_factor * _nprobe(nlist, cfg) / min(cfg.ivf_nprobe, nlist))


def choose_index(n: int, dim: int, cfg: IndexConfig) -> str:
    """cfg.kind unless 'auto'; else 'flat' up to cfg.flat_max vectors, then the first of 'hnsw', 'ivf'
    (scalar-quantised) that fits cfg.memory_budget_mb, else 'ivfpq'."""
    if cfg.kind != "auto":
        return cfg.kind
    if n <= cfg.flat_max:
        return "flat"
    if hnsw_bytes(n, dim, cfg.hnsw_m) <= cfg.memory_budget_mb * 2**20:
        return "hnsw"
    try:
        ivf_params(n, dim, cfg)
        return "ivf"
    except ValueError:
        return "ivfpq"


def index_params(kind: str, n: int, dim: int, cfg: IndexConfig) -> dict[str, Any]:
    """The build and search parameters of an index kind (recorded in index.json)."""
    if kind == "hnsw":
        return {"M": cfg.hnsw_m, "efConstruction": cfg.ef_construction, "efSearch": cfg.ef_search}
    if kind == "ivf":
        return ivf_params(n, dim, cfg)
    if kind == "ivfpq":
        return ivfpq_params(n, dim, cfg)
    return {}


def _gpus(cfg: IndexConfig, kind: str) -> int:
    import faiss

    if not cfg.use_gpu or kind != "ivf" or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return 0
    return int(faiss.get_num_gpus())


def build_index(vectors: np.ndarray, cfg: IndexConfig, kind: str, report: dict[str, Any] | None = None) -> Any:
    """An IndexIDMap2 (ids = row numbers) around Flat / HNSW / IVF-SQ / IVF-PQ (+refine), inner product.

    IVF kinds: the coarse level of `pipeline.retrieval.coarse` (with many lists two-level k-means and an HNSW
    quantizer), trained on at most `_train_size` vectors. IVF-SQ's k-means (its costly part) runs on all GPUs
    when faiss has GPUs and cfg.use_gpu, falling back to the CPU with a warning; vectors are added on the CPU.
    Flat has nothing to train; HNSW and the 4-bit fast-scan IVF-PQ have no GPU build in faiss and are built on
    the CPU's threads. `report`, if given, gets `gpu_trained`: whether the training really ran on a GPU. The
    index comes back `search_ready`.
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
    elif kind == "ivf":
        base = faiss.index_factory(dim, f"{coarse_spec(p['nlist'])},{p['codes']}", faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivfpq":
        spec = ",".join(filter(None, [coarse_spec(p["nlist"]), f"PQ{p['pq_m']}x4fs", REFINE_FACTORY[p["refine"]]]))
        base = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"unknown index kind {kind!r}; expected flat, hnsw, ivf or ivfpq")
    if not base.is_trained:
        rng = np.random.default_rng(0)
        size = _train_size(n, p["nlist"])
        train = x if n <= size else x[np.sort(rng.choice(n, size, replace=False))]
        base, gpu_trained = train_ivf(base, train, _gpus(cfg, kind) > 0)
        if report is not None:
            report["gpu_trained"] = gpu_trained
    index = faiss.IndexIDMap2(base)
    index.add_with_ids(x, np.arange(n, dtype=np.int64))
    if kind in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = p["nprobe"]
        set_search_ef(index, p["nprobe"])  # after adding: queries need fewer candidates than assignments
        if p.get("refine", "none") != "none":
            faiss.downcast_index(index.index).k_factor = float(p["k_factor"])
    return search_ready(index)


def search_params(index: Any, selector: Any = None, ef_search: int | None = None, nprobe: int | None = None,
                  k_factor: float | None = None) -> Any:
    """SearchParameters matching the index's inner kind, keeping its efSearch / nprobe / k_factor unless given,
    with `selector` (a pre-filter) on the level that selects candidates."""
    import faiss

    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else faiss.downcast_index(index)
    refine = None
    if isinstance(base, faiss.IndexRefine):
        refine = faiss.IndexRefineSearchParameters()
        refine.k_factor = float(k_factor if k_factor is not None else base.k_factor)
        base = faiss.downcast_index(base.base_index)
    if isinstance(base, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef_search if ef_search is not None else base.hnsw.efSearch
    elif isinstance(base, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe if nprobe is not None else base.nprobe
        if nprobe is not None and (qp := quantizer_params(base, nprobe)) is not None:
            params.quantizer_params = qp  # an HNSW quantizer finds at least twice the probed lists
            params._keep_q = qp
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    if refine is None:
        return params
    refine.base_index_params = params
    if selector is not None:
        refine.sel = selector
    refine._keep = params  # the base params must outlive the refine params that point at them
    return refine


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
    rows = [{"row": i, **{k: crops[c][k] for k in ("crop_id", "split", "crop_type", "zone", "zone_name", "has_damage",
                                                   "damage_types", "part")},
             "text": texts.get(c), "crop_path": crops[c]["crop_path"]} for i, c in enumerate(ids)]
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
              out_dir: Path, input_ids: dict[str, str | None] | None = None,
              head_dir: Path | None = None) -> dict[str, Any]:
    """Build, check and save the index of an embeddings dir; returns metrics (gpu_trained, build_seconds
    among them: they are not written into the artifact).

    `input_ids`: artifact ids of the crops, embeddings and contexts, recorded in index.json; by default
    read from the input directories' lineage.json (None for a directory outside a store). `head_dir`: an
    embedding_head artifact; when it adopted its head, the index holds the head's vectors and index.json's
    `embedder` names the head (`projection`), so that queries are projected the same way."""
    import faiss

    from pipeline.core.tables import METADATA, write_table
    from pipeline.retrieval.adopt import searched_vectors

    emb_dir, crops_dir, out_dir = Path(emb_dir), Path(crops_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, x, embedder = searched_vectors(emb_dir, head_dir)
    n, dim = x.shape
    if n == 0:
        raise ValueError(f"no embeddings in {emb_dir}")
    kind = choose_index(n, dim, cfg)
    t0 = time.perf_counter()
    built: dict[str, Any] = {"gpu_trained": False}
    index = build_index(x, cfg, kind, built)
    build_seconds = time.perf_counter() - t0
    faiss.write_index(index, str(out_dir / "index.faiss"))
    write_table(_metadata(ids, crops_dir, contexts_dir), out_dir / METADATA)
    params = index_params(kind, n, dim, cfg)
    dirs = {"crops": crops_dir, "embeddings": emb_dir, "contexts": contexts_dir}
    if head_dir is not None:
        dirs["embedding_head"] = Path(head_dir)
    ids_in = {name: artifact_id_of(d) for name, d in dirs.items()} | dict(input_ids or {})
    info = {"kind": kind, "dim": dim, "n": n, "metric": METRIC, "params": params, "inputs": ids_in,
            "embedder": embedder}
    (out_dir / "index.json").write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
    content: dict[str, Any] = {"kind": kind, "n": n, "dim": dim, **quality(index, x, cfg.self_check_sample),
                               "index_mb": round((out_dir / "index.faiss").stat().st_size / 2**20, 3)}
    (out_dir / "report.md").write_text(_report(info, content), encoding="utf-8")
    return {**content, "build_seconds": round(build_seconds, 3), "gpu_trained": int(built["gpu_trained"])}


def _report(info: dict[str, Any], metrics: dict[str, Any]) -> str:
    lines = ["# Index", "", f"`{info['kind']}` over {info['n']} vectors of dim {info['dim']} ({info['metric']}), "
             f"params {json.dumps(info['params'])}.", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"
