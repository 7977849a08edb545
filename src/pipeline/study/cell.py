"""One cell of the embedding study: a backbone with a loss ('baseline': GAP features, nothing trained).

`run_cell` builds the training items (the shared `training.items.build_items`: crops or images of each split),
the backbone with its offline weights, and for a loss the head and the staged fine-tuning
(`study.train.train_stages`); every stage (and the baseline) is evaluated on val and test with
`study.evaluate`. The artifact: `head/` (the stage with the best val mAP@R, chosen on val only;
`models.embedding.save_head`), `rows.json` (one row per stage: the figures the study table shows),
report.md, the test plots of the kept stage and its test embeddings (test_embeddings.npy,
test_labels.npy: the study's UMAP). Returned metrics: `<stage>_<split>_<figure>`
for every row, plus the kept stage's `val_map_at_r` / `test_map_at_r` headline.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import PipelineConfig

FIGURES = ("map_at_r", "precision_at_1", "coverage_damaged", "silhouette", "anisotropy", "cos_euclid_agreement",
           "pml_map_at_r", "map_at_r_lo", "map_at_r_hi", "coverage_damaged_lo", "coverage_damaged_hi",
           "coverage_damaged_n_queries", "n_queries", "n_photos")
BASELINE = "baseline"


def _loaders(data: Any, cfg: PipelineConfig, arch: str, info: dict[str, Any], device: str) -> tuple[Any, dict, Any]:
    """(Loaders of the shared training runner, labels per split as arrays, train transform)."""
    from pipeline.training.augment import norm_stats, train_transform
    from pipeline.study.train import stage_recipe
    from pipeline.training.trainer import make_loaders

    s = cfg.study
    recipe = stage_recipe(s, s.stages[0], arch).model_copy(update={"image_size": s.image_size or cfg.train.image_size,
                                                                   "batch_size": s.batch_size})
    loaders = make_loaders(data, recipe, cfg, info["pretrained_cfg"], device, train_aug=False)
    mean, std = norm_stats(s.augment, info["pretrained_cfg"])
    tf_train = train_transform(s.augment, loaders.image_size, mean, std)
    return loaders, {k: np.asarray(v) for k, v in loaders.labels.items()}, tf_train


def _row(arch: str, loss: str, stage: str, info: dict[str, Any], evals: dict[str, Any], k: int,
         extra: dict[str, Any] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"backbone": arch, "loss": loss, "stage": stage, "random_init": bool(info["random_init"]),
                           "weights_source": str(info["weights_source"]), **(extra or {})}
    for split, ev in evals.items():
        for key in (*FIGURES, f"precision_at_{k}", f"precision_at_{k}_lo", f"precision_at_{k}_hi", f"recall_at_{k}", "n"):
            row[f"{split}_{key}"] = ev.metrics.get(key, float("nan"))
    return row


def run_cell(split_dir: Path, crops_dir: Path | None, cfg: PipelineConfig, arch: str, loss: str, out_dir: Path, *,
             dataset_root: Path | None, checkpoint_dir: Path, device: str = "cpu") -> dict[str, Any]:
    """Train (unless baseline) and evaluate one cell; write its artifact into out_dir; return metrics."""
    import torch

    from pipeline.training.augment import resize_size
    from pipeline.training.items import ImageDataset, build_items
    from pipeline.study.evaluate import evaluate_split, plots
    from pipeline.models.embedding import EmbeddingNet, create_backbone, head_meta, save_head
    from pipeline.retrieval.metric_losses import make_criterion
    from pipeline.study.train import balanced_loader, train_stages

    s, seed = cfg.study, cfg.train.seed
    data = build_items(Path(split_dir) / "split.parquet", cfg.train, dataset_root, crops_dir)
    backbone, info = create_backbone(arch, s.weights.get(arch), s.allow_random_init, seed)
    loaders, labels, tf_train = _loaders(data, cfg, arch, info, device)
    frames, k = loaders.frames, s.k
    evals = {"val": loaders.val, "test": loaders.test}
    torch.manual_seed(seed)
    if loss == BASELINE:
        net = EmbeddingNet(backbone, None).to(device)
        results = {"frozen": {sp: evaluate_split(net, ld, frames[sp], labels[sp], k, device) for sp, ld in evals.items()}}
        rows, kept = [_row(arch, loss, "frozen", info, results["frozen"], k)], "frozen"
    else:
        crit = make_criterion(loss, s, len(data.class_names), s.embedding_dim)
        net = EmbeddingNet(backbone, s.embedding_dim, crit.loss)
        train = balanced_loader(ImageDataset(list(frames["train"]["path"]), list(labels["train"]), tf_train),
                                list(labels["train"]), s, s.batch_size, device, cfg.train.num_workers)
        states: dict[str, dict[str, Any]] = {}
        stage_results = train_stages(net, crit, train, evals, frames, labels, s, arch, seed=seed,
                                     checkpoint_dir=Path(checkpoint_dir), device=device, amp=cfg.train.amp,
                                     on_stage=lambda r: states.__setitem__(r.stage, net.embedding_state()))
        results = {r.stage: r.evals for r in stage_results}
        rows = [_row(arch, loss, r.stage, info, r.evals, k, {"epochs_run": r.epochs_run, "best_epoch": r.best_epoch + 1,
                                                            "stopped_early": r.stopped_early}) for r in stage_results]
        kept = max(results, key=lambda st: (np.nan_to_num(results[st]["val"].metrics["map_at_r"], nan=-1.0),
                                            -list(results).index(st)))
        net.load_state_dict(states[kept], strict=False)
    out_dir = Path(out_dir)
    meta = head_meta(net, arch, info, loaders.image_size, resize_size(loaders.image_size, s.augment), loaders.mean,
                     loaders.std, loss, kept, data.class_names)
    save_head(net.to("cpu"), meta, out_dir / "head")
    files = plots(results[kept]["test"], frames["test"], out_dir, "test", k, seed=seed)
    np.save(out_dir / "test_embeddings.npy", results[kept]["test"].x.astype(np.float32), allow_pickle=False)
    np.save(out_dir / "test_labels.npy", labels["test"].astype(np.int64), allow_pickle=False)
    (out_dir / "rows.json").write_text(json.dumps({"rows": rows, "kept_stage": kept}, indent=2, sort_keys=True,
                                                  default=float) + "\n")
    (out_dir / "report.md").write_text(_report(arch, loss, rows, kept, data, files, k))
    metrics: dict[str, Any] = {f"{r['stage']}_{key}": v for r in rows for key, v in r.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool) and key.startswith(("val_", "test_"))}
    kept_row = next(r for r in rows if r["stage"] == kept)
    metrics.update({"val_map_at_r": kept_row["val_map_at_r"], "test_map_at_r": kept_row["test_map_at_r"],
                    f"test_precision_at_{k}": kept_row[f"test_precision_at_{k}"],
                    "random_init": float(info["random_init"]), "n_classes": float(len(data.class_names)),
                    "backbone": arch, "loss": loss, "kept_stage": kept})
    return metrics


def _ci(r: dict[str, Any], key: str) -> str:
    v, lo, hi = r.get(key, float("nan")), r.get(f"{key}_lo"), r.get(f"{key}_hi")
    return f"{v:.3f}" if lo is None or hi is None else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _report(arch: str, loss: str, rows: list[dict[str, Any]], kept: str, data: Any, files: list[str], k: int) -> str:
    lines = []
    if rows[0]["random_init"]:
        lines += [f"**Random-initialised backbone** ({arch}: no weights available): not a pretrained model's "
                  "figures; never chosen as best.", ""]
    counts = data.counts()
    lines += [f"# Embedding cell: {arch}, {loss}", "",
              f"Items: {data.source}, target `{data.target}`, {len(data.class_names)} classes; "
              + ", ".join(f"{sp} {sum(counts.get(sp, {}).values())}" for sp in ("train", "val", "test"))
              + f". Weights: {rows[0]['weights_source']}. Kept stage (best val mAP@R): **{kept}**.", "",
              f"| stage | val mAP@R | val P@{k} | test queries (photos) | test mAP@R | test P@{k} | test damaged->damaged@{k} "
              f"| test R@{k} | silhouette | anisotropy | cos/euclid | epochs |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = lambda key: _ci(r, key)  # noqa: E731
        lines.append(f"| {r['stage']} | {ci('val_map_at_r')} | {ci(f'val_precision_at_{k}')} | "
                     f"{int(r.get('test_n_queries', r.get('test_n', 0)))} ({int(r.get('test_n_photos', 0))}) | "
                     f"{ci('test_map_at_r')} | {ci(f'test_precision_at_{k}')} | {ci('test_coverage_damaged')} | "
                     f"{r[f'test_recall_at_{k}']:.3f} | {r['test_silhouette']:.3f} | {r['test_anisotropy']:.3f} | "
                     f"{r['test_cos_euclid_agreement']:.3f} | {r.get('epochs_run', '-')} |")
    lines += ["", "Figures within each split, the query's own photo and group excluded; test columns on the "
              "held-back test split; intervals: 95% bootstrap over photo groups (seeded).", "",
              "## Plots (kept stage)", "", *[f"![{f}]({f})" for f in files], ""]
    return "\n".join(lines)
