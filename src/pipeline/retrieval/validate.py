"""Retrieval validation: is the index any good, for the queries users make?

Queries are the val and test crops when there are at least 20 (else every crop; at most
MAX_QUERIES, sampled by seed); references are the other indexed crops EXCEPT those cut from the
query's own photo (same item_id) or its group (group_id: the same vehicle, or a near duplicate's
original). Overlapping windows of one photo are near copies of each other; counting them as hits
would measure memory, not retrieval.

The headline (coverage: damaged queries -> damaged results, clean -> clean, among the top k; the
users' bar is 60%) is computed on the IMAGE QUERY ranking: what `pipeline search --image` gets, the
image part of the query's vector (text part zero) against the index. For vectors that concatenate an
image and a text part (`hybrid`, clip `concat`) the fused ranking (stored vector against stored
vectors, helped by the context text) is reported beside it as `fused_*`; for clip `average` /
`weighted` fusion the image part cannot be separated and the headline is the fused ranking (the report
says so). Also: precision@k, recall@k and mAP@R (Musgrave et al. 2020) by damage type and zone,
cosine vs euclidean neighbour agreement, silhouette, anisotropy, PCA and t-SNE plots, filter
correctness of the retriever, and a grid of example queries.

`run_validation` is the phase entry: it joins the index metadata with the crops' defects and the
split's groups and calls `validate`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.retrieval.neighbours import (  # noqa: F401  (re-exported)
    ap_at_r as _ap_at_r, damage_label, excluded, kreciprocal_reranker, knn, neighbour_metrics, qe_reranker, ranking,
)

from pipeline.retrieval.stats import CONFIDENCE, N_BOOTSTRAP, Estimate, PhotoBootstrap
from pipeline.retrieval.validate_plots import _scatter, example_grid, projection_plots  # noqa: F401  (re-exported)
from pipeline.retrieval.validate_report import report

COVERAGE_BAR = 0.60
MAX_QUERIES = 2000
HEADLINE_KEYS = ("coverage_damaged", "coverage_clean", "coverage_chance")


def grouped(values: np.ndarray, keys: np.ndarray) -> dict[str, float]:
    return {str(k): float(np.nanmean(values[keys == k])) for k in sorted(set(keys.tolist()))}


def anisotropy(x: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    """Mean pairwise cosine of a sample (0 = isotropic, near 1 = all vectors in one cone)."""
    rng = np.random.default_rng(seed)
    s = x[rng.choice(len(x), size=min(sample, len(x)), replace=False)]
    s = s / np.linalg.norm(s, axis=1, keepdims=True).clip(1e-12)
    sims = s @ s.T
    n = len(s)
    return float((sims.sum() - np.trace(sims)) / max(n * (n - 1), 1))


def filter_checks(search: Callable[..., list[dict]], meta: list[dict[str, Any]], query: np.ndarray,
                  k: int = 5) -> dict[str, Any]:
    """Searching `query` under each filter returns min(k, matching) hits, all satisfying it."""
    zones = sorted({m["zone"] for m in meta if m.get("zone") is not None})
    types = sorted({t for m in meta for t in (m.get("damage_types") or [])})
    cases: list[tuple[str, dict[str, Any], Callable[[dict], bool]]] = [
        ("damaged", {"has_damage": True}, lambda m: bool(m["has_damage"])),
        ("clean", {"has_damage": False}, lambda m: not m["has_damage"]),
    ]
    if zones:
        z = zones[0]
        cases.append((f"zone={z}", {"zones": z}, lambda m, z=z: m.get("zone") == z))
        cases.append((f"zones={zones[:2]}", {"zones": zones[:2]}, lambda m, zs=zones[:2]: m.get("zone") in zs))
    if types:
        t = types[0]
        cases.append((f"damage_type={t}", {"damage_type": t}, lambda m, t=t: t in (m.get("damage_types") or [])))
    by_id = {m["crop_id"]: m for m in meta}
    query = np.asarray(query, dtype=np.float32)
    results = {}
    for name, kwargs, pred in cases:
        hits = search(query, k=k, **kwargs)
        matching = sum(pred(m) for m in meta)
        ok = len(hits) == min(k, matching) and all(pred(by_id[h["crop_id"]]) for h in hits)
        results[name] = {"hits": len(hits), "matching": matching, "ok": bool(ok)}
    return results


def pick_queries(meta: list[dict[str, Any]], seed: int = 0, max_queries: int = MAX_QUERIES) -> np.ndarray:
    """The val/test crops when there are at least 20, else all; at most max_queries (seeded sample), sorted."""
    held_out = np.array([i for i, m in enumerate(meta) if m.get("split") in ("val", "test")], dtype=np.int64)
    queries = held_out if len(held_out) >= 20 else np.arange(len(meta))
    if len(queries) > max_queries:
        queries = np.sort(np.random.default_rng(seed).choice(queries, max_queries, replace=False))
    return queries


def image_queries(x: np.ndarray, image_dims: int | None) -> np.ndarray | None:
    """What an image query looks like in the index space: the image part, text part zero, L2-normalised
    (None when the vectors are no concatenation)."""
    if image_dims is None or not 0 < image_dims < x.shape[1]:
        return None
    q = np.zeros_like(x)
    q[:, :image_dims] = x[:, :image_dims]
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)


def _keys(meta: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([str(m.get(key) or "") for m in meta], dtype=object)


@dataclass
class Variant:
    """Another set of vectors for the same crops, scored like the served ones (a row of the report): the
    frozen features beside an adopted head, or the head that was not adopted beside the frozen features."""

    name: str  # metric prefix
    label: str  # the report's row name
    x: np.ndarray
    image_dims: int | None


def _estimates(nm: dict[str, Any], sel: np.ndarray, state: np.ndarray, boot: PhotoBootstrap,
               k: int) -> tuple[dict[str, Estimate], np.ndarray]:
    """The figures of the queries `sel` (positions in the query list) with intervals over their photos."""
    pq_ = nm["per_query"]
    p = pq_["state"]["p"][sel]
    est = {"coverage_damaged": boot.mean(p, state[sel]), "coverage_clean": boot.mean(p, ~state[sel])}
    bal, draws = boot.balanced(p, state[sel])
    est["balanced_coverage"] = bal
    for lab in ("damage_type", "zone"):
        est[f"map_at_r_{lab}"] = boot.mean(pq_[lab]["ap"][sel])
        est[f"precision_at_{k}_{lab}"] = boot.mean(pq_[lab]["p"][sel])
    return est, draws


def _flat(prefix: str, est: dict[str, Estimate]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, e in est.items():
        out.update(e.as_dict(f"{prefix}{name}"))
    return out


class _Rows:
    """The report's rows: rankings of the same queries (same exclusions), each scored with intervals on the
    same photo draws, into flat metrics (`<prefix><figure>`) and table rows."""

    def __init__(self, meta: list[dict[str, Any]], labels: dict[str, np.ndarray], queries: np.ndarray, k: int,
                 seed: int) -> None:
        self.labels, self.queries, self.k, self.seed = labels, queries, k, seed
        self.item, self.group = _keys(meta, "item_id"), _keys(meta, "group_id")
        n = len(meta)
        self.unit = np.where(self.group != "", self.group,
                             np.where(self.item != "", self.item, np.arange(n).astype(str)))[queries]
        self.boot = PhotoBootstrap(self.unit, seed=seed)
        self.state = labels["state"][queries]
        self.split = np.array([str(meta[q].get("split") or "") for q in queries])
        self.metrics: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []

    def rank(self, refs: np.ndarray, qvecs: np.ndarray, reranker: Any = None) -> dict[str, Any]:
        return neighbour_metrics(refs, qvecs[self.queries], self.queries, self.k, self.labels, self.item, self.group,
                                 reranker=reranker)

    def add(self, prefix: str, label: str, nm: dict[str, Any],
            sel: np.ndarray | None = None) -> tuple[dict[str, Estimate], np.ndarray]:
        boot = self.boot if sel is None else PhotoBootstrap(self.unit[sel], seed=self.seed)
        est, draws = _estimates(nm, np.arange(len(self.queries)) if sel is None else sel, self.state, boot, self.k)
        if sel is None:
            self.metrics.update({f"{prefix}{key}": v for key, v in nm.items() if key not in ("neigh", "per_query")})
        self.metrics.update(_flat(prefix, est))
        self.rows.append({"name": prefix, "label": label, **est})
        return est, draws

    def table(self) -> list[dict[str, Any]]:
        return [{key: (e.__dict__ if isinstance(e, Estimate) else e) for key, e in r.items()} for r in self.rows]


def _score(r: _Rows, x: np.ndarray, qimg: np.ndarray | None, variants: Sequence[Variant], served: str | None,
           rerank: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every row: the served ranking (image queries when separable), fused, variants (with the paired
    difference to the served one), re-ranked, test split only. Returns the served and fused rankings."""
    fused = r.rank(x, x)
    head = fused if qimg is None else r.rank(x, qimg)
    head_est, head_draws = r.add("", served or ("image queries" if qimg is not None else "stored vectors"), head)
    if qimg is not None:
        r.add("fused_", "fused vectors (image + context text; not what an image query gets)", fused)
    for v in variants:
        vq = image_queries(v.x, v.image_dims)
        est, draws = r.add(f"{v.name}_", v.label, r.rank(v.x, v.x if vq is None else vq))
        diff = head_est["balanced_coverage"].value - est["balanced_coverage"].value
        r.metrics.update(r.boot.difference(head_draws, draws, diff, len(r.queries)).as_dict(
            f"served_minus_{v.name}_balanced_coverage"))
    if rerank:
        space = x if qimg is None else qimg  # image queries re-rank in the image part only: never by text
        r.add("qe_", "+ alpha query expansion (n 3, alpha 3)", r.rank(space, space, qe_reranker()))
        r.add("kreciprocal_", "+ k-reciprocal re-ranking (top 100, k1 20, k2 6, lambda 0.3)",
              r.rank(space, space, kreciprocal_reranker()))
    if (r.split == "test").any() and (r.split != "test").any():
        r.add("test_", "the served ranking, test-split queries only", head, sel=np.flatnonzero(r.split == "test"))
    return head, fused


