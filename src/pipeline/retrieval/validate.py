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
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

COVERAGE_BAR = 0.60
MAX_QUERIES = 2000
HEADLINE_KEYS = ("coverage_damaged", "coverage_clean", "coverage_chance")


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


def _ap_at_r(rel: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per-query AP@R: mean over the first R ranks of precision@i at the relevant ones (nan when R = 0)."""
    n = rel.shape[1]
    ranks = np.arange(1, n + 1)[None, :]
    in_r = ranks <= r[:, None]
    prec = np.cumsum(rel, axis=1) / ranks
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r > 0, (prec * rel * in_r).sum(axis=1) / r, np.nan)


def neighbour_metrics(refs: np.ndarray, qvecs: np.ndarray, queries: np.ndarray, k: int, labels: dict[str, np.ndarray],
                      item: np.ndarray, group: np.ndarray) -> dict[str, Any]:
    """Coverage (labels['state']), precision/recall@k, mAP@R and precision@1 for each other label of
    `labels`, ranking `qvecs` against `refs` with each query's photo and group excluded. Per-query arrays
    under `per_query`, the k-neighbours under `neigh`."""
    n = len(refs)
    chunk = max(1, 2**22 // max(n, 1))
    neigh, per_query = [], {name: {"p": [], "r": [], "ap": [], "p1": []} for name in labels}
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        order, allowed = ranking(refs, qvecs[s:s + chunk], excluded(q, item, group))
        valid = np.arange(n)[None, :] < allowed[:, None]
        neigh.append(np.where(valid[:, :k], order[:, :k], -1))
        for name, lab in labels.items():
            rel = (lab[order] == lab[q][:, None]) & valid
            r = rel.sum(axis=1)
            pq_ = per_query[name]
            pq_["p"].append(rel[:, :k].sum(axis=1) / np.minimum(k, np.maximum(allowed, 1)))
            with np.errstate(divide="ignore", invalid="ignore"):
                pq_["r"].append(np.where(r > 0, rel[:, :k].sum(axis=1) / r, np.nan))
                pq_["ap"].append(_ap_at_r(rel, r))
                pq_["p1"].append(np.where(allowed > 0, rel[:, 0], np.nan).astype(np.float64))
            if name == "state":
                pq_["chance"] = pq_.get("chance", []) + [r / np.maximum(allowed, 1)]
    out: dict[str, Any] = {"neigh": np.concatenate(neigh), "per_query": {}}
    state = labels["state"][queries]
    p_state = np.concatenate(per_query["state"]["p"])
    out["coverage_damaged"] = float(p_state[state].mean()) if state.any() else float("nan")
    out["coverage_clean"] = float(p_state[~state].mean()) if (~state).any() else float("nan")
    out["coverage_chance"] = float(np.mean(np.concatenate(per_query["state"]["chance"])))
    for name, vals in per_query.items():
        if name == "state":
            continue
        arr = {key: np.concatenate(v) for key, v in vals.items()}
        out["per_query"][name] = arr
        out[f"precision_at_{k}_{name}"] = float(np.mean(arr["p"]))
        out[f"recall_at_{k}_{name}"] = float(np.nanmean(arr["r"]))
        out[f"map_at_r_{name}"] = float(np.nanmean(arr["ap"]))
        out[f"precision_at_1_{name}"] = float(np.nanmean(arr["p1"]))
    return out


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


def _scatter(points: np.ndarray, labels: np.ndarray, title: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    for lab in sorted(set(labels.tolist())):
        m = labels == lab
        ax.scatter(points[m, 0], points[m, 1], s=8, label=f"{lab} ({int(m.sum())})", alpha=0.7)
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})


def projection_plots(x: np.ndarray, labels: np.ndarray, out_dir: Path, seed: int = 0, max_points: int = 1500) -> list[str]:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(max_points, len(x)), replace=False)
    xs, ls = x[idx], labels[idx]
    _scatter(PCA(n_components=2, random_state=seed).fit_transform(xs), ls, "PCA of embeddings", out_dir / "pca.png")
    files = ["pca.png"]
    if len(xs) >= 10:
        perplexity = float(min(30, max(2, (len(xs) - 1) // 3)))
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(xs)
        _scatter(emb, ls, "t-SNE of embeddings", out_dir / "tsne.png")
        files.append("tsne.png")
    return files


def example_grid(paths: list[str], queries: np.ndarray, neigh: np.ndarray, labels: np.ndarray, out: Path,
                 n: int = 6, k: int = 5, seed: int = 0) -> None:
    from matplotlib.figure import Figure
    from PIL import Image

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(queries), size=min(n, len(queries)), replace=False)
    cols = 1 + min(k, neigh.shape[1])
    fig = Figure(figsize=(2 * cols, 2.1 * len(pick)))
    for r, qi in enumerate(pick):
        q = queries[qi]
        for c, j in enumerate([q, *[j for j in neigh[qi][: cols - 1] if j >= 0]]):
            ax = fig.add_subplot(len(pick), cols, r * cols + c + 1)
            ax.imshow(Image.open(paths[j]).convert("RGB"))
            ok = c == 0 or labels[j] == labels[q]
            ax.set_title(("query: " if c == 0 else f"#{c}: ") + str(labels[j]), fontsize=7,
                         color="black" if ok else "red")
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80, metadata={"Software": None})


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


def validate(x: np.ndarray, meta: list[dict[str, Any]], out_dir: Path, k: int = 5,
             search: Callable[..., list[dict]] | None = None, seed: int = 0,
             image_dims: int | None = None) -> dict[str, float]:
    """Write report.md, metrics.json and plots into out_dir; return flat metrics.

    `meta` rows: has_damage, defects/damage_types, zone(_name), split, item_id, group_id, crop_path.
    `image_dims`: the vectors' first image_dims columns are the image part of a concatenation: the
    headline is then the image-query ranking and the fused one is reported as fused_*."""
    from sklearn.metrics import silhouette_score

    n = len(meta)
    if n < 3:
        raise ValueError(f"validation needs at least 3 indexed crops, got {n}")
    x = np.asarray(x, dtype=np.float32)
    dmg = np.array([damage_label(m) for m in meta])
    labels = {"state": np.array([bool(m["has_damage"]) for m in meta]), "damage_type": dmg,
              "zone": np.array([str(m.get("zone_name") or m.get("zone") or "unknown") for m in meta])}
    item, group = _keys(meta, "item_id"), _keys(meta, "group_id")
    queries = pick_queries(meta, seed)
    k = min(k, n - 1)
    qimg = image_queries(x, image_dims)
    fused = neighbour_metrics(x, x[queries], queries, k, labels, item, group)
    head = fused if qimg is None else neighbour_metrics(x, qimg[queries], queries, k, labels, item, group)
    neigh_l2 = knn(x, queries, k, "l2", item, group)
    agreement = float(np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / k for a, b in zip(fused["neigh"], neigh_l2)]))
    sil = float("nan")
    if 1 < len(set(dmg.tolist())) < n:
        sil = float(silhouette_score(x, dmg, metric="cosine", sample_size=min(2000, n), random_state=seed))
    scalar = lambda nm: {key: v for key, v in nm.items() if key not in ("neigh", "per_query")}  # noqa: E731
    cov = np.nan_to_num([head["coverage_damaged"], head["coverage_clean"]], nan=1.0)
    metrics: dict[str, float] = {
        "n_crops": n, "n_queries": len(queries),
        "n_query_photos": len({item[q] or q for q in queries}), "n_query_groups": len({group[q] or q for q in queries}),
        "mean_excluded_references": float(np.mean([(excluded(queries[i:i + 1], item, group)).sum() - 1
                                                   for i in range(len(queries))])),
        "k": k, "image_query_headline": float(qimg is not None),
        **scalar(head), "coverage_bar_met": float(cov.min() >= COVERAGE_BAR),
        **({f"fused_{key}": v for key, v in scalar(fused).items()} if qimg is not None else {}),
        "cosine_euclidean_agreement": agreement, "silhouette_damage_type": sil, "anisotropy": anisotropy(x, seed=seed),
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
        {"metrics": metrics, "by_damage_type": per_type, "by_zone": per_zone, "filters": filters},
        indent=2, sort_keys=True, default=float))
    (out_dir / "report.md").write_text(_report(metrics, per_type, per_zone, filters, plots, k))
    return metrics


def _headline(m: dict[str, Any], k: int) -> list[str]:
    bar = "meets" if m["coverage_bar_met"] else "DOES NOT meet"
    ranking_ = ("Image queries (what `pipeline search --image` ranks by: the image part of each query against the "
                "index)" if m["image_query_headline"] else
                "Stored vectors against stored vectors (this fusion mixes image and text into one vector, so an "
                "image-only ranking cannot be separated)")
    lines = [f"{ranking_}, {m['n_queries']} queries from {m['n_query_photos']} photos ({m['n_query_groups']} groups); "
             f"a query's own photo and group are excluded from its neighbours (on average "
             f"{m['mean_excluded_references']:.1f} crops per query).", "",
             f"**Coverage** (same damage state among the top {k}): damaged {m['coverage_damaged']:.3f}, clean "
             f"{m['coverage_clean']:.3f} (chance {m['coverage_chance']:.3f}); {bar} the users' bar of "
             f"{COVERAGE_BAR:.0%}. mAP@R by damage type {m['map_at_r_damage_type']:.3f}, by zone {m['map_at_r_zone']:.3f}.",
             ""]
    if m["image_query_headline"]:
        lines += [f"Fused vectors (image + context text, stored vector against stored vectors; `fused_*`): coverage "
                  f"damaged {m['fused_coverage_damaged']:.3f}, clean {m['fused_coverage_clean']:.3f}; mAP@R by damage "
                  f"type {m['fused_map_at_r_damage_type']:.3f}. Not the headline: a user's image query has no text.", ""]
    return lines


def _report(metrics, per_type, per_zone, filters, plots, k: int) -> str:
    lines = ["# Retrieval validation", "", *_headline(metrics, k), "| metric | value |", "|---|---|",
             *[f"| {key} | {val:.4f} |" for key, val in metrics.items()]]
    for title, table in ((f"## By damage type (precision@{k}, recall@{k})", per_type),
                         (f"## By zone (precision@{k}, recall@{k})", per_zone)):
        lines += ["", title, "", "| label | precision | recall |", "|---|---|---|",
                  *[f"| {lab} | {table['precision'][lab]:.3f} | {table['recall'][lab]:.3f} |" for lab in table["precision"]]]
    if filters:
        lines += ["", "## Filter correctness", "", "| filter | hits | matching | ok |", "|---|---|---|---|",
                  *[f"| {name} | {f['hits']} | {f['matching']} | {'yes' if f['ok'] else 'NO'} |" for name, f in filters.items()]]
    lines += ["", "## Plots", "", *[f"![{p}]({p})" for p in plots]]
    return "\n".join(lines) + "\n"


def _groups(crops_dir: Path, store: Any, split_dir: Path | None) -> dict[str, str]:
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


def run_validation(index_dir: Path, embeddings_dir: Path, crops_dir: Path, out_dir: Path, k: int = 5, seed: int = 0,
                   store: Any = None, split_dir: Path | None = None) -> dict[str, float]:
    """The validation phase: the index's metadata joined with the crops' defects and photos (item_id) and the
    split's groups (from `split_dir`, else the split artifact the crops' lineage names, through `store`);
    `validate` on the embeddings, with the retriever's filtered search checked. Returns the metrics."""
    import pyarrow.parquet as pq

    from pipeline.retrieval.embed import load_embeddings
    from pipeline.retrieval.retrieve import Retriever

    ids, x = load_embeddings(embeddings_dir)
    retriever = Retriever.open(index_dir, store=store, crops_dir=crops_dir)
    meta = {r["crop_id"]: r for r in retriever.metadata}
    crops = pq.read_table(Path(crops_dir) / "crops.parquet", columns=["crop_id", "defects", "item_id"]).to_pydict()
    by_crop = {c: (d, i) for c, d, i in zip(crops["crop_id"], crops["defects"], crops["item_id"])}
    groups = _groups(crops_dir, store, split_dir)
    rows = [{**meta[c], "defects": by_crop[c][0], "item_id": by_crop[c][1], "group_id": groups.get(by_crop[c][1])}
            for c in ids]
    emb = json.loads((Path(embeddings_dir) / "embedder.json").read_text(encoding="utf-8"))
    concat = emb.get("fusion", {}).get("mode") == "concat"
    return validate(x, rows, Path(out_dir), k=k, search=retriever.search, seed=seed,
                    image_dims=emb.get("image_dim") if concat else None)
