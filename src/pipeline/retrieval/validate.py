"""Retrieval validation: is the index any good?

Leave-one-out nearest neighbours over the indexed crops (queries: the val and test crops when
there are enough, else all), references: every other crop. Reports coverage (damaged queries ->
damaged results, clean -> clean; the users' bar is 60%), precision@k, recall@k and mAP@R by damage
type and by zone (pytorch-metric-learning's AccuracyCalculator for mAP@R and precision@1),
cosine vs euclidean neighbour agreement, silhouette, anisotropy (mean pairwise cosine), PCA and
t-SNE plots coloured by label, filter correctness of the retriever, and a grid of example queries.

When the vectors concatenate an image part and a text part (`hybrid`, or `clip` with concat fusion),
the same neighbour metrics are also computed on the image part alone (`image_only_*`): that is the
ranking an image query (`pipeline search --image`) gets, and it carries no help from the context text.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

COVERAGE_BAR = 0.60


def damage_label(row: dict[str, Any]) -> str:
    """One label per crop for per-type metrics: the most frequent defect type, or 'clean'."""
    if not row.get("has_damage"):
        return "clean"
    defects = json.loads(row.get("defects") or "[]") if isinstance(row.get("defects"), str) else []
    types = [d.get("type") for d in defects if d.get("type")] or list(row.get("damage_types") or [])
    return Counter(types).most_common(1)[0][0] if types else "damage"


def knn(x: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip") -> np.ndarray:
    """Indices of the k nearest references of each query, the query itself excluded."""
    import faiss

    index = faiss.IndexFlatIP(x.shape[1]) if metric == "ip" else faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(x[queries], dtype=np.float32), min(k + 1, len(x)))
    out = np.empty((len(queries), min(k, len(x) - 1)), dtype=np.int64)
    for i, (q, row) in enumerate(zip(queries, idx)):
        out[i] = [j for j in row if j != q][: out.shape[1]]
    return out


def precision_recall(neigh: np.ndarray, queries: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-query precision@k and recall@k (relevant = same label, the query excluded)."""
    same = labels[neigh] == labels[queries][:, None]
    counts = Counter(labels.tolist())
    relevant = np.array([counts[labels[q]] - 1 for q in queries], dtype=np.float64)
    precision = same.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(relevant > 0, same.sum(axis=1) / relevant, np.nan)
    return precision, recall


