"""The linear probe: a pretrained backbone frozen, logistic regression on its pooled features.

It is the baseline every trained model is shown beside, and the training loop's epoch 0: `fit_probe`
fits scikit-learn's LogisticRegression on the unaugmented train features; `init_head` writes its
coefficients, mapped onto raw features, into the model's linear head, so the model as it starts *is*
the probe and is scored like any model. Fine-tuning then goes on from the probe as its head (LP-FT,
`head_start: probe`) or from a fresh head (`fresh_head`, the default `head_start: fresh`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Probe:
    classes: np.ndarray  # class indices the probe saw in train
    coef: np.ndarray  # [C, D] on raw features
    intercept: np.ndarray  # [C]


def features(model: Any, loader: Any, device: str, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pooled pre-logit features and labels of every item of `loader`."""
    import torch

    model.eval()
    feats, labels = [], []
    with torch.inference_mode():
        for x, y, _ in loader:
            with torch.autocast(device_type="cuda", dtype=dtype, enabled=dtype is not None):
                f = model.forward_head(model.forward_features(x.to(device)), pre_logits=True)
            feats.append(f.float().cpu().numpy())
            labels.append(y.numpy())
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(feats), np.concatenate(labels)


def fit_probe(model: Any, train_loader: Any, device: str, dtype: Any, seed: int = 0) -> Probe | None:
    """Logistic regression (standardised features, C=1) on the frozen model's train features; None
    when train holds fewer than two classes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    model.to(device)
    xs, ys = features(model, train_loader, device, dtype)
    if len(set(ys.tolist())) < 2:
        return None
    scaler = StandardScaler().fit(xs)
    clf = LogisticRegression(max_iter=1000, C=1.0, random_state=seed).fit(scaler.transform(xs), ys)
    coef = clf.coef_ / scaler.scale_[None, :]
    intercept = clf.intercept_ - coef @ scaler.mean_
    if coef.shape[0] == 1:  # binary: one logit w.x + b -> two symmetric logits
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return Probe(clf.classes_, coef, intercept)


def init_head(model: Any, probe: Probe | None, n_classes: int) -> bool:
    """Write the probe into the model's linear head; False (head untouched) when it does not fit:
    no probe, a head that is not one Linear layer, or a probe that did not see every class."""
    import torch

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if probe is None or not isinstance(head, torch.nn.Linear) or len(probe.classes) != n_classes:
        return False
    order = np.argsort(probe.classes)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(probe.coef[order], dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(probe.intercept[order], dtype=head.bias.dtype))
    return True


def fresh_head(model: Any, seed: int) -> None:
    """Re-draw the model's Linear head as timm's `reset_classifier` builds it (PyTorch's default Linear
    init, U(+-1/sqrt(fan_in))), from `seed` without touching the global RNG: how a plain fine-tune starts."""
    import torch

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, torch.nn.Linear):
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        head.reset_parameters()


def probe_start(model: Any, loaders: Any, device: str, cfg: Any, n_classes: int) -> bool:
    """Fit the probe on the unaugmented train items and start the model from it (LP-FT)."""
    from pipeline.training.items import ImageDataset, make_loader
    from pipeline.training.loop import amp_dtype

    ds = loaders.train.dataset
    plain = ImageDataset(ds.paths, ds.labels, loaders.val.dataset.transform)
    loader = make_loader(plain, cfg.train.eval_batch_size, train=False, workers=cfg.train.num_workers, device=device)
    probe = fit_probe(model, loader, device, amp_dtype(device, cfg.train.amp), cfg.train.seed)
    return init_head(model, probe, n_classes)
