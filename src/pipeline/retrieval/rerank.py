"""Re-ranking of a query's candidates: alpha query expansion and k-reciprocal re-ranking.

Both work on what a filtered search already returned (a query's top-N allowed candidates, best first,
and their vectors), so a re-ranked result only permutes or re-scores rows that meet the search's
filter and exclusions: k results that meet the filter whenever N >= k such rows exist.

- `alpha_qe` (Radenović et al. 2018): the query moved to q + sum_i s_i^alpha x_i over its top `n`
  candidates (unit vectors; s_i their cosine, clipped at 0), L2-normalised; the caller searches again with it (same
  filter). n=0 is the plain query.
- `k_reciprocal` (Zhong et al. 2017, restricted to the candidate set): within {query} + candidates,
  each item's k1-reciprocal neighbours (expanded by their k1/2-reciprocal sets that overlap them by
  more than 2/3), Gaussian-weighted, averaged over k2 nearest neighbours (local query expansion); the
  final distance is (1 - lam) * Jaccard + lam * original distance. Computed on the (N+1)^2 distances
  of the candidates only, so it costs no extra searches: N ~ 50-100 is a few ms per query.
"""
from __future__ import annotations

import numpy as np


def l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def alpha_qe(query: np.ndarray, cand_vecs: np.ndarray, n: int = 3, alpha: float = 3.0) -> np.ndarray:
    """(dim,) expanded query from the top `n` rows of `cand_vecs` (best first)."""
    q = l2n(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
    top = np.asarray(cand_vecs, dtype=np.float32)[:max(0, n)]
    if len(top) == 0:
        return q
    top = l2n(top)
    w = np.clip(top @ q, 0.0, None) ** alpha
    return l2n((q + (w[:, None] * top).sum(axis=0))[None, :])[0]


def _reciprocal(rank: np.ndarray, k: int) -> np.ndarray:
    """(m, m) bool: [i, j] when j is in i's top-(k+1) and i in j's (each item is its own neighbour)."""
    m = len(rank)
    top = np.zeros((m, m), dtype=bool)
    top[np.arange(m)[:, None], rank[:, : k + 1]] = True
    return top & top.T


def k_reciprocal(query: np.ndarray, cand_vecs: np.ndarray, k1: int = 20, k2: int = 6,
                 lam: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(order, distance): the candidates re-ranked (indices into cand_vecs, best first) and their final
    distances (lower is better). See the module docstring."""
    cand = np.asarray(cand_vecs, dtype=np.float32)
    m = len(cand) + 1
    if m <= 2:
        return np.arange(len(cand)), np.zeros(len(cand), dtype=np.float32)
    x = np.concatenate([l2n(np.asarray(query, dtype=np.float32).reshape(1, -1)), l2n(cand)])
    dist = np.maximum(2.0 - 2.0 * (x @ x.T), 0.0)
    dist = dist / np.maximum(dist.max(axis=1, keepdims=True), 1e-12)  # per row, as the reference code
    rank = np.argsort(dist, axis=1, kind="stable")
    k1 = min(k1, m - 1)
    half = max(1, int(np.around(k1 / 2)))
    recip = _reciprocal(rank, k1)
    half_recip = _reciprocal(rank, half)
    # c in R(i) brings its k1/2-reciprocal set when that set overlaps R(i) by more than 2/3 of its size
    overlap = recip.astype(np.float32) @ half_recip.T.astype(np.float32)
    brings = recip & (overlap > (2.0 / 3.0) * half_recip.sum(axis=1)[None, :])
    members = recip | ((brings.astype(np.float32) @ half_recip.astype(np.float32)) > 0)
    w = np.where(members, np.exp(-dist), 0.0).astype(np.float32)
    v = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    if k2 > 1:
        v = v[rank[:, : min(k2, m)]].mean(axis=1)
    inter = np.minimum(v[0][None, :], v).sum(axis=1)
    union = np.maximum(v[0][None, :], v).sum(axis=1)
    jaccard = 1.0 - inter / np.maximum(union, 1e-12)
    final = ((1.0 - lam) * jaccard + lam * dist[0])[1:]
    order = np.argsort(final, kind="stable")
    return order, final[order]
