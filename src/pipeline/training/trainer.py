"""What every training phase shares: loaders, fit, test metrics, the model directory and the report.

`train_and_report(...)` runs `loop.fit`, scores the test split, writes the model directory
(model.safetensors + model.json) plus report.md, curves.png and confusion.png into out_dir, and
returns the phase metrics (numbers only; no timings, so a CPU artifact is reproducible).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.core.config import PhaseTrainConfig, PipelineConfig
from pipeline.training.augment import eval_transform, make_mixup, norm_stats, resize_size, train_transform
from pipeline.training.items import ImageDataset, TrainingData, make_loader
from pipeline.training.evaluate import classification_metrics, plot_confusion, plot_curves
from pipeline.training.loop import FitResult, LossFn, amp_dtype, evaluate_loader, fit
from pipeline.models.classifier import model_meta, save_classifier

GROUP_COLUMNS = ("region", "zone_area")
REPORT_FILES = ("report.md", "curves.png", "confusion.png")
MODEL_FILES = ("model.safetensors", "model.json")


@dataclass
class PhaseRuntime:
    """Run-time knobs (never part of an artifact id)."""

    device: str = "cpu"
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    fail_after_steps: int | None = None
    progress: bool = False  # a progress bar of the optimizer steps on stderr
    name: str = ""  # the phase, for the progress bar


@dataclass
class Loaders:
    train: Any
    val: Any
    test: Any
    frames: dict[str, Any]
    mean: list[float]
    std: list[float]
    image_size: int
    labels: dict[str, list[int]] = field(default_factory=dict)


def make_loaders(data: TrainingData, recipe: PhaseTrainConfig, cfg: PipelineConfig, pretrained_cfg: dict[str, Any],
                 device: str, train_aug: bool = True) -> Loaders:
    """Train loader with the recipe's augmentation (seeded, optional balanced sampler), val/test in order."""
    t = cfg.train
    image_size = int(recipe.image_size or t.image_size)
    mean, std = norm_stats(recipe.augment, pretrained_cfg)
    tf_train = train_transform(recipe.augment, image_size, mean, std) if train_aug else None
    tf_eval = eval_transform(recipe.augment, image_size, mean, std)
    frames = {s: data.part(s) for s in ("train", "val", "test")}
    labels = {s: data.labels(f) for s, f in frames.items()}

    def ds(split: str, tf: Any) -> ImageDataset:
        return ImageDataset(list(frames[split]["path"]), labels[split], tf)

    bs = int(recipe.batch_size or t.batch_size)
    train = make_loader(ds("train", tf_train or tf_eval), bs, train=True, seed=t.seed, workers=t.num_workers,
                        device=device, balanced=t.balanced_sampler)
    val = make_loader(ds("val", tf_eval), t.eval_batch_size, train=False, workers=t.num_workers, device=device)
    test = make_loader(ds("test", tf_eval), t.eval_batch_size, train=False, workers=t.num_workers, device=device)
    return Loaders(train, val, test, frames, mean, std, image_size, labels)


def _groups(frame: Any) -> dict[str, list[Any]]:
    return {c: list(frame[c]) for c in GROUP_COLUMNS if c in frame.columns and frame[c].notna().any()}


def score(model: Any, loader: Any, frame: Any, class_names: list[str], device: str, cfg: PipelineConfig,
          prefix: str = "test") -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    logits, labels = evaluate_loader(model, loader, device, amp_dtype(device, cfg.train.amp))
    return classification_metrics(logits, labels, class_names, prefix, _groups(frame)), logits, labels


MONITOR = {"top1": "val_top1", "nll": "val_nll"}
PREDICTIONS = "predictions.parquet"


def save_predictions(out_dir: Path, parts: dict[str, tuple[Any, np.ndarray, np.ndarray]]) -> None:
    """predictions.parquet: per val/test item its key, photo (group), label index and logits, so any
    two models can be compared item by item later (paired intervals over photos)."""
    import pandas as pd

    from pipeline.training.items import photo_groups

    rows = []
    for split, (frame, logits, labels) in parts.items():
        groups = photo_groups(frame)
        for key, group, y, z in zip(frame["key"], groups, labels, logits):
            rows.append({"split": split, "key": str(key), "group": str(group), "label": int(y),
                         "logits": [float(v) for v in z]})
    pd.DataFrame(rows, columns=["split", "key", "group", "label", "logits"]).to_parquet(out_dir / PREDICTIONS,
                                                                                         index=False)


def _estimates(frame: Any, logits: np.ndarray, labels: np.ndarray, majority: int, prefix: str,
               seed: int) -> dict[str, Any]:
    """top-1 and the majority-class rate with n and a bootstrap interval over photos."""
    from pipeline.core.stats import mean_ci
    from pipeline.training.items import photo_groups

    groups = photo_groups(frame)
    correct = (logits.argmax(axis=1) == labels) if len(labels) else np.zeros(0, bool)
    top1 = mean_ci(correct.astype(float), groups, seed=seed)
    maj = mean_ci((labels == majority).astype(float), groups, seed=seed)
    return {**top1.as_dict(f"{prefix}_top1_ci_"), f"{prefix}_majority_rate": maj.value,
            f"{prefix}_groups": float(top1.n_groups), "_top1": top1, "_majority": maj}


