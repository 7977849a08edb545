"""Metric learning: pytorch-metric-learning losses and miners, class-balanced batches, staged fine-tuning.

Losses (`retrieval.metric_losses.make_criterion`): 'triplet' = TripletMarginLoss with a TripletMarginMiner (semi-hard) or a
BatchHardMiner (`study.miner`); 'contrastive' = ContrastiveLoss with a PairMarginMiner; 'arcface' =
ArcFaceLoss (its class centres train with the net; no miner). Batches: the library's MPerClassSampler
(`m_per_class` items of each class drawn per batch).

`train_stages` runs the configured stages in order (frozen -> last -> all), each a `loop.fit` call
(timm optimizer, warmup + cosine, early stopping on val mAP@R, checkpoints under
`<checkpoint_dir>/<stage>/` so an interrupted cell resumes inside the stage it was in, and finished
stages are not trained again), and evaluates every stage on val and test.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.core.config import PhaseTrainConfig, StudyConfig, StudyStage
from pipeline.models.embedding import EmbeddingNet
from pipeline.retrieval.metric_losses import Criterion
from pipeline.study.evaluate import SplitEval, embed_split, retrieval_metrics


def balanced_loader(dataset: Any, labels: list[int], cfg: StudyConfig, batch_size: int, device: str,
                    workers: int = 0) -> Any:
    """MPerClassSampler batches: batch_size rounded down to a multiple of m, at most m x n_classes."""
    import torch
    from pytorch_metric_learning.samplers import MPerClassSampler

    m = cfg.m_per_class
    n_classes = len(set(labels))
    bs = max(m, min(batch_size, m * n_classes) // m * m)
    length = max(len(labels), bs) // bs * bs
    sampler = MPerClassSampler(labels, m=m, batch_size=bs, length_before_new_iter=length)
    return torch.utils.data.DataLoader(dataset, batch_size=bs, sampler=sampler, num_workers=workers,
                                       generator=torch.Generator().manual_seed(0), drop_last=True,
                                       pin_memory=str(device).startswith("cuda"), persistent_workers=workers > 0)


def stage_recipe(cfg: StudyConfig, stage: StudyStage, arch: str) -> PhaseTrainConfig:
    return PhaseTrainConfig(arch=arch, epochs=stage.epochs, optimizer=cfg.optimizer, lr=stage.lr,
                            min_lr=stage.lr * 0.01, weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs,
                            label_smoothing=0.0, patience=cfg.patience, augment=cfg.augment)


@dataclass
class StageResult:
    stage: str
    history: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    evals: dict[str, SplitEval] = field(default_factory=dict)  # split -> evaluation


def val_evaluator(frame: Any, labels: np.ndarray, cfg: StudyConfig, device: str) -> Callable[[Any, Any], dict]:
    """fit's `evaluate`: val mAP@R / precision@k of the class labels (same-photo neighbours excluded)."""

    def evaluate(model: Any, loader: Any) -> dict[str, float]:
        x, _ = embed_split(model, loader, device)
        m = retrieval_metrics(x, frame, labels, cfg.k)
        return {"val_map_at_r": m["map_at_r"], f"val_precision_at_{cfg.k}": m[f"precision_at_{cfg.k}"]}

    return evaluate


def train_stages(net: EmbeddingNet, criterion: Criterion, train_loader: Any, eval_loaders: dict[str, Any],
                 frames: dict[str, Any], labels: dict[str, np.ndarray], cfg: StudyConfig, arch: str, *,
                 seed: int, checkpoint_dir: Path, device: str, amp: str = "auto",
                 on_stage: Callable[[StageResult], None] | None = None) -> list[StageResult]:
    """Train `net` stage by stage (see the module docstring); returns one StageResult per stage."""
    from pipeline.study.evaluate import evaluate_split
    from pipeline.training.loop import fit

    results = []
    evaluate = val_evaluator(frames["val"], labels["val"], cfg, device)
    for stage in cfg.stages:
        net.set_stage(stage.name, cfg.unfreeze_last)
        recipe = stage_recipe(cfg, stage, arch)
        res = fit(net, train_loader, eval_loaders["val"], recipe, epochs=stage.epochs, seed=seed,
                  checkpoint_dir=Path(checkpoint_dir) / stage.name, device=device, amp=amp, channels_last=False,
                  loss_fn=criterion, evaluate=evaluate, monitor="val_map_at_r")
        out = StageResult(stage.name, res.history, res.best_epoch, res.epochs_run, res.stopped_early)
        for split, loader in eval_loaders.items():
            out.evals[split] = evaluate_split(net, loader, frames[split], labels[split], cfg.k, device)
        results.append(out)
        if on_stage is not None:
            on_stage(out)
    return results
