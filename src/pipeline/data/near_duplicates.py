"""Near-duplicate search over 64-bit perceptual hashes: all pairs within a Hamming distance.

`near_duplicate_pairs` answers with a faiss binary index instead of comparing all pairs:
- threshold t <= 7: `IndexBinaryMultiHash` with t + 1 hash tables of 64 // (t + 1) bits each.
  By the pigeonhole principle two hashes at distance <= t agree exactly on at least one of the
  t + 1 disjoint substrings, so looking up each hash's buckets (no bit flips) finds every pair;
  the candidates are then checked with their full Hamming distance. Cost ~ n x (t + 1) x bucket size.
- larger t (substrings too short to separate anything): `IndexBinaryFlat.range_search`, an
  exhaustive popcount scan in C++ (still O(n^2), but without Python-level blocks).
Both give exactly the pairs of `near_duplicate_pairs_exhaustive`, the numpy reference kept for
tests and bench/near_duplicates.py.
"""
from __future__ import annotations

import numpy as np

HASH_BITS = 64
MIN_SUBSTRING_BITS = 8  # below this the multi-hash buckets are too coarse to beat the flat scan

_POPCOUNT8 = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1)


def _as_pairs(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(m, 2) int64 pairs with i < j, sorted, unique."""
    keep = i < j
    pairs = np.stack([i[keep], j[keep]], axis=1).astype(np.int64).reshape(-1, 2)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def near_duplicate_pairs_exhaustive(hashes: np.ndarray, threshold: int, block: int = 256) -> np.ndarray:
    """Reference: compare all pairs (numpy, row blocks); (m, 2) pairs i < j within `threshold` bits."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    found_i, found_j = [], []
    for start in range(0, len(hashes), block):
        dist = _popcount(hashes[start : start + block, None] ^ hashes[None, start:])
        i, j = np.nonzero(dist <= threshold)
        found_i.append(i + start)
        found_j.append(j + start)  # j is offset by `start` like i: the upper triangle is j > i
    if not found_i:
        return np.zeros((0, 2), dtype=np.int64)
    return _as_pairs(np.concatenate(found_i), np.concatenate(found_j))


def make_index(threshold: int):
    """The faiss binary index used for `threshold` (see the module docstring)."""
    import faiss

    nhash = threshold + 1
    bits = HASH_BITS // nhash
    if bits >= MIN_SUBSTRING_BITS:
        return faiss.IndexBinaryMultiHash(HASH_BITS, nhash, min(bits, 32))
    return faiss.IndexBinaryFlat(HASH_BITS)


def near_duplicate_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """(m, 2) int64 index pairs (i < j, sorted) of uint64 hashes within `threshold` bits, via faiss."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    if len(hashes) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    if not 0 <= threshold <= HASH_BITS:
        raise ValueError(f"threshold {threshold} outside 0..{HASH_BITS}")
    codes = np.ascontiguousarray(hashes.astype("<u8")).view(np.uint8).reshape(len(hashes), 8)
    index = make_index(threshold)
    index.add(codes)
    lims, dist, ids = index.range_search(codes, threshold + 1)  # faiss keeps distances < radius
    queries = np.repeat(np.arange(len(hashes), dtype=np.int64), np.diff(lims).astype(np.int64))
    ids = ids.astype(np.int64)
    ok = dist <= threshold
    return _as_pairs(queries[ok], ids[ok])
