"""The embedding study's cheapest useful cell on cached features: a head trained on FROZEN image features.

The study's `frozen` stage trains only a head (Linear, BatchNorm, L2 norm) on a backbone that does not
move, so the backbone's output for a crop never changes: this module trains the same head directly on
the image vectors the embeddings phase already computed (no second pass through the backbone). Loss
and miner are the study's (`retrieval.metric_losses.make_criterion`: pytorch-metric-learning triplet /
contrastive / ArcFace with the study's margins), batches class-balanced (`m` of each class), AdamW
with cosine decay over a fixed number of steps, seeded.

The trained head is folded into one affine map (the BatchNorm in eval mode merged into the Linear), so
applying it is `l2n(x @ W.T + b)` in numpy: `FeatureHead`. On disk (`save` / `load`):
`head.safetensors` (weight, bias) and `head.json` ({kind: "feature_head", in_dim, dim, loss, steps,
seed, class_names, ...}); no pickle.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HEAD_FILE = "head.json"
WEIGHTS_FILE = "head.safetensors"


def l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class FeatureHead:
    """A trained head folded into one affine map: `project(x) = l2n(x @ weight.T + bias)`."""

    weight: np.ndarray  # (dim, in_dim) float32
    bias: np.ndarray  # (dim,) float32
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def in_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    def project(self, x: np.ndarray) -> np.ndarray:
        """(n, dim) L2-normalised head vectors of (n, in_dim) image vectors (re-normalised first)."""
        x = l2n(x)
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"the head takes {self.in_dim}-d image vectors, got {x.shape[-1]}-d")
        return l2n(x @ self.weight.T + self.bias)

    def save(self, out_dir: Path) -> Path:
        from safetensors.numpy import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"weight": np.ascontiguousarray(self.weight, dtype=np.float32),
                   "bias": np.ascontiguousarray(self.bias, dtype=np.float32)}, str(out / WEIGHTS_FILE))
        meta = {"kind": "feature_head", "in_dim": self.in_dim, "dim": self.dim, **self.meta}
        (out / HEAD_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, head_dir: Path) -> "FeatureHead":
        from safetensors.numpy import load_file

        head_dir = Path(head_dir)
        meta = json.loads((head_dir / HEAD_FILE).read_text(encoding="utf-8"))
        if meta.get("kind") != "feature_head":
            raise ValueError(f"{head_dir} holds no feature head (kind {meta.get('kind')!r})")
        w = load_file(str(head_dir / WEIGHTS_FILE))
        return cls(w["weight"], w["bias"], {k: v for k, v in meta.items() if k not in ("kind", "in_dim", "dim")})


def _fold(linear: Any, bn: Any) -> tuple[np.ndarray, np.ndarray]:
    """Linear followed by BatchNorm1d (eval) as one affine map."""
    import torch

    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = linear.weight * scale[:, None]
        bias = (linear.bias - bn.running_mean) * scale + bn.bias
    return weight.numpy().astype(np.float32), bias.numpy().astype(np.float32)


def train_feature_head(x: np.ndarray, labels: np.ndarray, loss: str, study: Any, *, dim: int, steps: int,
                       lr: float, batch_size: int, seed: int = 0, weight_decay: float = 1e-4) -> FeatureHead:
    """Train a head on (n, in_dim) frozen image vectors with class labels (any hashable); `study` is the
    StudyConfig whose loss settings (margins, miner) the cell uses. Deterministic for a seed."""
    import torch

    labels = np.asarray(labels).astype(str)
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise ValueError(f"a head needs at least 2 classes to learn from, got {classes}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of ~64 x 1280: one thread is as fast, and never oversubscribes a busy host
    try:
        return _train(x, labels, classes, loss, study, dim=dim, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                      weight_decay=weight_decay)
    finally:
        torch.set_num_threads(threads)


def _train(x: np.ndarray, labels: np.ndarray, classes: list[str], loss: str, study: Any, *, dim: int, steps: int,
           lr: float, batch_size: int, seed: int, weight_decay: float) -> FeatureHead:
    import torch

    from pipeline.retrieval.metric_losses import make_criterion

    y = np.searchsorted(np.array(classes), labels)
    xs = torch.from_numpy(l2n(x))
    torch.manual_seed(int(seed))
    linear = torch.nn.Linear(xs.shape[1], dim)
    bn = torch.nn.BatchNorm1d(dim)
    crit = make_criterion(loss, study, len(classes), dim)
    params = [*linear.parameters(), *bn.parameters(), *crit.loss.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in range(len(classes))]
    m = max(2, batch_size // len(classes))
    yt = torch.from_numpy(y)
    for _ in range(steps):
        batch = np.concatenate([rng.choice(ix, m, replace=len(ix) < m) for ix in by_class])
        emb = torch.nn.functional.normalize(bn(linear(xs[batch])), dim=1)
        value = crit(emb, yt[batch])
        opt.zero_grad()
        value.backward()
        opt.step()
        sched.step()
    bn.eval()
    weight, bias = _fold(linear, bn)
    meta = {"loss": loss, "steps": int(steps), "lr": float(lr), "batch_size": int(m * len(classes)), "seed": int(seed),
            "class_names": classes, "n_train": int(len(y))}
    return FeatureHead(weight, bias, meta)
