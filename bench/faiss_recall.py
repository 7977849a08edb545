"""Build time, size, recall@10 and p50/p99 single-query latency of Flat / HNSW / IVF-SQ / IVF-PQ (+refine).

    python bench/faiss_recall.py [--sizes 10000 100000] [--dim 512] [--queries 300]
        [--ef 16 64 256] [--nprobe 4 16 64] [--codes SQfp16 SQ8] [--refine SQfp16 none]
        [--k-factor 10 100] [--embeddings DIR]

Data: clustered synthetic vectors (a Gaussian mixture), the way embeddings are clustered.
Uniform random vectors are HNSW's worst case and say nothing about embeddings (seen here: recall@10
0.16 at efSearch 64 on 100k uniform 512-d vectors). With --embeddings DIR (an `embeddings`
artifact, e.g. the demo's) the same figures on real embeddings, queries held out from the index.
HNSW with efConstruction 200 at 100k vectors takes minutes to build on 2 cores.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def mixture(n: int, dim: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(size=(k, dim))
    x = centers[rng.integers(0, k, n)] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bench(name: str, x: np.ndarray, q: np.ndarray, args) -> None:
    import faiss

    from pipeline.core.config import IndexConfig
    from pipeline.retrieval.index import build_index, index_params, np_search, search_params

    n, dim = x.shape
    exact = faiss.IndexFlatIP(dim)
    exact.add(x)
    _, truth = exact.search(q, 10)
    print(f"\n{name}: n={n} dim={dim} queries={len(q)} threads={faiss.omp_get_max_threads()}")
    print(f"{'kind':18} {'param':>12} {'build_s':>8} {'MB':>7} {'recall@10':>9} {'p50_ms':>8} {'p99_ms':>8}")
    variants = [("flat", IndexConfig()), ("hnsw", IndexConfig())]
    if n >= 4000:  # IVF needs >= 39 training points per list
        variants += [("ivf", IndexConfig(ivf_codes=c)) for c in args.codes]
        variants += [("ivfpq", IndexConfig(ivf_refine=r, ivf_k_factor=f)) for r in args.refine
                     for f in (args.k_factor if r != "none" else [1])]
    for kind, cfg in variants:
        t = time.perf_counter()
        index = build_index(x, cfg, kind)
        build = time.perf_counter() - t
        mb = faiss.serialize_index(index).nbytes / 2**20
        p = index_params(kind, n, dim, cfg)
        label_kind = {"ivf": f"ivf-{p.get('codes')}", "ivfpq": f"ivfpq+{p.get('refine')}/{p.get('k_factor')}"}.get(kind, kind)
        for s in {"flat": [None], "hnsw": args.ef, "ivf": args.nprobe, "ivfpq": args.nprobe}[kind]:
            params = search_params(index, ef_search=s if kind == "hnsw" else None,
                                   nprobe=s if kind.startswith("ivf") else None)
            got, lat = [], []
            for i in range(len(q)):  # one query at a time: the latency a user waits for
                t = time.perf_counter()
                _, ids = np_search(index, q[i:i + 1], 10, params)
                lat.append((time.perf_counter() - t) * 1000)
                got.append(ids[0])
            recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, truth)])
            label = "" if s is None else f"{'efSearch' if kind == 'hnsw' else 'nprobe'}={s}"
            print(f"{label_kind:18} {label:>12} {build:8.2f} {mb:7.1f} {recall:9.3f} {np.percentile(lat, 50):8.3f} "
                  f"{np.percentile(lat, 99):8.3f}", flush=True)
        if kind.startswith("ivf"):
            print(f"{'':18} params: {p}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000], help="synthetic index sizes (e.g. 10000 100000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=100)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--ef", type=int, nargs="+", default=[16, 64, 256], help="HNSW efSearch values")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64], help="IVF-PQ nprobe values")
    ap.add_argument("--codes", nargs="+", default=["SQfp16", "SQ8"], help="IVF codes to compare (index.ivf_codes)")
    ap.add_argument("--refine", nargs="+", default=["SQfp16", "none"],
                    help="IVF-PQ refine stages to compare (index.ivf_refine values)")
    ap.add_argument("--k-factor", type=int, nargs="+", default=[10, 100], help="IVF-PQ refine k_factor values")
    ap.add_argument("--embeddings", type=Path, default=None, help="an embeddings artifact dir (real vectors)")
    args = ap.parse_args()

    for n in args.sizes:
        bench(f"gaussian mixture ({args.clusters} clusters)", mixture(n, args.dim, args.clusters, 1),
              mixture(args.queries, args.dim, args.clusters, 2), args)
    if args.embeddings:
        from pipeline.retrieval.embed import load_embeddings

        _, x = load_embeddings(args.embeddings)
        rng = np.random.default_rng(0)
        held = rng.choice(len(x), size=min(args.queries, len(x) // 5), replace=False)
        keep = np.setdiff1d(np.arange(len(x)), held)
        bench(f"real embeddings {args.embeddings}", np.ascontiguousarray(x[keep]), np.ascontiguousarray(x[held]), args)


if __name__ == "__main__":
    main()