def validate(x: np.ndarray, meta: list[dict[str, Any]], out_dir: Path, k: int = 5,
             search: Callable[..., list[dict]] | None = None, seed: int = 0, image_dims: int | None = None,
             variants: Sequence[Variant] = (), served: str | None = None, rerank: bool = True,
             notes: Sequence[str] = ()) -> dict[str, Any]:
    """Write report.md, metrics.json and plots into out_dir; return flat metrics.

    `meta` rows: has_damage, defects/damage_types, zone(_name), split, item_id, group_id, crop_path.
    `image_dims`: the vectors' first image_dims columns are the image part of a concatenation: the
    headline is then the image-query ranking and the fused one is reported as fused_*. `variants`:
    other vectors of the same crops, each a row (`<name>_*`). `rerank`: rows with alpha query
    expansion (`qe_*`) and k-reciprocal re-ranking (`kreciprocal_*`) of the headline's image queries, in
    the image part only. Every coverage, mAP@R and P@k comes with a bootstrap interval over the query
    photos (groups) and its number of queries and photos (`_lo`, `_hi`, `_n_queries`, `_n_photos`)."""
    n = len(meta)
    if n < 3:
        raise ValueError(f"validation needs at least 3 indexed crops, got {n}")
    x = np.asarray(x, dtype=np.float32)
    dmg = np.array([damage_label(m) for m in meta])
    labels = {"state": np.array([bool(m["has_damage"]) for m in meta]), "damage_type": dmg,
              "zone": np.array([str(m.get("zone_name") or m.get("zone") or "unknown") for m in meta])}
    queries = pick_queries(meta, seed)
    k = min(k, n - 1)
    qimg = image_queries(x, image_dims)
    r = _Rows(meta, labels, queries, k, seed)
    head, fused = _score(r, x, qimg, variants, served, rerank)
    item, group = r.item, r.group
    cov = np.nan_to_num([head["coverage_damaged"], head["coverage_clean"]], nan=1.0)
    metrics: dict[str, Any] = {
        "n_crops": n, "n_queries": len(queries),
        "n_query_photos": len({item[q] or q for q in queries}), "n_query_groups": len({group[q] or q for q in queries}),
        "mean_excluded_references": float(np.mean([(excluded(queries[i:i + 1], item, group)).sum() - 1
                                                   for i in range(len(queries))])),
        "k": k, "image_query_headline": float(qimg is not None), **r.metrics,
        "coverage_bar_met": float(cov.min() >= COVERAGE_BAR), **_space(x, dmg, queries, fused, item, group, k, seed),
    }
    filters: dict[str, Any] = {}
    if search is not None:
        filters = filter_checks(search, meta, x[0] if qimg is None else qimg[0], k=k)
        metrics["filter_checks_passed"] = float(sum(f["ok"] for f in filters.values()))
        metrics["filter_checks_total"] = float(len(filters))
    plots = projection_plots(x, dmg, out_dir, seed=seed)
    paths = [m.get("crop_path") for m in meta]
    if all(p and Path(p).is_file() for p in paths):
        example_grid(paths, queries, head["neigh"], dmg, out_dir / "examples.png", k=k, seed=seed)
        plots.append("examples.png")
    pq_ = head["per_query"]
    per_type = {"precision": grouped(pq_["damage_type"]["p"], dmg[queries]),
                "recall": grouped(pq_["damage_type"]["r"], dmg[queries])}
    per_zone = {"precision": grouped(pq_["zone"]["p"], labels["zone"][queries]),
                "recall": grouped(pq_["zone"]["r"], labels["zone"][queries])}
    (out_dir / "metrics.json").write_text(json.dumps(
        {"metrics": metrics, "rows": r.table(), "by_damage_type": per_type, "by_zone": per_zone, "filters": filters,
         "bootstrap": {"draws": N_BOOTSTRAP, "confidence": CONFIDENCE, "seed": seed, "unit": "photo group"}},
        indent=2, sort_keys=True, default=float))
    (out_dir / "report.md").write_text(report(metrics, r.rows, per_type, per_zone, filters, plots, k, notes))
    return metrics


