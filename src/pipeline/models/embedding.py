"""Embedding networks: a timm backbone (global-average-pooled), an optional head, L2-normalised output.

`EmbeddingNet(backbone, dim, criterion)`: backbone features (timm, num_classes=0: GAP) -> with a
head, Linear(num_features, dim) -> BatchNorm1d -> L2 norm; without one (`dim=None`, the frozen
baseline) the GAP features L2-normalised. `criterion` is the metric-learning loss module when it has
parameters (ArcFace's class centres): as a submodule it is optimised and checkpointed with the net.

Staged fine-tuning (`set_stage`): 'frozen' trains the head only (the backbone also stays in eval
mode, so its BatchNorm statistics do not drift), 'last' also the last `unfreeze_last` coarse
parameter groups of timm's `group_matcher` (EfficientNet: conv head, then the last block stage;
ResNet: layer4 ...), 'all' everything.

A head directory holds `model.safetensors` (backbone + head, no loss parameters) and `head.json`:
{"kind": "embedding_head", "arch", "dim", "feature_dim", "image_size", "resize_size", "mean", "std",
"random_init", "weights_source", "loss", "stage", "class_names"}. `load_head(dir)` rebuilds it offline.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

HEAD_FILE = "head.json"
MODEL_FILE = "model.safetensors"
STAGES = ("frozen", "last", "all")


class EmbeddingNet(nn.Module):
    def __init__(self, backbone: nn.Module, dim: int | None, criterion: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = int(backbone.num_features)
        self.dim = int(dim) if dim else self.feature_dim
        self.head = nn.Sequential(nn.Linear(self.feature_dim, self.dim), nn.BatchNorm1d(self.dim)) if dim else None
        self.criterion = criterion
        self.frozen_backbone = dim is not None  # set by set_stage; the baseline never trains

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised embeddings (GAP features, or the head's BatchNorm output)."""
        f = self.backbone(x)
        return self.head(f) if self.head is not None else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.raw(x).float(), dim=1)

    def train(self, mode: bool = True) -> "EmbeddingNet":
        super().train(mode)
        if mode and self.frozen_backbone:
            self.backbone.eval()
        return self

    def set_stage(self, stage: str, unfreeze_last: int = 2) -> list[str]:
        """Freeze per stage (see the module docstring); returns the names of the backbone's trainable groups."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
        groups = backbone_groups(self.backbone)
        names = list(groups)
        train_groups = [] if stage == "frozen" else names if stage == "all" else names[-unfreeze_last:]
        trainable = {p for g in train_groups for p in groups[g]}
        for name, p in self.backbone.named_parameters():
            p.requires_grad_(name in trainable)
        self.frozen_backbone = stage == "frozen"
        return [str(g) for g in train_groups]

    def embedding_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()
                if not k.startswith("criterion.")}


def backbone_groups(backbone: nn.Module) -> dict[Any, list[str]]:
    """Parameter names per coarse group (stem first, head last), from timm's group_matcher."""
    from timm.models import group_parameters

    matcher = backbone.group_matcher(coarse=True) if hasattr(backbone, "group_matcher") else None
    if matcher is None:
        return {0: [n for n, _ in backbone.named_parameters()]}
    groups = group_parameters(backbone, matcher)
    return {g: list(v) for g, v in sorted(groups.items(), key=lambda kv: kv[0])}


def create_backbone(arch: str, weights: str | None, allow_random_init: bool, seed: int = 0) -> tuple[nn.Module, dict]:
    """A timm backbone (GAP features, no classifier) with offline weights, via `classifier.create_classifier`
    (the study has no download switch)."""
    from pipeline.models.classifier import create_classifier

    model, info = create_classifier(arch, 0, pretrained=weights or True, allow_random_init=allow_random_init,
                                    seed=seed, keys=(f"study.weights.{arch}", "study.allow_random_init", None))
    return model, info


def head_meta(net: EmbeddingNet, arch: str, info: dict[str, Any], image_size: int, resize_size: int,
              mean: list[float], std: list[float], loss: str, stage: str, class_names: list[str]) -> dict[str, Any]:
    return {"kind": "embedding_head", "arch": arch, "dim": net.dim, "feature_dim": net.feature_dim,
            "has_head": net.head is not None, "image_size": int(image_size), "resize_size": int(resize_size),
            "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "random_init": bool(info["random_init"]), "weights_source": str(info["weights_source"]),
            "loss": loss, "stage": stage, "class_names": list(class_names)}


def save_head(net: EmbeddingNet, meta: dict[str, Any], out_dir: Path) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(net.embedding_state(), str(out / MODEL_FILE), metadata={"arch": str(meta["arch"])})
    (out / HEAD_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def load_head(head_dir: Path, device: str = "cpu") -> tuple[EmbeddingNet, dict[str, Any]]:
    """(EmbeddingNet in eval mode, head.json) from a directory written by `save_head` (no download)."""
    import timm
    from safetensors.torch import load_file

    from pipeline.core.errors import ModelUnavailable

    path = Path(head_dir) / HEAD_FILE
    if not path.is_file():
        raise ModelUnavailable(f"not an embedding head directory (no {HEAD_FILE}): {head_dir}")
    meta = json.loads(path.read_text())
    backbone = timm.create_model(meta["arch"], pretrained=False, num_classes=0)
    net = EmbeddingNet(backbone, meta["dim"] if meta.get("has_head", True) else None)
    net.load_state_dict(load_file(str(Path(head_dir) / MODEL_FILE)))
    return net.to(device).eval(), meta
