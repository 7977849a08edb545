"""Declarations of the embedding-study phases: one `embedding_cell_<backbone>_<loss>` per grid cell, and
`embedding_study`, the comparison of them all (flow `embedding-study`).

A cell's id holds only what decides it: the study settings except the grid lists (so adding a loss
does not recompute the other cells), its own backbone's weights path, the training items' keys of
the train section, and the instance (backbone, loss). Batch size, workers, AMP and device are runtime.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.core.phases import PhaseRun, PhaseSpec, register

STUDY_RUNTIME_KEYS = ("study.batch_size", "study.register_best", "train.num_workers", "train.amp", "runtime.device")
ITEM_KEYS = ("source", "target", "max_items", "seed", "image_size")
GRID_KEYS = {"backbones", "losses", "weights", "batch_size", "register_best"}
CELL_REPORTS = ("report.md", "rows.json", "test_pca.png", "test_tsne.png", "test_worst.png")


def cell_name(backbone: str, loss: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", f"{backbone}_{loss}")


def grid(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """The cells: per backbone its frozen baseline, then one per loss."""
    return [{"name": cell_name(b, loss), "backbone": b, "loss": loss}
            for b in cfg.study.backbones for loss in ("baseline", *cfg.study.losses)]


def _cell_params(cfg: PipelineConfig, options: dict[str, Any]) -> dict[str, Any]:
    study = cfg.study.model_dump(mode="json", exclude=GRID_KEYS)
    return {"study": study, "weights": dict(sorted(cfg.study.weights.items())),
            "items": {k: getattr(cfg.train, k) for k in ITEM_KEYS}}


def _run_cell(run: PhaseRun) -> dict[str, Any]:
    from pipeline.core.device import pick_device
    from pipeline.study.cell import run_cell

    inst = run.instance
    ckpt = Path(run.runtime.get("checkpoints") or run.out_dir / ".ckpt") / "embedding_study" / _ckpt_key(run)
    root = run.runtime.get("dataset_root")
    out = run_cell(run.inputs["split"], run.inputs.get("crops"), run.cfg, inst["backbone"], inst["loss"], run.out_dir,
                   dataset_root=Path(root) if root else None, checkpoint_dir=ckpt,
                   device=pick_device(run.runtime.get("device", "auto")))
    if not run.runtime.get("checkpoints"):
        import shutil

        shutil.rmtree(run.out_dir / ".ckpt", ignore_errors=True)
    return out


def _ckpt_key(run: PhaseRun) -> str:
    """Checkpoints of one cell for one set of inputs and params (so a retried task resumes, another cell never)."""
    from pipeline.core.hashing import canonical_json, sha256_bytes

    return sha256_bytes(canonical_json([run.params, sorted(str(p.name) for p in run.inputs.values())]).encode())[:24]


def _run_study(run: PhaseRun) -> dict[str, Any]:
    import json

    from pipeline.registry.heads import register_head
    from pipeline.study.compare import run_study

    cells = {name: path for name, path in run.inputs.items() if name.startswith("embedding_cell_")}
    metrics = run_study(cells, run.out_dir, k=run.cfg.study.k)
    best = json.loads((run.out_dir / "best.json").read_text())
    cfg, workdir = run.cfg, run.runtime.get("workdir")
    if best and cfg.study.register_best and cfg.tracking.enabled and workdir:
        from pipeline.core.workspace import Workspace

        uri = Workspace(Path(workdir)).tracking_uri(cfg)
        tags = {k: str(best[k]) for k in ("cell", "artifact_id", "backbone", "loss", "stage")}
        metrics["registered_version"] = register_head(uri, cfg.tracking.experiment, cells[best["cell"]] / "head", tags)
    return metrics


register(
    PhaseSpec(
        name="embedding_cell", version="3", inputs=("split", "crops"), outputs=("head/head.json", "rows.json"),
        sections=(), runtime_keys=STUDY_RUNTIME_KEYS, run=_run_cell, extra_params=_cell_params, instances=grid,
        reports=CELL_REPORTS, pool="gpu",
        description="one (backbone, loss) cell of the embedding study: staged metric learning, val/test retrieval figures",
    ),
    PhaseSpec(
        name="embedding_study", version="4", inputs=("embedding_cell*",),
        outputs=("comparison.md", "comparison.csv", "best.json"), sections=(), runtime_keys=("study.register_best",),
        run=_run_study, extra_params=lambda cfg, opt: {"k": cfg.study.k},
        reports=("comparison.md", "comparison.csv", "comparison.png", "best.json", "umap_baseline.png", "umap_best.png"),
        description="the embedding study's comparison table (a row per backbone, loss, stage), best head registered",
    ),
)
