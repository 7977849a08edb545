"""The coarse level of the IVF kinds (IVF-SQ, IVF-PQ): how the lists are trained and found.

With few lists (< HNSW_QUANTIZER_MIN) the quantizer is an exact IndexFlat over the centroids and the
centroids come from faiss's k-means, as faiss builds `IVF<nlist>,...` by itself. With many lists:

- the centroids come from faiss's k-means in two levels (`two_level_kmeans`, as faiss.contrib's
  two_level_clustering: ~sqrt(nlist) clusters, then sub-clusters in proportion to their size): at 4000
  lists over 200k points of 512-d it takes ~9 s on 2 cores against ~180 s for one level, with the same
  recall (bench/faiss_recall.py);
- the quantizer is an HNSW graph over the centroids (faiss's `IVF<nlist>_HNSW32`): finding the 32
  nearest of 4000 centroids costs ~0.1 ms instead of ~0.8 ms for a scan of all of them on one core here
  (4000 x 512 floats = 8 MB read per query), with 99.9% of the same lists. While the vectors are
  assigned (training the codes, adding) its efSearch is EF_ASSIGN, near exact (a wrong list means a
  larger residual, which widens the code ranges); for queries QUANTIZER_EF or twice nprobe.

`search_ready` sets what faiss does not store in the file: a single query scans its probed lists on
every OpenMP thread (`parallel_mode` 1) instead of one thread per query.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np

HNSW_QUANTIZER_MIN = 1024  # lists from which the quantizer is an HNSW graph and k-means is two-level
QUANTIZER_M = 32
QUANTIZER_EF_CONSTRUCTION = 200  # cheap: a few thousand centroids
EF_ASSIGN = 128  # efSearch while training and adding: the assignments are near exact
QUANTIZER_EF = 64  # efSearch for queries (at least twice nprobe)


def uses_hnsw_quantizer(nlist: int) -> bool:
    return nlist >= HNSW_QUANTIZER_MIN


def coarse_spec(nlist: int) -> str:
    """The index_factory prefix of the coarse level: `IVF<nlist>` or `IVF<nlist>_HNSW32`."""
    return f"IVF{nlist}_HNSW{QUANTIZER_M}" if uses_hnsw_quantizer(nlist) else f"IVF{nlist}"


def quantizer_bytes(nlist: int, dim: int) -> int:
    """The centroids (float32), plus the HNSW graph's links when there is one."""
    links = nlist * QUANTIZER_M * 2 * 4 if uses_hnsw_quantizer(nlist) else 0
    return nlist * dim * 4 + links


def quantizer_ef(nprobe: int) -> int:
    return max(QUANTIZER_EF, 2 * nprobe)


def _hnsw_quantizer(ivf: Any) -> Any | None:
    import faiss

    q = faiss.downcast_index(ivf.quantizer)
    return q if isinstance(q, faiss.IndexHNSW) else None


def train_ivf(base: Any, train: np.ndarray, gpu: bool) -> tuple[Any, bool]:
    """Train an IVF index built by index_factory (codes and coarse level): (the trained index, whether its
    k-means ran on a GPU). Below HNSW_QUANTIZER_MIN lists faiss's own training (on all GPUs if `gpu`,
    copied back to the CPU); else two-level k-means into the HNSW quantizer, then the codes on the
    vectors' residuals."""
    import faiss

    ivf = faiss.extract_index_ivf(base)
    hnsw = _hnsw_quantizer(ivf)
    if hnsw is None:
        return _train_whole(base, train, gpu)
    spherical = ivf.metric_type == faiss.METRIC_INNER_PRODUCT  # as faiss's own IVF training of an IP index
    centroids, on_gpu = _gpu_first(lambda g: two_level_kmeans(train, ivf.nlist, spherical, gpu=g), gpu, "k-means")
    hnsw.hnsw.efConstruction = QUANTIZER_EF_CONSTRUCTION
    hnsw.add(centroids)
    hnsw.hnsw.efSearch = EF_ASSIGN
    base.train(train)  # the quantizer holds nlist centroids: faiss trains the codes only
    return base, on_gpu