def _space(x: np.ndarray, dmg: np.ndarray, queries: np.ndarray, fused: dict[str, Any], item: np.ndarray,
           group: np.ndarray, k: int, seed: int) -> dict[str, float]:
    """Cosine vs euclidean top-k agreement, silhouette by damage type, anisotropy."""
    from sklearn.metrics import silhouette_score

    neigh_l2 = knn(x, queries, k, "l2", item, group)
    agreement = float(np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / k for a, b in zip(fused["neigh"], neigh_l2)]))
    sil = float("nan")
    if 1 < len(set(dmg.tolist())) < len(x):
        sil = float(silhouette_score(x, dmg, metric="cosine", sample_size=min(2000, len(x)), random_state=seed))
    return {"cosine_euclidean_agreement": agreement, "silhouette_damage_type": sil, "anisotropy": anisotropy(x, seed=seed)}


def photo_groups(crops_dir: Path, store: Any, split_dir: Path | None) -> dict[str, str]:
    """item_id -> group_id from the split table: split_dir, else the split artifact the crops' lineage names."""
    import pyarrow.parquet as pq

    if split_dir is None and store is not None and (Path(crops_dir) / "lineage.json").is_file():
        lineage = json.loads((Path(crops_dir) / "lineage.json").read_text(encoding="utf-8"))
        split_id = next((i["artifact_id"] for i in lineage.get("inputs", []) if i.get("phase") == "split"), None)
        split_dir = Path(store.dir_for("split", split_id)) if split_id else None
    if split_dir is None or not (Path(split_dir) / "split.parquet").is_file():
        return {}
    t = pq.read_table(Path(split_dir) / "split.parquet", columns=["item_id", "group_id"]).to_pydict()
    return dict(zip(t["item_id"], t["group_id"]))