def map_at_r(x: np.ndarray, queries: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """mAP@R and precision@1 from pytorch-metric-learning (references = all, query excluded)."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    codes = {lab: i for i, lab in enumerate(sorted(set(labels.tolist())))}
    y = torch.tensor([codes[lab] for lab in labels])
    calc = AccuracyCalculator(include=("mean_average_precision_at_r", "precision_at_1"), device=torch.device("cpu"))
    ref = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if len(queries) == len(x):
        res = calc.get_accuracy(ref, y, ref, y, ref_includes_query=True)
    else:
        keep = np.setdiff1d(np.arange(len(x)), queries)  # references without the queries: no self-match
        res = calc.get_accuracy(ref[queries], y[queries], ref[keep], y[keep], ref_includes_query=False)
    return {k: float(v) for k, v in res.items()}


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
        for c, j in enumerate([q, *neigh[qi][: cols - 1]]):
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


def neighbour_metrics(x: np.ndarray, queries: np.ndarray, k: int, has_damage: np.ndarray, dmg: np.ndarray,
                      zone: np.ndarray) -> dict[str, Any]:
    """Coverage, precision/recall@k and mAP@R (damage type, zone) of the vectors `x`."""
    n = len(x)
    neigh = knn(x, queries, k, "ip")
    same_state = has_damage[neigh] == has_damage[queries][:, None]
    cov_damaged = float(same_state[has_damage[queries]].mean()) if has_damage[queries].any() else float("nan")
    cov_clean = float(same_state[~has_damage[queries]].mean()) if (~has_damage[queries]).any() else float("nan")
    chance = float(np.mean([(has_damage == has_damage[q]).sum() - 1 for q in queries]) / (n - 1))
    p_dmg, r_dmg = precision_recall(neigh, queries, dmg)
    p_zone, r_zone = precision_recall(neigh, queries, zone)
    maps = {"damage_type": map_at_r(x, queries, dmg), "zone": map_at_r(x, queries, zone)}
    return {"neigh": neigh, "p_dmg": p_dmg, "r_dmg": r_dmg, "p_zone": p_zone, "r_zone": r_zone,
            "coverage_damaged": cov_damaged, "coverage_clean": cov_clean, "coverage_chance": chance,
            f"precision_at_{k}_damage_type": float(np.mean(p_dmg)),
            f"recall_at_{k}_damage_type": float(np.nanmean(r_dmg)),
            f"precision_at_{k}_zone": float(np.mean(p_zone)),
            f"recall_at_{k}_zone": float(np.nanmean(r_zone)),
            "map_at_r_damage_type": maps["damage_type"]["mean_average_precision_at_r"],
            "precision_at_1_damage_type": maps["damage_type"]["precision_at_1"],
            "map_at_r_zone": maps["zone"]["mean_average_precision_at_r"],
            "precision_at_1_zone": maps["zone"]["precision_at_1"]}


IMAGE_ONLY_KEYS = ("coverage_damaged", "coverage_clean", "map_at_r_damage_type", "precision_at_1_damage_type",
                   "map_at_r_zone")


def validate(x: np.ndarray, meta: list[dict[str, Any]], out_dir: Path, k: int = 5,
             search: Callable[..., list[dict]] | None = None, seed: int = 0,
             image_dims: int | None = None) -> dict[str, float]:
    """Write report.md, metrics.json and plots into out_dir; return flat metrics.

    `image_dims`: the vectors' first image_dims columns are the image part of a concatenation; adds the
    image_only_* metrics computed on that part (renormalised)."""
    from sklearn.metrics import silhouette_score

    n = len(meta)
    if n < 3:
        raise ValueError(f"validation needs at least 3 indexed crops, got {n}")
    x = np.asarray(x, dtype=np.float32)
    has_damage = np.array([bool(m["has_damage"]) for m in meta])
    dmg = np.array([damage_label(m) for m in meta])
    zone = np.array([str(m.get("zone_name") or m.get("zone") or "unknown") for m in meta])
    held_out = np.array([i for i, m in enumerate(meta) if m.get("split") in ("val", "test")])
    queries = held_out if len(held_out) >= 20 else np.arange(n)
    k = min(k, n - 1)

    nm = neighbour_metrics(x, queries, k, has_damage, dmg, zone)
    neigh, p_dmg, r_dmg, p_zone, r_zone = (nm[key] for key in ("neigh", "p_dmg", "r_dmg", "p_zone", "r_zone"))
    neigh_l2 = knn(x, queries, k, "l2")
    agreement = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(neigh, neigh_l2)]))
    cov_damaged, cov_clean = nm["coverage_damaged"], nm["coverage_clean"]

    sil = float("nan")
    if 1 < len(set(dmg.tolist())) < n:
        sil = float(silhouette_score(x, dmg, metric="cosine", sample_size=min(2000, n), random_state=seed))
    metrics: dict[str, float] = {
        "n_crops": n,
        "n_queries": len(queries),
        "k": k,
        "coverage_damaged": cov_damaged,
        "coverage_clean": cov_clean,
        "coverage_chance": nm["coverage_chance"],
        "coverage_bar_met": float(min(np.nan_to_num(cov_damaged, nan=1), np.nan_to_num(cov_clean, nan=1)) >= COVERAGE_BAR),
        **{key: v for key, v in nm.items() if key.startswith(("precision_", "recall_", "map_"))},
        "cosine_euclidean_agreement": agreement,
        "silhouette_damage_type": sil,
        "anisotropy": anisotropy(x, seed=seed),
    }
    if image_dims is not None and 0 < image_dims < x.shape[1]:
        xi = x[:, :image_dims]
        xi = xi / np.maximum(np.linalg.norm(xi, axis=1, keepdims=True), 1e-12)
        im = neighbour_metrics(xi, queries, k, has_damage, dmg, zone)
        metrics.update({f"image_only_{key}": im[key] for key in IMAGE_ONLY_KEYS})
    filters: dict[str, Any] = {}
    if search is not None:
        filters = filter_checks(search, meta, x[0], k=k)
        metrics["filter_checks_passed"] = float(sum(f["ok"] for f in filters.values()))
        metrics["filter_checks_total"] = float(len(filters))

    plots = projection_plots(x, dmg, out_dir, seed=seed)
    paths = [m.get("crop_path") for m in meta]
    if all(p and Path(p).is_file() for p in paths):
        example_grid(paths, queries, neigh, dmg, out_dir / "examples.png", k=k, seed=seed)
        plots.append("examples.png")

    per_type = {"precision": grouped(p_dmg, dmg[queries]), "recall": grouped(r_dmg, dmg[queries])}
    per_zone = {"precision": grouped(p_zone, zone[queries]), "recall": grouped(r_zone, zone[queries])}
    (out_dir / "metrics.json").write_text(json.dumps(
        {"metrics": metrics, "by_damage_type": per_type, "by_zone": per_zone, "filters": filters},
        indent=2, sort_keys=True, default=float))
    _report(metrics, per_type, per_zone, filters, plots, out_dir / "report.md", k)
    return metrics


def _report(metrics, per_type, per_zone, filters, plots, path: Path, k: int) -> None:
    bar = "meets" if metrics["coverage_bar_met"] else "DOES NOT meet"
    lines = [
        "# Retrieval validation",
        "",
        f"Coverage (same damage state among the top-{k}): damaged {metrics['coverage_damaged']:.3f}, "
        f"clean {metrics['coverage_clean']:.3f} (chance {metrics['coverage_chance']:.3f}); "
        f"{bar} the users' bar of {COVERAGE_BAR:.0%}.",
        "",
        *([f"Image part alone (what an image query ranks by): coverage damaged "
           f"{metrics['image_only_coverage_damaged']:.3f}, clean {metrics['image_only_coverage_clean']:.3f}; "
           f"mAP@R by damage type {metrics['image_only_map_at_r_damage_type']:.3f} against "
           f"{metrics['map_at_r_damage_type']:.3f} with the context text.", ""]
          if "image_only_coverage_damaged" in metrics else []),
        "| metric | value |",
        "|---|---|",
        *[f"| {key} | {val:.4f} |" for key, val in metrics.items()],
        "",
        f"## By damage type (precision@{k}, recall@{k})",
        "",
        "| label | precision | recall |",
        "|---|---|---|",
        *[f"| {lab} | {per_type['precision'][lab]:.3f} | {per_type['recall'][lab]:.3f} |" for lab in per_type["precision"]],
        "",
        f"## By zone (precision@{k}, recall@{k})",
        "",
        "| zone | precision | recall |",
        "|---|---|---|",
        *[f"| {lab} | {per_zone['precision'][lab]:.3f} | {per_zone['recall'][lab]:.3f} |" for lab in per_zone["precision"]],
    ]
    if filters:
        lines += ["", "## Filter correctness", "", "| filter | hits | matching | ok |", "|---|---|---|---|",
                  *[f"| {name} | {f['hits']} | {f['matching']} | {'yes' if f['ok'] else 'NO'} |" for name, f in filters.items()]]
    lines += ["", "## Plots", "", *[f"![{p}]({p})" for p in plots]]
    path.write_text("\n".join(lines) + "\n")
