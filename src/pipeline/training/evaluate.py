"""Test metrics of a classifier (torchmetrics) and the report plots (matplotlib Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def classification_metrics(logits: np.ndarray, labels: np.ndarray, class_names: list[str], prefix: str = "test",
                           groups: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """{prefix_top1, prefix_top5, prefix_n, per_class_recall: {class: r}, per_group: {column: {value: acc}}}.

    `groups` maps a column name (region, zone_area ...) to one value per row; accuracy per value.
    """
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_recall

    n, c = len(labels), len(class_names)
    out: dict[str, Any] = {f"{prefix}_n": float(n)}
    if n == 0:
        return {**out, f"{prefix}_top1": 0.0, f"{prefix}_top5": 0.0, "per_class_recall": {}, "per_group": {}}
    t, y = torch.from_numpy(np.asarray(logits, np.float32)), torch.from_numpy(np.asarray(labels, np.int64))
    if c == 1:
        top1 = top5 = 1.0
        recall = torch.ones(1)
    else:
        top1 = float(multiclass_accuracy(t, y, num_classes=c, average="micro", top_k=1))
        top5 = float(multiclass_accuracy(t, y, num_classes=c, average="micro", top_k=min(5, c)))
        recall = multiclass_recall(t, y, num_classes=c, average=None)
    present = set(int(v) for v in y.tolist())
    out.update({f"{prefix}_top1": top1, f"{prefix}_top5": top5,
                "per_class_recall": {class_names[i]: float(recall[i]) for i in range(c) if i in present}})
    pred = t.argmax(dim=1).numpy()
    per_group: dict[str, dict[str, float]] = {}
    for column, values in (groups or {}).items():
        keyed: dict[str, list[bool]] = {}
        for v, p, truth in zip(values, pred, labels):
            keyed.setdefault("-" if v is None else str(v), []).append(bool(p == truth))
        per_group[column] = {k: float(np.mean(hits)) for k, hits in sorted(keyed.items())}
    out["per_group"] = per_group
    return out


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(labels: np.ndarray, preds: np.ndarray, class_names: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix with counts."""
    plt = _pyplot()
    c = len(class_names)
    cm = np.zeros((c, c), np.int64)
    for t, p in zip(labels, preds):
        cm[int(t), int(p)] += 1
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.5 * c + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(c), class_names, fontsize=8)
    for i in range(c):
        for j in range(c):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def plot_curves(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Train/val loss and val top-1/top-5 per epoch."""
    plt = _pyplot()
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]  # epoch 0: the starting model
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    a.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val loss")
    a.set_xlabel("epoch")
    a.legend()
    b.plot(epochs, [h["val_top1"] for h in history], marker="o", label="val top-1")
    b.plot(epochs, [h["val_top5"] for h in history], marker="o", label="val top-5")
    b.set_xlabel("epoch")
    b.set_ylim(0, 1)
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
