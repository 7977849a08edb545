"""The metric-learning losses the embedding study and the nightly embedding head share (pytorch-metric-learning).

'triplet' = TripletMarginLoss with a TripletMarginMiner (semi-hard) or a BatchHardMiner (`study.miner`);
'contrastive' = ContrastiveLoss with a PairMarginMiner; 'arcface' = ArcFaceLoss (its class centres train
with the net; no miner). Margins and scales come from the `study` section.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.core.config import StudyConfig


@dataclass
class Criterion:
    loss: Any  # a pml loss module
    miner: Any | None

    def __call__(self, emb: Any, labels: Any, rows: Any = None) -> Any:
        tuples = self.miner(emb, labels) if self.miner is not None else None
        return self.loss(emb, labels, tuples)


def make_criterion(loss: str, cfg: StudyConfig, n_classes: int, dim: int) -> Criterion:
    from pytorch_metric_learning import losses, miners

    if loss == "triplet":
        miner = (miners.BatchHardMiner() if cfg.miner == "batch_hard"
                 else miners.TripletMarginMiner(margin=cfg.triplet_margin, type_of_triplets="semihard"))
        return Criterion(losses.TripletMarginLoss(margin=cfg.triplet_margin), miner)
    if loss == "contrastive":
        pos, neg = cfg.pair_margins
        return Criterion(losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0), miners.PairMarginMiner(pos, neg))
    if loss == "arcface":
        return Criterion(losses.ArcFaceLoss(n_classes, dim, margin=cfg.arcface_margin, scale=cfg.arcface_scale), None)
    raise ValueError(f"unknown loss {loss!r}")
