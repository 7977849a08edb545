"""Soft labels from the teachers, the distilled student, the no-teacher student and the fine-tune.

`run_soft_labels`: each teacher's logits on the train items (val transform of that teacher),
stored per teacher as .npy shards with index.parquet (key = item or crop id, teacher, shard,
row). A regional teacher scores only the items of its subset. Combined per item at temperature
T: p = sum_t w_t softmax(z_t / T) / sum_t w_t over the teachers covering the item (weights
renormalised there), written as probs_*.npy shards + soft_labels.parquet (key, shard, row,
teachers) + soft_labels.json (class names, T, weights). Every row is checked to sum to 1.

`run_student`: loss = w * KL(p_T || softmax(z / T)) * T^2 + (1 - w) * CE(z, y) with
w = student.distill_weight and T from the soft labels; without soft labels (`student_no_teacher`)
CE only. `run_finetune`: the distilled student trained on, CE only, the `finetune` recipe.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.config import PipelineConfig, RegionSpec
from pipeline.core.errors import ConfigError, DatasetError
from pipeline.training.data import ImageDataset, build_items, make_loader, select_subset
from pipeline.training.loop import amp_dtype, evaluate_loader
from pipeline.training.modeling import create_classifier, load_classifier, val_transform
from pipeline.training.runner import PhaseRuntime, make_loaders, train_and_report

SUM_TOLERANCE = 1e-4
GLOBAL_TEACHER = "teacher"


def _write_shards(matrix: np.ndarray, out_dir: Path, stem: str, shard_size: int) -> list[tuple[str, int]]:
    """Write rows into <stem>_00000.npy ...; return (shard file, row) per input row."""
    out_dir.mkdir(parents=True, exist_ok=True)
    where = []
    for s, start in enumerate(range(0, max(len(matrix), 1), shard_size)):
        name = f"{stem}_{s:05d}.npy"
        np.save(out_dir / name, np.ascontiguousarray(matrix[start:start + shard_size], dtype=np.float32))
        where += [(f"{out_dir.name}/{name}", r) for r in range(len(matrix[start:start + shard_size]))]
    return where


def combine(logits: dict[str, np.ndarray], covered: dict[str, np.ndarray], weights: dict[str, float],
            temperature: float) -> np.ndarray:
    """Weighted mean of softmax(z / T) over the teachers covering each row (weights renormalised)."""
    import torch

    names = list(logits)
    n = len(next(iter(covered.values())))
    total, mass = None, np.zeros(n, np.float64)
    for name in names:
        p = torch.softmax(torch.from_numpy(logits[name]).double() / temperature, dim=1).numpy()
        w = weights[name] * covered[name].astype(np.float64)
        total = p * w[:, None] if total is None else total + p * w[:, None]
        mass += w
    if (mass <= 0).any():
        raise DatasetError(f"{int((mass <= 0).sum())} items are covered by no teacher")
    probs = total / mass[:, None]
    err = float(np.abs(probs.sum(axis=1) - 1).max())
    if err > SUM_TOLERANCE:
        raise DatasetError(f"soft labels do not sum to 1 (max error {err:.2e})")
    return probs.astype(np.float32)


def _teacher_logits(model_dir: Path, frame: pd.DataFrame, labels: list[int], cfg: PipelineConfig,
                    device: str) -> np.ndarray:
    model, meta = load_classifier(model_dir, device)
    tf = val_transform(meta["image_size"], meta.get("resize_size") or meta["image_size"], meta["mean"], meta["std"])
    loader = make_loader(ImageDataset(list(frame["path"]), labels, tf), cfg.train.eval_batch_size, train=False,
                         workers=cfg.train.num_workers, device=device)
    logits, _ = evaluate_loader(model, loader, device, amp_dtype(device, cfg.train.amp))
    return logits


def run_soft_labels(split_path: Path, teacher_dirs: dict[str, Path], cfg: PipelineConfig, out_dir: Path, *,
                    dataset_root: Path | None = None, crops_dir: Path | None = None,
                    runtime: PhaseRuntime | None = None) -> dict[str, Any]:
    """Soft labels of the train items; `teacher_dirs` = {"teacher": dir, "teacher_<name>": dir, ...}."""
    rt, sl = runtime or PhaseRuntime(), cfg.soft_labels
    if GLOBAL_TEACHER not in teacher_dirs:
        raise ConfigError("soft labels need the global teacher ('teacher')")
    classes = json.loads((Path(teacher_dirs[GLOBAL_TEACHER]) / "model.json").read_text())["class_names"]
    data = build_items(split_path, cfg.train, dataset_root, crops_dir, class_names=classes)
    train = data.part("train")
    labels = data.labels(train)
    logits, covered, index, weights = {}, {}, [], {}
    for name in sorted(teacher_dirs, key=lambda n: (n != GLOBAL_TEACHER, n)):
        meta = json.loads((Path(teacher_dirs[name]) / "model.json").read_text())
        if meta["class_names"] != classes:
            raise ConfigError(f"{name}: class list differs from the global teacher's")
        mask = np.ones(len(train), bool) if not meta.get("subset") else \
            select_subset(train, RegionSpec(**meta["subset"])).to_numpy(bool)
        part = train[mask]
        z = np.zeros((len(train), len(classes)), np.float32)
        z[mask] = _teacher_logits(Path(teacher_dirs[name]), part, [labels[i] for i in np.flatnonzero(mask)], cfg,
                                  rt.device)
        where = _write_shards(z[mask], out_dir / "logits", name, sl.shard_size)
        index += [{"key": k, "teacher": name, "shard": s, "row": r} for k, (s, r) in zip(part["key"], where)]
        logits[name], covered[name], weights[name] = z, mask, float(sl.weights.get(name, sl.default_weight))
    probs = combine(logits, covered, weights, sl.temperature)
    where = _write_shards(probs, out_dir / "probs", "probs", sl.shard_size)
    teachers = [[n for n in logits if covered[n][i]] for i in range(len(train))]
    pd.DataFrame(index).to_parquet(out_dir / "index.parquet", index=False)
    pd.DataFrame({"key": list(train["key"]), "shard": [s for s, _ in where], "row": [r for _, r in where],
                  "teachers": teachers}).to_parquet(out_dir / "soft_labels.parquet", index=False)
    (out_dir / "soft_labels.json").write_text(json.dumps(
        {"class_names": classes, "temperature": sl.temperature, "weights": weights, "n_items": len(train),
         "coverage": {n: int(c.sum()) for n, c in covered.items()}}, indent=2, sort_keys=True) + "\n")
    agree = float((probs.argmax(axis=1) == np.asarray(labels)).mean()) if labels else 0.0
    return {"n_items": float(len(train)), "n_teachers": float(len(logits)), "train_agreement": agree,
            "max_sum_error": float(np.abs(probs.sum(axis=1) - 1).max()),
            **{f"coverage_{n}": float(c.sum()) for n, c in covered.items()}}


def load_soft_labels(soft_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """({key: probability row}, soft_labels.json)."""
    meta = json.loads((soft_dir / "soft_labels.json").read_text())
    table = pd.read_parquet(soft_dir / "soft_labels.parquet")
    shards = {s: np.load(soft_dir / s) for s in sorted(set(table["shard"]))}
    return {k: shards[s][r] for k, s, r in zip(table["key"], table["shard"], table["row"])}, meta


def distill_loss(soft: Any, weight: float, temperature: float, label_smoothing: float = 0.0) -> Any:
    """loss(logits, y, rows) = w * KL(soft[rows] || softmax(z / T)) * T^2 + (1 - w) * CE(z, y)."""
    import torch.nn.functional as F

    def loss(logits: Any, target: Any, rows: Any) -> Any:
        p = soft[rows.to(soft.device)].to(logits.device)
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), p, reduction="batchmean") * temperature ** 2
        return weight * kl + (1 - weight) * F.cross_entropy(logits, target, label_smoothing=label_smoothing)

    return loss


def run_student(split_path: Path, cfg: PipelineConfig, out_dir: Path, checkpoint_dir: Path, *,
                soft_dir: Path | None = None, dataset_root: Path | None = None, crops_dir: Path | None = None,
                runtime: PhaseRuntime | None = None) -> dict[str, Any]:
    """The student: distilled from `soft_dir` (phase student), or CE only when None (student_no_teacher)."""
    import torch

    rt, recipe, t = runtime or PhaseRuntime(), cfg.student, cfg.train
    soft, meta = load_soft_labels(soft_dir) if soft_dir is not None else ({}, {})
    data = build_items(split_path, t, dataset_root, crops_dir, class_names=meta.get("class_names"))
    model, info = create_classifier(recipe.arch, len(data.class_names), recipe.weights or recipe.pretrained,
                                    recipe.drop_rate, allow_random_init=t.allow_random_init,
                                    allow_download=t.allow_download, seed=t.seed, keys=("student.weights",
                                                                                        "train.allow_random_init"))
    loaders = make_loaders(data, recipe, cfg, info["pretrained_cfg"], rt.device)
    loss_fn, lines = None, ["Trained without teachers (cross-entropy only).", ""]
    if soft_dir is not None:
        if recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0:
            raise ConfigError("student: mixup/cutmix is not supported with distillation; set student.mixup_alpha=0 "
                              "and student.cutmix_alpha=0")
        keys = list(loaders.frames["train"]["key"])
        missing = [k for k in keys if k not in soft]
        if missing:
            raise DatasetError(f"{len(missing)} train items have no soft label (e.g. {missing[0]}); rerun soft_labels")
        matrix = torch.from_numpy(np.stack([soft[k] for k in keys]))
        loss_fn = distill_loss(matrix, recipe.distill_weight, float(meta["temperature"]), recipe.label_smoothing)
        lines = [f"Distilled from {', '.join(sorted(meta['weights']))} (weights {meta['weights']}, "
                 f"T = {meta['temperature']}, KL weight {recipe.distill_weight}).", ""]
    title = "Student" if soft_dir is not None else "Student without teachers"
    return train_and_report(model, info, data, loaders, recipe, cfg, out_dir, checkpoint_dir, rt, title=title,
                            loss_fn=loss_fn, use_mixup=soft_dir is None, baseline_lines=lines)


def run_finetune(split_path: Path, student_dir: Path, cfg: PipelineConfig, out_dir: Path, checkpoint_dir: Path, *,
                 dataset_root: Path | None = None, crops_dir: Path | None = None,
                 runtime: PhaseRuntime | None = None) -> dict[str, Any]:
    """The distilled student trained on with CE and the `finetune` recipe's stronger augmentation."""
    rt = runtime or PhaseRuntime()
    model, meta = load_classifier(student_dir)
    recipe = cfg.finetune.model_copy(update={"arch": meta["arch"]})
    data = build_items(split_path, cfg.train, dataset_root, crops_dir, class_names=meta["class_names"])
    info = {"random_init": meta["random_init"], "weights_source": f"student ({meta['weights_source']})"}
    loaders = make_loaders(data, recipe, cfg, {"mean": meta["mean"], "std": meta["std"]}, rt.device)
    return train_and_report(model.train(), info, data, loaders, recipe, cfg, out_dir, checkpoint_dir, rt,
                            title="Fine-tuned student", baseline_lines=["Starts from the distilled student.", ""])
