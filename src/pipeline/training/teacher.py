"""The teacher phases: the global teacher and one regional teacher per `regional.teachers` entry.

`run_teacher` first measures the baseline (the pretrained backbone frozen, a logistic-regression
probe on its pooled features of the train split, scored on val and test), then fine-tunes the whole
model per the `teacher` recipe, starting from that probe as its head (LP-FT), and scores the test
split. `run_regional_teacher` trains the same
way on a subset `{name, column, values}`, starting from the global teacher's weights and class
list with the `regional` recipe, and reports the global teacher on the same subset as its
baseline. Each writes into out_dir: model.safetensors, model.json, report.md, curves.png,
confusion.png.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import PipelineConfig, RegionSpec
from pipeline.core.errors import ConfigError
from pipeline.training.data import ImageDataset, build_items, make_loader
from pipeline.training.loop import amp_dtype
from pipeline.training.modeling import create_classifier, load_classifier
from pipeline.training.runner import PhaseRuntime, make_loaders, score, train_and_report


def _features(model: Any, loader: Any, device: str, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
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


def _probe(model: Any, loaders: Any, device: str, cfg: PipelineConfig) -> tuple[dict[str, float], Any]:
    """(val/test top-1 of the probe, (coef, intercept) mapped onto raw features, or None)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    model.to(device)
    dtype = amp_dtype(device, cfg.train.amp)
    plain = ImageDataset(loaders.train.dataset.paths, loaders.train.dataset.labels, loaders.val.dataset.transform)
    eval_train = make_loader(plain, cfg.train.eval_batch_size, train=False, workers=cfg.train.num_workers, device=device)
    xs, ys = _features(model, eval_train, device, dtype)
    out = {}
    if len(set(ys.tolist())) < 2:
        return {"baseline_val_top1": float("nan"), "baseline_test_top1": float("nan")}, None
    scaler = StandardScaler().fit(xs)
    clf = LogisticRegression(max_iter=1000, C=1.0, random_state=cfg.train.seed).fit(scaler.transform(xs), ys)
    for split, loader in (("val", loaders.val), ("test", loaders.test)):
        x, y = _features(model, loader, device, dtype)
        out[f"baseline_{split}_top1"] = float((clf.predict(scaler.transform(x)) == y).mean()) if len(y) else 0.0
    coef = clf.coef_ / scaler.scale_[None, :]
    intercept = clf.intercept_ - coef @ scaler.mean_
    if coef.shape[0] == 1:  # binary: one logit w.x + b -> two symmetric logits
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return out, (clf.classes_, coef, intercept)


def linear_probe(model: Any, loaders: Any, device: str, cfg: PipelineConfig) -> dict[str, float]:
    """Frozen backbone + logistic regression on pooled features (train, unaugmented) -> val/test top-1."""
    return _probe(model, loaders, device, cfg)[0]


def _head_from_probe(model: Any, probe: Any, n_classes: int) -> bool:
    """Initialise the linear head with the probe (LP-FT: fine-tuning then starts at the baseline
    instead of distorting the features to fit a random head); False when it does not fit."""
    import torch

    head = model.get_classifier()
    if probe is None or not isinstance(head, torch.nn.Linear) or len(probe[0]) != n_classes:
        return False
    classes, coef, intercept = probe
    order = np.argsort(classes)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(coef[order], dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(intercept[order], dtype=head.bias.dtype))
    return True


def run_teacher(split_path: Path, cfg: PipelineConfig, out_dir: Path, checkpoint_dir: Path, *,
                dataset_root: Path | None = None, crops_dir: Path | None = None,
                runtime: PhaseRuntime | None = None) -> dict[str, Any]:
    """The global teacher: baseline linear probe, then fine-tuning; see the module docstring."""
    rt = runtime or PhaseRuntime()
    recipe, t = cfg.teacher, cfg.train
    data = build_items(split_path, t, dataset_root, crops_dir)
    model, info = create_classifier(recipe.arch, len(data.class_names), recipe.weights or recipe.pretrained,
                                    recipe.drop_rate, allow_random_init=t.allow_random_init,
                                    allow_download=t.allow_download, seed=t.seed)
    loaders = make_loaders(data, recipe, cfg, info["pretrained_cfg"], rt.device)
    baseline, probe = _probe(model, loaders, rt.device, cfg)
    lp_ft = _head_from_probe(model, probe, len(data.class_names))
    lines = ["## Baseline", "", "The pretrained backbone frozen, a logistic-regression probe on its pooled features:",
             f"val top-1 {baseline['baseline_val_top1']:.3f}, test top-1 {baseline['baseline_test_top1']:.3f}"
             + (" (random-initialised backbone)." if info["random_init"] else "."), "",
             "Fine-tuning starts from this probe as the classifier head (LP-FT)." if lp_ft else
             "Fine-tuning starts from a fresh near-zero head (the probe did not cover every class).", ""]
    model.train()
    return train_and_report(model, info, data, loaders, recipe, cfg, out_dir, checkpoint_dir, rt,
                            title="Teacher", baseline_lines=lines, baseline=baseline)


def regional_spec(cfg: PipelineConfig, name: str) -> RegionSpec:
    for spec in cfg.regional.teachers:
        if spec.name == name:
            return spec
    raise ConfigError(f"no regional teacher {name!r}; regional.teachers has {[s.name for s in cfg.regional.teachers]}")


def run_regional_teacher(split_path: Path, teacher_dir: Path, name: str, cfg: PipelineConfig, out_dir: Path,
                         checkpoint_dir: Path, *, dataset_root: Path | None = None, crops_dir: Path | None = None,
                         runtime: PhaseRuntime | None = None) -> dict[str, Any]:
    """Regional teacher `name` (phase teacher_<name>): the global teacher fine-tuned on its subset."""
    rt = runtime or PhaseRuntime()
    spec, recipe = regional_spec(cfg, name), cfg.regional
    model, meta = load_classifier(teacher_dir)
    data = build_items(split_path, cfg.train, dataset_root, crops_dir, class_names=meta["class_names"], subset=spec)
    if len(data.part("train")) == 0:
        raise ConfigError(f"regional teacher {name!r}: no train items where {spec.column} in {spec.values}")
    model = model.train()
    if recipe.drop_rate and hasattr(model, "drop_rate"):
        model.drop_rate = recipe.drop_rate
    info = {"random_init": meta["random_init"], "weights_source": f"teacher ({meta['weights_source']})"}
    pcfg = {"mean": meta["mean"], "std": meta["std"]}
    recipe = recipe.model_copy(update={"arch": meta["arch"]})
    loaders = make_loaders(data, recipe, cfg, pcfg, rt.device)
    base, _, _ = score(model.to(rt.device), loaders.test, loaders.frames["test"], data.class_names, rt.device, cfg)
    baseline = {"baseline_test_top1": base["test_top1"]}
    lines = ["## Baseline", "", f"The global teacher on this subset ({spec.column} in {spec.values}): "
             f"test top-1 {base['test_top1']:.3f} on {int(base['test_n'])} items.", ""]
    return train_and_report(model, info, data, loaders, recipe, cfg, out_dir, checkpoint_dir, rt,
                            title=f"Regional teacher {name}", baseline_lines=lines, baseline=baseline,
                            meta_extra={"subset": spec.model_dump()})
