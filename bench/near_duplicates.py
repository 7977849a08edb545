"""Near-duplicate search: faiss binary index vs the all-pairs comparison, on random 64-bit hashes.

    python bench/near_duplicates.py [--n 100000] [--threshold 4] [--sample 5000] [--threads 2]

n random hashes with planted near duplicates (copies of random hashes with 0..threshold+1 bits
flipped). The index search runs on all n. The all-pairs search (numpy popcount in row blocks, the
old audit code) is O(n^2): it is run on the first `sample` rows against all n and extrapolated
linearly in rows (n / sample), which is what the row-block loop costs. On a sample small enough
to run fully (--check n), both results are compared pair for pair.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def planted(n: int, threshold: int, n_dups: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    src = rng.integers(0, n, size=n_dups)
    dst = rng.integers(0, n, size=n_dups)
    for s, d in zip(src, dst):
        bits = rng.choice(64, size=int(rng.integers(0, threshold + 2)), replace=False)
        mask = np.uint64(sum(1 << int(b) for b in bits))
        hashes[d] = hashes[s] ^ mask
    return hashes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--threshold", type=int, default=4)
    ap.add_argument("--sample", type=int, default=5_000, help="rows of the all-pairs run (extrapolated)")
    ap.add_argument("--check", type=int, default=20_000, help="size on which both results are compared")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import faiss

    from pipeline.data.near_duplicates import _popcount, make_index, near_duplicate_pairs, near_duplicate_pairs_exhaustive

    faiss.omp_set_num_threads(args.threads)
    hashes = planted(args.n, args.threshold, args.n // 100, seed=0)

    small = hashes[: args.check]
    same = np.array_equal(near_duplicate_pairs(small, args.threshold), near_duplicate_pairs_exhaustive(small, args.threshold))

    t0 = time.perf_counter()
    pairs = near_duplicate_pairs(hashes, args.threshold)
    t_index = time.perf_counter() - t0

    rows = min(args.sample, args.n)
    t0 = time.perf_counter()
    for start in range(0, rows, 256):  # the old loop: each row block against every later row
        dist = _popcount(hashes[start : min(start + 256, rows), None] ^ hashes[None, start:])
        np.nonzero(dist <= args.threshold)
    t_sample = time.perf_counter() - t0
    # Rows near the end compare against fewer later rows: the full run is ~ sum over rows of (n - row),
    # i.e. n^2 / 2; the sample covered sum_{r < rows} (n - r).
    work_sample = rows * args.n - rows * (rows - 1) / 2
    t_all_pairs = t_sample * (args.n * (args.n + 1) / 2) / work_sample

    print(f"n={args.n} threshold={args.threshold} threads={args.threads} index={type(make_index(args.threshold)).__name__}")
    print(f"pairs found: {len(pairs)}; identical to all-pairs on the first {len(small)} hashes: {same}")
    print(f"index search: {t_index:.2f} s (all {args.n} hashes)")
    print(f"all-pairs:    {t_all_pairs:.1f} s (extrapolated from {rows} rows x {args.n}: {t_sample:.2f} s)")
    print(f"speed-up:     {t_all_pairs / t_index:.0f}x")


if __name__ == "__main__":
    main()