def train_and_report(model: Any, info: dict[str, Any], data: TrainingData, loaders: Loaders, recipe: PhaseTrainConfig,
                     cfg: PipelineConfig, out_dir: Path, checkpoint_dir: Path, rt: PhaseRuntime, *, title: str,
                     loss_fn: LossFn | None = None, use_mixup: bool = True, meta_extra: dict[str, Any] | None = None,
                     baseline_lines: list[str] | None = None, baseline: dict[str, float] | None = None,
                     start_is_model: bool = False, start_name: str = "the starting model",
                     fresh_start: bool = False) -> dict[str, Any]:
    """Fit within the phase's step budget, test, save the model directory, its predictions and the
    report; return the phase metrics. `start_is_model`: the model as it starts (a linear probe, or a
    trained model) is scored as epoch 0 and kept when no trained epoch beats it on val. `fresh_start`:
    training itself starts from a fresh head (probe.fresh_head), after epoch 0 is scored."""
    from pipeline.training.budget import plan
    from pipeline.training.probe import fresh_head

    t = cfg.train
    restart = None
    if fresh_start:
        def restart(m: Any) -> None:
            fresh_head(m, t.seed)
    budget = plan(len(loaders.train.dataset), int(loaders.train.batch_size or 1), recipe, t)
    n_val = len(loaders.val.dataset)
    mixup = make_mixup(recipe, len(data.class_names)) if use_mixup else None
    result = fit(model, loaders.train, loaders.val, recipe, epochs=budget.epochs, seed=t.seed,
                 checkpoint_dir=checkpoint_dir, device=rt.device, amp=t.amp, channels_last=t.channels_last,
                 loss_fn=loss_fn, mixup=mixup, on_epoch=rt.on_epoch, fail_after_steps=rt.fail_after_steps,
                 monitor=MONITOR[t.select_by], eval_initial=start_is_model, warmup_steps=budget.warmup_steps,
                 progress=f"{rt.name or title}" if rt.progress else None, select=n_val >= t.select_min_val,
                 restart=restart, compare_start=budget.short_of_budget)
    test, logits, labels = score(model, loaders.test, loaders.frames["test"], data.class_names, rt.device, cfg)
    _, val_logits, val_labels = score(model, loaders.val, loaders.frames["val"], data.class_names, rt.device, cfg,
                                      prefix="val")
    majority = _majority(data)
    val_est = _estimates(loaders.frames["val"], val_logits, val_labels, majority, "val", t.seed)
    est = {**_estimates(loaders.frames["test"], logits, labels, majority, "test", t.seed),
           **{("_val" + k if k.startswith("_") else k): v for k, v in val_est.items()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = model_meta(recipe.arch if not meta_extra or "arch" not in meta_extra else meta_extra["arch"],
                      data.class_names, loaders.image_size, resize_size(loaders.image_size, recipe.augment),
                      loaders.mean, loaders.std, info)
    meta.update({k: v for k, v in (meta_extra or {}).items() if k != "arch"})
    meta.update({"source": data.source, "target": data.target})
    from pipeline.retrieval.crop_rule import training_rule  # what predict and the page need to reproduce the input
    meta["crop_rule"] = training_rule(data, cfg)
    save_classifier(model.to("cpu"), meta, out_dir)
    save_predictions(out_dir, {"val": (loaders.frames["val"], val_logits, val_labels),
                               "test": (loaders.frames["test"], logits, labels)})
    plot_curves(result.history, out_dir / "curves.png", title)
    preds = logits.argmax(axis=1) if len(labels) else labels
    plot_confusion(labels, preds, data.class_names, out_dir / "confusion.png", f"{title}: test")
    metrics = _headline(result, test, info, data, baseline or {}, budget, est)
    report = _report(title, metrics, test, result, data, recipe, info, baseline_lines or [], budget, est, start_name,
                     t.select_min_val)
    (out_dir / "report.md").write_text(report)
    return metrics


def _majority(data: TrainingData) -> int:
    """The most frequent train class (ties: the first in the class list)."""
    counts = data.counts().get("train", {})
    return max(range(len(data.class_names)), key=lambda i: (counts.get(data.class_names[i], 0), -i))


def _headline(result: FitResult, test: dict[str, Any], info: dict[str, Any], data: TrainingData,
              baseline: dict[str, float], budget: Any, est: dict[str, Any]) -> dict[str, Any]:
    counts = data.counts()
    return {"val_top1": result.best_val_top1, "val_nll": float(result.best_row.get("val_loss", float("nan"))),
            "best_epoch": float(result.best_epoch + 1), "selected_on_val": float(result.selected),
            "epochs_run": float(result.epochs_run), "stopped_early": float(result.stopped_early),
            "resumed_from_epoch": float(result.resumed_from + 1 if result.resumed_from is not None else 0),
            "steps": float(result.total_steps), "epochs_planned": float(budget.epochs),
            "min_steps": float(budget.min_steps), "short_of_budget": float(budget.short_of_budget),
            "lr_peak": float(result.lr_peak), "warmup_steps": float(budget.warmup_steps),
            "test_top1": test["test_top1"], "test_top5": test["test_top5"], "test_n": test["test_n"],
            **{k: v for k, v in est.items() if not k.startswith("_")},
            "n_classes": float(len(data.class_names)), "random_init": float(bool(info["random_init"])),
            **{f"n_{s}": float(sum(counts.get(s, {}).values())) for s in ("train", "val", "test")}, **baseline}


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |" for r in rows]
    return lines + [""]


def _training_lines(result: FitResult, budget: Any, start_name: str, n_val: int, min_val: int) -> list[str]:
    if not result.selected and result.best_epoch < 0:
        last = result.history[-1]
        best = (f"Kept: {start_name}, epoch 0 (val top-1 {result.best_val_top1:.3f}), over the end of the schedule, "
                f"epoch {result.epochs_run} (val top-1 {float(last.get('val_top1', float('nan'))):.3f}). Val holds "
                f"{n_val} items, fewer than train.select_min_val = {min_val}, too few to rank {result.epochs_run} "
                f"epochs; the phase ran short of its step budget, so its start was compared with its end (ties go "
                f"to the end).")
    elif not result.selected:
        best = (f"Kept: the end of the schedule, epoch {result.best_epoch + 1} (val top-1 {result.best_val_top1:.3f}). "
                f"No epoch was chosen on val: it holds {n_val} items, fewer than train.select_min_val = {min_val}, too "
                f"few to rank {result.epochs_run} epochs" + (f" and {start_name}" if result.history and
                                                            result.history[0].get("epoch") == 0 else "")
                + " (the figures per epoch below are shown, not used).")
    else:
        kept = "epoch 0 (" + start_name + ": no trained epoch beat it on val)" if result.best_epoch < 0 else \
            f"epoch {result.best_epoch + 1}"
        best = f"Best: {kept} (val top-1 {result.best_val_top1:.3f})."
    lines = ["## Training", "", f"Budget: {budget.text()}", "",
             f"Peak lr {result.lr_peak:g}; {result.epochs_run} epochs run; "
             f"stopped because {result.stop_reason}. {best}", "",
             "![curves](curves.png)", ""]
    return lines + _table([(h.get("epoch", i + 1), h["train_loss"], h["val_loss"], h["val_top1"], h["val_top5"],
                            f"{h['lr']:.2e}")
                           for i, h in enumerate(result.history)],
                          ("epoch", "train loss", "val loss", "val top-1", "val top-5", "lr"))


def _report(title: str, m: dict[str, Any], test: dict[str, Any], result: FitResult, data: TrainingData,
            recipe: PhaseTrainConfig, info: dict[str, Any], baseline_lines: list[str], budget: Any,
            est: dict[str, Any], start_name: str, min_val: int = 0) -> str:
    lines = []
    if info["random_init"]:
        lines += [f"**Random-initialised backbone** ({recipe.arch}: no pretrained weights available; "
                  "figures are not those of a pretrained model).", ""]
    lines += [f"# {title}", "", f"Source: {data.source}, target `{data.target}`, {len(data.class_names)} classes; "
              f"weights: {info['weights_source']}.", ""]
    counts = data.counts()
    lines += ["## Data", ""] + _table([(c, *(counts.get(s, {}).get(c, 0) for s in ("train", "val", "test")))
                                       for c in data.class_names], ("class", "train", "val", "test"))
    lines += ["## Recipe", "", "```", *(f"{k}: {v}" for k, v in recipe.model_dump(exclude={"batch_size"}).items()), "```", ""]
    lines += baseline_lines
    lines += _training_lines(result, budget, start_name, int(m.get("n_val", 0)), min_val)
    top1, maj = est["_top1"], est["_majority"]
    lines += ["## Test", "", f"top-1 {top1.text()}, top-5 {m['test_top5']:.3f}; majority class "
              f"({data.class_names[_majority(data)]}) rate {maj.text()}. Intervals: 95% bootstrap over photos.", "",
              f"Val top-1 of the kept weights: {est['_val_top1'].text()}.", ""]
    if top1.n and top1.n < 100:
        lines += [f"With {top1.n} test items from {top1.n_groups} photos these figures say little (see the intervals).", ""]
    lines += _table(sorted(test["per_class_recall"].items()), ("class", "recall"))
    for column, accs in test["per_group"].items():
        lines += [f"Accuracy per {column}:", ""] + _table(list(accs.items()), (column, "accuracy"))
    lines += ["![confusion](confusion.png)", ""]
    return "\n".join(lines)
