"""Build time, QPS and recall@10 of Flat / HNSW / IVF-PQ on clustered (Gaussian-mixture) vectors.

    python bench/faiss_recall.py [--n 20000] [--dim 512] [--queries 500] [--ef 16 64 256]

Recall is measured against exact IndexFlatIP on held-out queries drawn from the same mixture.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def mixture(n: int, dim: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(size=(k, dim))
    x = centers[rng.integers(0, k, n)] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=100)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--ef", type=int, nargs="+", default=[16, 64, 256], help="HNSW efSearch values")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64], help="IVF-PQ nprobe values")
    args = ap.parse_args()

    import faiss

    from pipeline.config import IndexConfig
    from pipeline.index import build_index, index_params, search_params

    x = mixture(args.n, args.dim, args.clusters, 1)
    q = mixture(args.queries, args.dim, args.clusters, 2)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(x)
    _, truth = exact.search(q, 10)
    print(f"n={args.n} dim={args.dim} queries={args.queries} threads={faiss.omp_get_max_threads()}")
    print(f"{'kind':8} {'param':>12} {'build_s':>8} {'qps':>9} {'recall@10':>9}")
    cfg = IndexConfig()
    for kind in ("flat", "hnsw", "ivfpq"):
        t = time.perf_counter()
        index = build_index(x, cfg, kind)
        build = time.perf_counter() - t
        settings = {"flat": [None], "hnsw": args.ef, "ivfpq": args.nprobe}[kind]
        for s in settings:
            params = search_params(index)
            if kind == "hnsw":
                params.efSearch = s
            elif kind == "ivfpq":
                params.nprobe = s
            t = time.perf_counter()
            _, got = index.search(q, 10, params=params)
            qps = len(q) / (time.perf_counter() - t)
            recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, truth)])
            label = "" if s is None else f"{'efSearch' if kind == 'hnsw' else 'nprobe'}={s}"
            print(f"{kind:8} {label:>12} {build:8.2f} {qps:9.0f} {recall:9.3f}")
        if kind == "ivfpq":
            print(f"ivfpq params: {index_params(kind, args.n, args.dim, cfg)}")


if __name__ == "__main__":
    main()
