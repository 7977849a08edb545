"""Plots of retrieval validation and the embedding study: 2-D projections by label, example queries."""
from __future__ import annotations

from pathlib import Path

import numpy as np


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