_groups = photo_groups


def head_rows(emb_dir: Path, head_dir: Path | None) -> tuple[str, list[Variant], list[str]]:
    """(the served row's name, the other row, report notes) from the embedding_head artifact: an adopted
    head is served with the frozen features beside it; a refused one is shown beside the frozen features."""
    from pipeline.retrieval.adopt import explain, load_head, project_fused, read_decision
    from pipeline.retrieval.embeddings import load_embeddings

    decision = read_decision(head_dir)
    if decision is None:
        return "frozen features (image queries)", [], []
    _, raw = load_embeddings(Path(emb_dir))
    embedder = json.loads((Path(emb_dir) / "embedder.json").read_text(encoding="utf-8"))
    concat = embedder.get("fusion", {}).get("mode") == "concat"
    head, loss = load_head(head_dir), decision.get("loss")
    note = [f"Embedding head: {'**adopted**' if decision['adopted'] else 'not adopted'}; {explain(decision)} "
            "(the embedding_head phase's report).", ""]
    if decision["adopted"]:
        frozen = Variant("frozen", "frozen features (image queries; not served)", raw,
                         embedder.get("image_dim") if concat else None)
        return f"head ({loss}, adopted; image queries)", [frozen], note
    if head is None:
        return "frozen features (image queries)", [], note
    projected, meta = project_fused(raw, embedder, head, None)
    return ("frozen features (served; image queries)",
            [Variant("head", f"head ({loss}, not adopted; image queries)", projected, meta["image_dim"])], note)