def allocate(sizes: np.ndarray, total: int) -> np.ndarray:
    """Sub-centroids per first-level cluster: proportional to its points (largest remainders), at least one
    for a non-empty cluster, never more than its points; they sum to `total` (<= the points)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    quota = sizes * total / max(1, sizes.sum())
    alloc = np.minimum(np.maximum(np.floor(quota).astype(np.int64), (sizes > 0).astype(np.int64)), sizes)
    while alloc.sum() != total:
        if alloc.sum() < total:  # the largest remainders among clusters with points to spare
            room = np.flatnonzero(alloc < sizes)
            alloc[room[np.argmax((quota - alloc)[room])]] += 1
        else:  # minimums overshot: take from the clusters most above their quota
            room = np.flatnonzero(alloc > 1)
            alloc[room[np.argmax((alloc - quota)[room])]] -= 1
    return alloc


def two_level_kmeans(x: np.ndarray, nlist: int, spherical: bool, gpu: bool = False, seed: int = 1234) -> np.ndarray:
    """`nlist` centroids of `x` by faiss's k-means in two levels (as faiss.contrib.clustering's
    two_level_clustering, which can give an empty first-level cluster no centroid and fail): ~sqrt(nlist)
    clusters, then each split into `allocate`d sub-clusters. Deterministic for a given `x` and seed."""
    import faiss

    d = x.shape[1]
    nc1 = max(1, round(math.sqrt(nlist)))
    top = faiss.Kmeans(d, nc1, niter=25, spherical=spherical, gpu=gpu, seed=seed, max_points_per_centroid=2000)
    top.train(x)
    _, assign = top.index.search(x, 1)
    assign = assign[:, 0]
    alloc = allocate(np.bincount(assign, minlength=nc1), nlist)
    parts = []
    for c in np.flatnonzero(alloc).tolist():
        sub = np.ascontiguousarray(x[assign == c])
        if alloc[c] == 1:
            parts.append(sub.mean(axis=0, keepdims=True))
            continue
        km = faiss.Kmeans(d, int(alloc[c]), niter=25, spherical=spherical, gpu=gpu, seed=seed + c + 1)
        km.train(sub)
        parts.append(km.centroids)
    return np.ascontiguousarray(np.vstack(parts), dtype=np.float32)


def _gpu_first(run: Callable[[bool], Any], gpu: bool, what: str) -> tuple[Any, bool]:
    """(run(True), True) when `gpu` and it succeeds, else (run(False), False), warning when a GPU try failed:
    a GPU problem must not stop the build."""
    if gpu:
        try:
            return run(True), True
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"GPU {what} of the index failed ({exc}); training on the CPU", RuntimeWarning)
    return run(False), False


def _train_whole(base: Any, train: np.ndarray, gpu: bool) -> tuple[Any, bool]:
    """faiss's own training of the whole index, on all GPUs if `gpu` (copied back to the CPU)."""
    import faiss

    def run(on_gpu: bool) -> Any:
        if not on_gpu:
            base.train(train)
            return base
        clone = faiss.index_cpu_to_all_gpus(base)
        clone.train(train)
        return faiss.index_gpu_to_cpu(clone)

    return _gpu_first(run, gpu, "training")


def set_search_ef(index: Any, nprobe: int) -> None:
    """The HNSW quantizer's efSearch for queries that probe `nprobe` lists (no-op for a flat quantizer)."""
    import faiss

    hnsw = _hnsw_quantizer(faiss.extract_index_ivf(index))
    if hnsw is not None:
        hnsw.hnsw.efSearch = quantizer_ef(nprobe)


def quantizer_params(index: Any, nprobe: int) -> Any | None:
    """SearchParametersHNSW for the quantizer when a query probes `nprobe` lists (None: flat quantizer)."""
    import faiss

    if _hnsw_quantizer(faiss.extract_index_ivf(index)) is None:
        return None
    params = faiss.SearchParametersHNSW()
    params.efSearch = quantizer_ef(nprobe)
    return params


def search_ready(index: Any) -> Any:
    """Settings faiss does not keep in the file: an IVF index scans a single query's lists on every thread
    (`parallel_mode` 1; faiss's default 0 gives one thread per query, so one query used one core)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.parallel_mode = 1
    return index
