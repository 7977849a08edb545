"""Honest k-NN figures shared by retrieval validation, the nightly head's adoption and the embedding study.

A query's references never include itself, crops of its own photo (item_id) or of its group
(group_id: the same vehicle, a near duplicate's original): overlapping windows of one photo are near
copies of each other, and counting them as hits would measure memory, not retrieval.

`neighbour_metrics` ranks query vectors against reference vectors (inner product), optionally
re-ranked (`rerankers`: alpha query expansion or k-reciprocal re-ranking of the allowed candidates),
and returns per label: precision@k, recall@k, AP@R and precision@1 per query, their means, and for
the damage state the coverage (share of same-state references among the top k) of damaged and clean
queries. Per-query arrays come back under `per_query` so that callers can put intervals over photos on
every figure (`pipeline.retrieval.stats`). `damage_label` is a crop's label for the per-type figures.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable

import numpy as np

# (query vector, candidate rows best first, reference matrix, exclusion row) -> re-ordered candidate rows
Reranker = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def damage_label(row: dict[str, Any]) -> str:
    """One label per crop for per-type metrics: the most frequent defect type, or 'clean'."""
    if not row.get("has_damage"):
        return "clean"
    defects = json.loads(row.get("defects") or "[]") if isinstance(row.get("defects"), str) else []
    types = [d.get("type") for d in defects if d.get("type")] or list(row.get("damage_types") or [])
    return Counter(types).most_common(1)[0][0] if types else "damage"


def excluded(queries: np.ndarray, item: np.ndarray, group: np.ndarray) -> np.ndarray:
    """(len(queries), n) bool: references a query may not count: itself, its photo (item) and its group
    (empty item or group keys match nothing)."""
    out = np.zeros((len(queries), len(item)), dtype=bool)
    for keys in (item, group):
        qk = keys[queries][:, None]
        out |= (keys[None, :] == qk) & (qk != "")
    out[np.arange(len(queries)), queries] = True
    return out


def ranking(refs: np.ndarray, qvecs: np.ndarray, excl: np.ndarray, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    """(order, n_allowed): each query's references sorted best first (excluded ones last), and how many
    are allowed. 'ip': inner product; 'l2': euclidean distance."""
    sims = qvecs @ refs.T
    if metric == "l2":
        sims = 2 * sims - (refs * refs).sum(axis=1)[None, :]  # -(|q - r|^2) up to the query's own norm
    sims = np.where(excl, -np.inf, sims)
    return np.argsort(-sims, axis=1, kind="stable"), (~excl).sum(axis=1)


def knn(x: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip", item: np.ndarray | None = None,
        group: np.ndarray | None = None, qvecs: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k nearest allowed references of each query (the query, its photo and group excluded;
    -1 where fewer than k are allowed). `qvecs`: query vectors other than x[queries] (image queries)."""
    n = len(x)
    none = np.full(n, "", dtype=object)
    excl = excluded(queries, none if item is None else item, none if group is None else group)
    order, allowed = ranking(x, x[queries] if qvecs is None else qvecs, excl, metric)
    out = order[:, :k].copy()
    out[np.arange(min(k, n))[None, :] >= allowed[:, None]] = -1
    return out


