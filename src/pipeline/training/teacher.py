"""The teacher phases: the global teacher and one regional teacher per `regional.teachers` entry.

`run_teacher` first measures the baseline (the pretrained backbone frozen, a logistic-regression
probe on its pooled features of the train split, scored on val and test: the training loop's
epoch 0), then fine-tunes the whole model per the `teacher` recipe from a fresh head (`head_start:
fresh`) or from that probe as its head (LP-FT, `head_start: probe`), and scores the test split.
`run_regional_teacher` trains the same way on a subset `{name, column, values}`, starting from the
global teacher's weights and class list with the `regional` recipe, and reports the global teacher
on the same subset as its baseline. Each writes into out_dir: model.safetensors, model.json,
report.md, curves.png, confusion.png.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig, RegionSpec
from pipeline.core.errors import ConfigError
from pipeline.training.items import build_items
from pipeline.models.classifier import create_classifier, load_classifier
from pipeline.training.probe import probe_start
from pipeline.training.trainer import PhaseRuntime, make_loaders, score, train_and_report

PROBE_DIR = "probe"


def _start_scores(model: Any, data: Any, loaders: Any, rt: PhaseRuntime, cfg: PipelineConfig, prefix: str
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The starting model's val and test figures (with intervals) and its raw logits per split."""
    from pipeline.training.trainer import _estimates, _majority

    out: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    model.to(rt.device)
    for split in ("val", "test"):
        m, logits, labels = score(model, getattr(loaders, split), loaders.frames[split], data.class_names, rt.device,
                                  cfg, prefix=split)
        est = _estimates(loaders.frames[split], logits, labels, _majority(data), split, cfg.train.seed)
        out[f"{prefix}_{split}_top1"] = m[f"{split}_top1"] if len(labels) else float("nan")
        out.update({k.replace(f"{split}_top1_ci", f"{prefix}_{split}_top1_ci"): v for k, v in est.items()
                    if k.startswith(f"{split}_top1_ci")})
        out[f"_{split}"] = est["_top1"]
        raw[split] = (loaders.frames[split], logits, labels)
    return out, raw


def _save_probe(model: Any, info: dict[str, Any], data: Any, loaders: Any, recipe: Any, cfg: PipelineConfig,
                raw: dict[str, Any], out_dir: Path) -> None:
    """probe/: the linear probe as a model dir (the frozen pretrained backbone with the probe head),
    with its predictions: the baseline promotion holds every candidate against."""
    from pipeline.retrieval.crop_rule import training_rule
    from pipeline.training.augment import resize_size
    from pipeline.models.classifier import model_meta, save_classifier
    from pipeline.training.trainer import save_predictions

    meta = model_meta(recipe.arch, data.class_names, loaders.image_size, resize_size(loaders.image_size, recipe.augment),
                      loaders.mean, loaders.std, info)
    meta.update({"source": data.source, "target": data.target, "probe": True, "crop_rule": training_rule(data, cfg)})
    save_classifier(model, meta, out_dir / PROBE_DIR)
    save_predictions(out_dir / PROBE_DIR, raw)


def _baseline_lines(scores: dict[str, Any], info: dict[str, Any], lp_ft: bool, head_start: str) -> list[str]:
    fresh = "timm's default init" if head_start == "fresh" else "near-zero init"
    epoch0 = ("The probe itself is epoch 0: it stays the teacher when no fine-tuned epoch beats it on val (a val "
              "set smaller than train.select_min_val ranks no epoch: the fine-tune's last epoch is kept, unless the "
              "fine-tune ran short of its step budget and the probe beats that last epoch on val). ")
    start = (epoch0 + ("Fine-tuning starts from a fresh head (teacher.head_start: fresh, " + fresh + ", as a plain "
                       "fine-tune)." if head_start == "fresh" else "Fine-tuning starts from this probe as the "
                       "classifier head (LP-FT).") if lp_ft else
             f"Fine-tuning starts from a fresh head ({fresh}; the probe did not cover every class).")
    return ["## Baseline", "", "The pretrained backbone frozen, a logistic-regression probe on its pooled features "
            "(saved as `probe/`):", f"- val top-1 {scores['_val'].text()}", f"- test top-1 {scores['_test'].text()}"
            + (" (random-initialised backbone)" if info["random_init"] else ""), "", start, ""]


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
    lp_ft = probe_start(model, loaders, rt.device, cfg, len(data.class_names))
    scores, raw = _start_scores(model, data, loaders, rt, cfg, "baseline")
    if lp_ft:
        _save_probe(model.to("cpu"), info, data, loaders, recipe, cfg, raw, out_dir)
    baseline = {k: v for k, v in scores.items() if not k.startswith("_")}
    model.train()
    return train_and_report(model, info, data, loaders, recipe, cfg, out_dir, checkpoint_dir, rt,
                            title="Teacher", baseline_lines=_baseline_lines(scores, info, lp_ft, recipe.head_start),
                            baseline=baseline, start_is_model=lp_ft, start_name="the linear probe",
                            fresh_start=recipe.head_start == "fresh")


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
    scores, _ = _start_scores(model, data, loaders, rt, cfg, "baseline")
    baseline = {k: v for k, v in scores.items() if not k.startswith("_")}
    lines = ["## Baseline", "", f"The global teacher on this subset ({spec.column} in {spec.values}):",
             f"- val top-1 {scores['_val'].text()}", f"- test top-1 {scores['_test'].text()}", "",
             "It is epoch 0 of the training below: it stays the answer when no trained epoch beats it on val.", ""]
    model.train()
    metrics = train_and_report(model, info, data, loaders, recipe, cfg, out_dir, checkpoint_dir, rt,
                               title=f"Regional teacher {name}", baseline_lines=lines, baseline=baseline,
                               meta_extra={"subset": spec.model_dump()}, start_is_model=True,
                               start_name="the global teacher")
    use, reason = _teaches(metrics, baseline)
    _mark_teaching(out_dir, use, reason)
    metrics["teaches"] = float(use)
    metrics["teaches_reason"] = reason
    return metrics


TEACHES_KEY = "soft_labels_use"


def _teaches(metrics: dict[str, Any], baseline: dict[str, Any]) -> tuple[bool, str]:
    """A regional teacher joins the soft labels only when it beats the global teacher on its subset's val."""
    mine, glob = float(metrics["val_top1"]), float(baseline.get("baseline_val_top1", float("nan")))
    if metrics.get("best_epoch", 1) == 0:
        return False, f"no trained epoch beat the global teacher on this subset's val (val top-1 {glob:.3f})"
    if not mine > glob:
        return False, f"val top-1 {mine:.3f} is not above the global teacher's {glob:.3f} on this subset"
    return True, f"val top-1 {mine:.3f} above the global teacher's {glob:.3f} on this subset"


def _mark_teaching(out_dir: Path, use: bool, reason: str) -> None:
    """Record in model.json whether the soft labels use this regional teacher, and why; and say so in the report."""
    import json

    from pipeline.models.classifier import META_FILE

    meta = json.loads((out_dir / META_FILE).read_text())
    meta[TEACHES_KEY] = {"use": bool(use), "reason": reason}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    verdict = "**Used for the soft labels**" if use else "**Left out of the soft labels**"
    with open(out_dir / "report.md", "a") as fh:
        fh.write(f"\n## Soft labels\n\n{verdict}: {reason}.\n")
