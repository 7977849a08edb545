"""Build time, size, recall@10 and p50/p99 single-query latency of Flat / HNSW / IVF-SQ / IVF-PQ (+refine).

    python bench/faiss_recall.py [--sizes 10000 100000] [--dim 512] [--queries 300]
        [--ef 16 64 256] [--nprobe 4 16 64] [--codes SQfp16 SQ8] [--refine SQfp16 none]
        [--k-factor 10 100] [--kinds auto flat hnsw ivf ivfpq] [--budget-flat 0.3] [--search-threads 1 2]
        [--embeddings DIR]

    python bench/faiss_recall.py --sizes 1000000 --kinds auto --budget-flat 0.3 --search-threads 1 2 --nprobe 24

`auto` is the kind `choose_index` picks with index.memory_budget_mb = budget-flat x Flat's bytes (every
variant gets that budget when given), searched with the parameters it chose (and the --nprobe sweep).
--search-threads 1 2: the single-query figures on one OpenMP thread, then on two (an IVF index scans a
query's probed lists on every thread, `pipeline.retrieval.coarse.search_ready`); on a loaded machine
threads wait for each other, so a busy server may want one.

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


def mixture(n: int, dim: int, k: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """n L2-normalised float32 vectors around k Gaussian centres, built chunk by chunk (1M x 512 is 2 GB)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(size=(k, dim)).astype(np.float32)
    labels = rng.integers(0, k, n)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        x = centers[labels[s:e]] + 0.35 * rng.standard_normal(size=(e - s, dim), dtype=np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def variants(n: int, dim: int, args) -> list[tuple[str, object]]:
    """(kind, IndexConfig) pairs to build; `auto` resolved by choose_index under the budget."""
    from pipeline.core.config import IndexConfig
    from pipeline.retrieval.index import choose_index

    base = {}
    if args.budget_flat:
        base["memory_budget_mb"] = max(1, int(args.budget_flat * n * dim * 4 / 2**20))
    out = []
    for kind in args.kinds:
        if kind == "auto":
            cfg = IndexConfig(**base)
            out.append((f"auto:{choose_index(n, dim, cfg)}", cfg))
        elif kind in ("flat", "hnsw"):
            out.append((kind, IndexConfig(**base)))
        elif kind == "ivf" and n >= 4000:  # IVF needs >= 39 training points per list
            out += [("ivf", IndexConfig(ivf_codes=c, **base)) for c in args.codes]
        elif kind == "ivfpq" and n >= 4000:
            out += [("ivfpq", IndexConfig(ivf_refine=r, ivf_k_factor=f, **base)) for r in args.refine
                    for f in (args.k_factor if r != "none" else [1])]
    return out


def bench(name: str, x: np.ndarray, q: np.ndarray, args) -> None:
    import faiss

    from pipeline.retrieval.index import (
        build_index,
        index_params,
        np_search,
        search_params,
    )

    n, dim = x.shape
    threads = faiss.omp_get_max_threads()
    _, truth = faiss.knn(q, x, 10, faiss.METRIC_INNER_PRODUCT)  # exact, without a second copy of x
    print(f"\n{name}: n={n} dim={dim} queries={len(q)} build threads={threads}"
          + (f" budget={args.budget_flat} x Flat" if args.budget_flat else ""))
    print(f"{'kind':22} {'param':>12} {'thr':>3} {'build_s':>8} {'MB':>7} {'recall@10':>9} {'p50_ms':>8} {'p99_ms':>8}")
    for label, cfg in variants(n, dim, args):
        kind = label.split(":")[-1]
        t = time.perf_counter()
        index = build_index(x, cfg, kind)
        build = time.perf_counter() - t
        mb = faiss.serialize_index(index).nbytes / 2**20
        p = index_params(kind, n, dim, cfg)
        label_kind = {"ivf": f"{label}-{p.get('codes')}", "ivfpq": f"{label}+{p.get('refine')}/{p.get('k_factor')}"}.get(kind, label)
        sweep = {"flat": [None], "hnsw": args.ef, "ivf": args.nprobe, "ivfpq": args.nprobe}[kind]
        if label.startswith("auto") and kind != "flat":
            sweep = [None, *sweep]  # first as built: the parameters auto chose
        for nt in args.search_threads or [threads]:
            faiss.omp_set_num_threads(nt)
            for s in sweep:
                params = search_params(index, ef_search=s if kind == "hnsw" else None,
                                       nprobe=s if kind.startswith("ivf") else None)
                got, lat = [], []
                for i in range(len(q)):  # one query at a time: the latency a user waits for
                    t = time.perf_counter()
                    _, ids = np_search(index, q[i:i + 1], 10, params)
                    lat.append((time.perf_counter() - t) * 1000)
                    got.append(ids[0])
                recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, truth)])
                setting = "as built" if s is None and kind != "flat" else "" if s is None else \
                    f"{'efSearch' if kind == 'hnsw' else 'nprobe'}={s}"
                print(f"{label_kind:22} {setting:>12} {nt:>3} {build:8.2f} {mb:7.1f} {recall:9.3f} "
                      f"{np.percentile(lat, 50):8.3f} {np.percentile(lat, 99):8.3f}", flush=True)
        faiss.omp_set_num_threads(threads)  # builds use every thread
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
    ap.add_argument("--kinds", nargs="+", default=["auto", "flat", "hnsw", "ivf", "ivfpq"],
                    choices=["auto", "flat", "hnsw", "ivf", "ivfpq"], help="index kinds to build")
    ap.add_argument("--budget-flat", type=float, default=None,
                    help="index.memory_budget_mb as a fraction of Flat's bytes (e.g. 0.3)")
    ap.add_argument("--search-threads", type=int, nargs="+", default=None,
                    help="OpenMP threads for the timed queries, each in turn (default: all); an IVF index scans one "
                         "query's lists on all of them (pipeline.retrieval.coarse.search_ready)")
    ap.add_argument("--embeddings", type=Path, default=None, help="an embeddings artifact dir (real vectors)")
    args = ap.parse_args()

    for n in args.sizes:
        bench(f"gaussian mixture ({args.clusters} clusters)", mixture(n, args.dim, args.clusters, 1),
              mixture(args.queries, args.dim, args.clusters, 2), args)
    if args.embeddings:
        from pipeline.retrieval.embeddings import load_embeddings

        _, x = load_embeddings(args.embeddings)
        rng = np.random.default_rng(0)
        held = rng.choice(len(x), size=min(args.queries, len(x) // 5), replace=False)
        keep = np.setdiff1d(np.arange(len(x)), held)
        bench(f"real embeddings {args.embeddings}", np.ascontiguousarray(x[keep]), np.ascontiguousarray(x[held]), args)


if __name__ == "__main__":
    main()