def ap_at_r(rel: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per-query AP@R: mean over the first R ranks of precision@i at the relevant ones (nan when R = 0)."""
    n = rel.shape[1]
    ranks = np.arange(1, n + 1)[None, :]
    in_r = ranks <= r[:, None]
    prec = np.cumsum(rel, axis=1) / ranks
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r > 0, (prec * rel * in_r).sum(axis=1) / r, np.nan)


def _rerank(order: np.ndarray, allowed: np.ndarray, qvecs: np.ndarray, refs: np.ndarray, excl: np.ndarray,
            reranker: Reranker) -> np.ndarray:
    """Each query's allowed candidates re-ordered by `reranker`; excluded references stay last."""
    out = order.copy()
    for i in range(len(order)):
        cand = order[i, : allowed[i]]
        out[i, : allowed[i]] = reranker(qvecs[i], cand, refs, excl[i])
    return out


def neighbour_metrics(refs: np.ndarray, qvecs: np.ndarray, queries: np.ndarray, k: int, labels: dict[str, np.ndarray],
                      item: np.ndarray, group: np.ndarray, reranker: Reranker | None = None) -> dict[str, Any]:
    """Coverage (labels['state']), precision/recall@k, mAP@R and precision@1 for each label of `labels`,
    ranking `qvecs` against `refs` with each query's photo and group excluded (then re-ranked by
    `reranker`). Per-query arrays under `per_query[label]` (p, r, ap, p1; for 'state' also `chance`),
    the k-neighbours under `neigh`."""
    n = len(refs)
    chunk = max(1, 2**22 // max(n, 1))
    neigh, per_query = [], {name: {"p": [], "r": [], "ap": [], "p1": [], "chance": []} for name in labels}
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        excl = excluded(q, item, group)
        order, allowed = ranking(refs, qvecs[s:s + chunk], excl)
        if reranker is not None:
            order = _rerank(order, allowed, qvecs[s:s + chunk], refs, excl, reranker)
        valid = np.arange(n)[None, :] < allowed[:, None]
        neigh.append(np.where(valid[:, :k], order[:, :k], -1))
        for name, lab in labels.items():
            rel = (lab[order] == lab[q][:, None]) & valid
            r = rel.sum(axis=1)
            pq_ = per_query[name]
            pq_["p"].append(rel[:, :k].sum(axis=1) / np.minimum(k, np.maximum(allowed, 1)))
            with np.errstate(divide="ignore", invalid="ignore"):
                pq_["r"].append(np.where(r > 0, rel[:, :k].sum(axis=1) / r, np.nan))
                pq_["ap"].append(ap_at_r(rel, r))
                pq_["p1"].append(np.where(allowed > 0, rel[:, 0], np.nan).astype(np.float64))
            pq_["chance"].append(r / np.maximum(allowed, 1))
    out: dict[str, Any] = {"neigh": np.concatenate(neigh), "per_query": {}}
    for name, vals in per_query.items():
        arr = {key: np.concatenate(v) for key, v in vals.items()}
        out["per_query"][name] = arr
        if name == "state":
            continue
        out[f"precision_at_{k}_{name}"] = float(np.mean(arr["p"]))
        out[f"recall_at_{k}_{name}"] = float(np.nanmean(arr["r"]))
        out[f"map_at_r_{name}"] = float(np.nanmean(arr["ap"]))
        out[f"precision_at_1_{name}"] = float(np.nanmean(arr["p1"]))
    if "state" in labels:
        state = labels["state"][queries]
        p_state = out["per_query"]["state"]["p"]
        out["coverage_damaged"] = float(p_state[state].mean()) if state.any() else float("nan")
        out["coverage_clean"] = float(p_state[~state].mean()) if (~state).any() else float("nan")
        out["coverage_chance"] = float(np.mean(out["per_query"]["state"]["chance"]))
    return out


def qe_reranker(n: int = 3, alpha: float = 3.0) -> Reranker:
    """Alpha query expansion as a Reranker: the expanded query re-ranks every allowed candidate."""
    from pipeline.retrieval.rerank import alpha_qe

    def rerank(q: np.ndarray, cand: np.ndarray, refs: np.ndarray, excl: np.ndarray) -> np.ndarray:
        if len(cand) == 0:
            return cand
        expanded = alpha_qe(q, refs[cand[:n]], n, alpha)
        return cand[np.argsort(-(refs[cand] @ expanded), kind="stable")]

    return rerank


def kreciprocal_reranker(top: int = 100, k1: int = 20, k2: int = 6, lam: float = 0.3) -> Reranker:
    """k-reciprocal re-ranking of the top `top` allowed candidates as a Reranker (the rest keep their order)."""
    from pipeline.retrieval.rerank import k_reciprocal

    def rerank(q: np.ndarray, cand: np.ndarray, refs: np.ndarray, excl: np.ndarray) -> np.ndarray:
        head = cand[:top]
        order, _ = k_reciprocal(q, refs[head], k1, k2, lam)
        return np.concatenate([head[order], cand[top:]])

    return rerank
