"""One evaluation for every row of the embedding study (so the rows compare).

Within each split (val, test) every item queries the other items of that split; neighbours cut from
the query's own photo (item_id) or its group (group_id) are excluded (`retrieval.validate`'s
ranking). Figures: precision@k, recall@k, mAP@R and precision@1 of the class labels, damage-state
coverage (mAP@R, precision@k and damaged coverage with a seeded 95% bootstrap interval over photo groups
and their numbers of queries and photos), silhouette (cosine), anisotropy (mean cosine of random pairs), top-k agreement of cosine on
the L2-normalised vectors against euclidean on the raw (un-normalised) ones, and for reference
pytorch-metric-learning's AccuracyCalculator mAP@R (which can exclude only the query itself).
Plots: PCA and t-SNE (validate.projection_plots), UMAP when umap-learn is installed, coloured by
class; a grid of the worst precision@k queries with their neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.retrieval import validate as V


@dataclass
class SplitEval:
    metrics: dict[str, float]
    x: np.ndarray  # L2-normalised embeddings in frame order
    per_query_p: np.ndarray  # precision@k of each item as a query
    neigh: np.ndarray  # (n, k) neighbour indices (-1: none)
    extra: dict[str, Any] = field(default_factory=dict)


def embed_split(model: Any, loader: Any, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised embeddings, raw embeddings) of a loader's items, in order (eval mode, no grad)."""
    import torch

    was_training = model.training
    model.eval()
    xs, raws = [], []
    with torch.inference_mode():
        for x, _, _ in loader:
            raw = model.raw(x.to(device)).float()
            raws.append(raw.cpu())
            xs.append(torch.nn.functional.normalize(raw, dim=1).cpu())
    model.train(was_training)
    return torch.cat(xs).numpy(), torch.cat(raws).numpy()