def run_validation(index_dir: Path, embeddings_dir: Path, crops_dir: Path, out_dir: Path, k: int = 5, seed: int = 0,
                   store: Any = None, split_dir: Path | None = None, head_dir: Path | None = None) -> dict[str, Any]:
    """The validation phase: the index's metadata joined with the crops' defects and photos (item_id) and the
    split's groups (from `split_dir`, else the split artifact the crops' lineage names, through `store`);
    `validate` on the vectors the index holds (the adopted head's when there is one) with the other row of
    the embedding_head artifact beside them, and the retriever's filtered search checked. Returns the metrics."""
    import pyarrow.parquet as pq

    from pipeline.retrieval.adopt import searched_vectors
    from pipeline.retrieval.retrieve import Retriever

    ids, x, embedder = searched_vectors(Path(embeddings_dir), head_dir)
    retriever = Retriever.open(index_dir, store=store, crops_dir=crops_dir)
    meta = {r["crop_id"]: r for r in retriever.metadata}
    crops = pq.read_table(Path(crops_dir) / "crops.parquet", columns=["crop_id", "defects", "item_id"]).to_pydict()
    by_crop = {c: (d, i) for c, d, i in zip(crops["crop_id"], crops["defects"], crops["item_id"])}
    groups = photo_groups(crops_dir, store, split_dir)
    rows = [{**meta[c], "defects": by_crop[c][0], "item_id": by_crop[c][1], "group_id": groups.get(by_crop[c][1])}
            for c in ids]
    concat = embedder.get("fusion", {}).get("mode") == "concat"
    served, variants, notes = head_rows(Path(embeddings_dir), head_dir)
    metrics = validate(x, rows, Path(out_dir), k=k, search=retriever.search, seed=seed,
                       image_dims=embedder.get("image_dim") if concat else None, variants=variants, served=served,
                       notes=notes)
    decision = read_decision_metrics(head_dir)
    return {**metrics, **decision}


def read_decision_metrics(head_dir: Path | None) -> dict[str, Any]:
    from pipeline.retrieval.adopt import explain, read_decision

    d = read_decision(head_dir)
    return {} if d is None else {"head_adopted": float(d["adopted"]), "head_reason": explain(d)}