def _keys(frame: Any, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.full(len(frame), "", dtype=object)
    return np.array(["" if v is None or v != v else str(v) for v in frame[column]], dtype=object)


def retrieval_metrics(x: np.ndarray, frame: Any, labels: np.ndarray, k: int) -> dict[str, Any]:
    """Neighbour figures of the class labels within one split (own photo and group excluded)."""
    n = len(x)
    if n < 2:
        nan = float("nan")
        return {"map_at_r": nan, f"precision_at_{k}": nan, f"recall_at_{k}": nan, "precision_at_1": nan,
                "per_query_p": np.zeros(0), "neigh": np.zeros((0, k), int), "n_queries": float(n),
                "n_photos": float(n)}
    k = min(k, n - 1)
    queries = np.arange(n)
    state = np.array([str(t) != "clean" for t in frame["target"]]) if "target" in frame.columns else labels >= 0
    item, group = _keys(frame, "item_id"), _keys(frame, "group_id")
    out = V.neighbour_metrics(x, x, queries, k, {"state": state, "cls": np.asarray(labels)}, item, group)
    res = {"map_at_r": out["map_at_r_cls"], f"precision_at_{k}": out[f"precision_at_{k}_cls"],
           f"recall_at_{k}": out[f"recall_at_{k}_cls"], "precision_at_1": out["precision_at_1_cls"],
           "coverage_damaged": out["coverage_damaged"], "coverage_clean": out["coverage_clean"],
           "per_query_p": out["per_query"]["cls"]["p"], "neigh": out["neigh"]}
    return {**res, **intervals(out, state, item, group, k)}


def intervals(out: dict[str, Any], state: np.ndarray, item: np.ndarray, group: np.ndarray, k: int,
              seed: int = 0) -> dict[str, float]:
    """`<figure>_lo` / `_hi` (95% bootstrap over photo groups, seeded), `n_queries` and `n_photos` of mAP@R,
    precision@k and damaged coverage."""
    from pipeline.retrieval.stats import PhotoBootstrap

    units = np.where(group != "", group, np.where(item != "", item, np.arange(len(item)).astype(str)))
    boot = PhotoBootstrap(units, seed=seed)
    pq_ = out["per_query"]
    figures = {"map_at_r": boot.mean(pq_["cls"]["ap"]), f"precision_at_{k}": boot.mean(pq_["cls"]["p"]),
               "coverage_damaged": boot.mean(pq_["state"]["p"], state)}
    res: dict[str, float] = {"n_queries": float(len(units)), "n_photos": float(boot.n_photos)}
    for name, e in figures.items():
        res.update({f"{name}_lo": e.lo, f"{name}_hi": e.hi})
    res["coverage_damaged_n_queries"] = float(figures["coverage_damaged"].n_queries)
    return res


def pml_map_at_r(x: np.ndarray, labels: np.ndarray) -> float:
    """mAP@R by pytorch-metric-learning's AccuracyCalculator (query excluded, nothing else)."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    if len(x) < 2:
        return float("nan")
    calc = AccuracyCalculator(include=("mean_average_precision_at_r",), device=torch.device("cpu"))
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return float(calc.get_accuracy(t, y, ref_includes_query=True)["mean_average_precision_at_r"])


def space_metrics(x: np.ndarray, raw: np.ndarray, frame: Any, labels: np.ndarray, k: int, seed: int = 0) -> dict[str, float]:
    """Silhouette (cosine), anisotropy, cosine (normalised) vs euclidean (raw) top-k agreement."""
    from sklearn.metrics import silhouette_score

    n = len(x)
    sil = float("nan")
    if 1 < len(set(labels.tolist())) < n:
        sil = float(silhouette_score(x, labels, metric="cosine", sample_size=min(2000, n), random_state=seed))
    agree = float("nan")
    if n > 1:
        kk = min(k, n - 1)
        q = np.arange(n)
        item, group = _keys(frame, "item_id"), _keys(frame, "group_id")
        a, b = V.knn(x, q, kk, "ip", item, group), V.knn(raw, q, kk, "l2", item, group)
        agree = float(np.mean([len(set(u[u >= 0]) & set(v[v >= 0])) / kk for u, v in zip(a, b)]))
    return {"silhouette": sil, "anisotropy": V.anisotropy(x, seed=seed) if n > 1 else float("nan"),
            "cos_euclid_agreement": agree}


def evaluate_split(model: Any, loader: Any, frame: Any, labels: np.ndarray, k: int, device: str) -> SplitEval:
    x, raw = embed_split(model, loader, device)
    labels = np.asarray(labels)
    r = retrieval_metrics(x, frame, labels, k)
    metrics = {key: float(v) for key, v in r.items() if key not in ("per_query_p", "neigh")}
    metrics.update(space_metrics(x, raw, frame, labels, k))
    metrics["pml_map_at_r"] = pml_map_at_r(x, labels)
    metrics["n"] = float(len(x))
    return SplitEval(metrics, x, r["per_query_p"], r["neigh"])


UMAP_MIN_POINTS = 50  # below this a UMAP of 15 neighbours says little (and umap's numba start-up costs a minute)


def umap_plot(x: np.ndarray, names: np.ndarray, path: Path, seed: int = 0) -> str | None:
    """UMAP scatter coloured by class; None (with nothing written) when umap-learn is not installed or
    there are fewer than UMAP_MIN_POINTS points."""
    if len(x) < UMAP_MIN_POINTS:
        return None
    try:
        import umap
    except ImportError:
        return None
    emb = umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=seed, n_jobs=1).fit_transform(x)
    V._scatter(emb, names, "UMAP of embeddings", path)
    return path.name


def plots(ev: SplitEval, frame: Any, out_dir: Path, prefix: str, k: int, n_worst: int = 6, seed: int = 0) -> list[str]:
    """PCA, t-SNE (by class) and the worst-precision@k grid of one split, files named `<prefix>_*` (UMAP,
    whose numba compilation costs tens of seconds per process, is drawn once by the study report)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = np.array([str(t) for t in frame["target"]])
    if len(ev.x) < 3:
        return []
    tmp = out_dir / f".{prefix}"
    tmp.mkdir(exist_ok=True)
    files = []
    for f in V.projection_plots(ev.x, names, tmp, seed=seed):
        (tmp / f).rename(out_dir / f"{prefix}_{f}")
        files.append(f"{prefix}_{f}")
    tmp.rmdir()
    worst = np.argsort(ev.per_query_p, kind="stable")[:n_worst]
    paths = [str(p) for p in frame["path"]]
    V.example_grid(paths, worst, ev.neigh[worst], names, out_dir / f"{prefix}_worst.png", n=len(worst),
                   k=min(k, ev.neigh.shape[1]), seed=seed)
    files.append(f"{prefix}_worst.png")
    return files
