"""Soft labels from the teachers, the distilled student, the no-teacher student and the fine-tune.

`run_soft_labels`: each teacher's logits on the train items (val transform of that teacher),
stored per teacher as .npy shards with index.parquet (key = item or crop id, teacher, shard,
row). A regional teacher scores only the items of its subset. Combined per item at temperature
T: p = sum_t w_t softmax(z_t / T) / sum_t w_t over the teachers covering the item (weights
renormalised there), written as probs_*.npy shards + soft_labels.parquet (key, shard, row,
teachers) + soft_labels.json (class names, T, weights). Every row is checked to sum to 1.

`run_student`: loss = w * KL(p_T || softmax(z / T)) * T^2 + (1 - w) * CE(z, y) with
w = student.distill_weight and T from the soft labels, on the train items the soft labels answer
right (`student.distill_on: teacher_right`; the others train on CE alone: a short teacher's mistakes
are not taught); without soft labels (`student_no_teacher`) CE only. `run_finetune`: the distilled student trained on, CE only, the `finetune` recipe.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pipeline.core.config import PipelineConfig, RegionSpec
from pipeline.core.errors import ConfigError, DatasetError
from pipeline.training.items import ImageDataset, build_items, make_loader, select_subset
from pipeline.training.loop import amp_dtype, evaluate_loader
from pipeline.models.classifier import create_classifier, load_classifier, val_transform
from pipeline.training.trainer import PhaseRuntime, make_loaders, train_and_report

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
    logits, covered, index, weights, excluded = {}, {}, [], {}, {}
    for name in sorted(teacher_dirs, key=lambda n: (n != GLOBAL_TEACHER, n)):
        meta = json.loads((Path(teacher_dirs[name]) / "model.json").read_text())
        if meta["class_names"] != classes:
            raise ConfigError(f"{name}: class list differs from the global teacher's")
        use = meta.get("soft_labels_use") or {"use": True}
        if name != GLOBAL_TEACHER and not use["use"]:
            excluded[name] = use.get("reason", "left out")
            continue
        mask = np.ones(len(train), bool) if not meta.get("subset") else \
            select_subset(train, RegionSpec(**meta["subset"])).to_numpy(bool)
        part = train[mask]
        z = np.zeros((len(train), len(classes)), np.float32)
        z[mask] = _teacher_logits(Path(teacher_dirs[name]), part, [labels[i] for i in np.flatnonzero(mask)], cfg,
                                  rt.device)
        where = _write_shards(z[mask], out_dir / "logits", name, sl.shard_size)
        index += [{"key": k, "teacher": name, "shard": s, "row": r} for k, (s, r) in zip(part["key"], where)]
        logits[name], covered[name], weights[name] = z, mask, float(sl.weights.get(name, sl.default_weight))
    probs = combine(logits, covered, weights, temperatures(sl.temperature)[0])
    where = _write_shards(probs, out_dir / "probs", "probs", sl.shard_size)
    teachers = [[n for n in logits if covered[n][i]] for i in range(len(train))]
    pd.DataFrame(index).to_parquet(out_dir / "index.parquet", index=False)
    pd.DataFrame({"key": list(train["key"]), "shard": [s for s, _ in where], "row": [r for _, r in where],
                  "teachers": teachers}).to_parquet(out_dir / "soft_labels.parquet", index=False)
    (out_dir / "soft_labels.json").write_text(json.dumps(
        {"class_names": classes, "temperature": temperatures(sl.temperature)[0],
         "temperatures": temperatures(sl.temperature), "weights": weights, "n_items": len(train),
         "coverage": {n: int(c.sum()) for n, c in covered.items()}, "excluded": excluded},
        indent=2, sort_keys=True) + "\n")
    _soft_labels_report(out_dir, weights, covered, excluded, len(train))
    agree = float((probs.argmax(axis=1) == np.asarray(labels)).mean()) if labels else 0.0
    return {"n_items": float(len(train)), "n_teachers": float(len(logits)), "train_agreement": agree,
            "max_sum_error": float(np.abs(probs.sum(axis=1) - 1).max()),
            "n_excluded": float(len(excluded)), **{f"coverage_{n}": float(c.sum()) for n, c in covered.items()}}


def _soft_labels_report(out_dir: Path, weights: dict[str, float], covered: dict[str, np.ndarray],
                        excluded: dict[str, str], n: int) -> None:
    lines = ["# Soft labels", "", f"{n} train items; teachers combined with weights renormalised where they cover an item:",
             "", "| teacher | weight | items covered |", "|---|---|---|"]
    lines += [f"| {t} | {weights[t]:g} | {int(covered[t].sum())} |" for t in weights]
    if excluded:
        lines += ["", "Left out (a regional teacher that does not beat the global teacher on its own subset's val):", ""]
        lines += [f"- {t}: {why}" for t, why in sorted(excluded.items())]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")


def temperatures(value: float | Sequence[float]) -> list[float]:
    """soft_labels.temperature as a list (a single value or a short list of candidates)."""
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


def distill_weights(value: float | Sequence[float]) -> list[float]:
    """student.distill_weight as a list (a single value or a short list of candidates)."""
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


def load_soft_labels(soft_dir: Path, temperature: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """({key: probability row}, soft_labels.json): the stored probabilities, or at another `temperature`
    the teachers' stored logits combined again with the same weights and coverage."""
    meta = json.loads((soft_dir / "soft_labels.json").read_text())
    table = pd.read_parquet(soft_dir / "soft_labels.parquet")
    if temperature is None or abs(float(temperature) - float(meta["temperature"])) < 1e-12:
        shards = {s: np.load(soft_dir / s) for s in sorted(set(table["shard"]))}
        return {k: shards[s][r] for k, s, r in zip(table["key"], table["shard"], table["row"])}, meta
    index = pd.read_parquet(soft_dir / "index.parquet")
    keys = list(table["key"])
    row_of = {k: i for i, k in enumerate(keys)}
    logits, covered = {}, {}
    shards = {s: np.load(soft_dir / s) for s in sorted(set(index["shard"]))}
    for teacher, part in index.groupby("teacher", sort=False):
        z = np.zeros((len(keys), len(meta["class_names"])), np.float32)
        mask = np.zeros(len(keys), bool)
        for k, sh, r in zip(part["key"], part["shard"], part["row"]):
            z[row_of[k]], mask[row_of[k]] = shards[sh][r], True
        logits[teacher], covered[teacher] = z, mask
    probs = combine(logits, covered, {t: float(meta["weights"][t]) for t in logits}, float(temperature))
    return {k: probs[i] for i, k in enumerate(keys)}, {**meta, "temperature": float(temperature)}


def distill_loss(soft: Any, weight: float, temperature: float, label_smoothing: float = 0.0,
                 only_right: bool = False) -> Any:
    """loss(logits, y, rows) = w * KL(soft[rows] || softmax(z / T)) * T^2 + (1 - w) * CE(z, y), averaged
    over the batch. `only_right`: an item whose soft label's argmax is not its label trains on CE alone
    (its KL term dropped, its CE at full weight)."""
    import torch
    import torch.nn.functional as F

    def loss(logits: Any, target: Any, rows: Any) -> Any:
        p = soft[rows.to(soft.device)].to(logits.device)
        kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), p, reduction="none").sum(dim=1) * temperature ** 2
        ce = F.cross_entropy(logits, target, label_smoothing=label_smoothing, reduction="none")
        mixed = weight * kl + (1 - weight) * ce
        if only_right:
            mixed = torch.where(p.argmax(dim=1) == target, mixed, ce)
        return mixed.mean()

    return loss


def _student_model(cfg: PipelineConfig, data: Any, rt: PhaseRuntime) -> tuple[Any, dict[str, Any], Any, bool]:
    """(model, info, loaders, lp_ft): the student's backbone with its linear probe as the head (epoch 0;
    training may restart from a fresh head, student.head_start)."""
    from pipeline.training.probe import probe_start

    recipe, t = cfg.student, cfg.train
    model, info = create_classifier(recipe.arch, len(data.class_names), recipe.weights or recipe.pretrained,
                                    recipe.drop_rate, allow_random_init=t.allow_random_init,
                                    allow_download=t.allow_download, seed=t.seed, keys=("student.weights",
                                                                                        "train.allow_random_init"))
    loaders = make_loaders(data, recipe, cfg, info["pretrained_cfg"], rt.device)
    lp_ft = probe_start(model, loaders, rt.device, cfg, len(data.class_names))
    return model.train(), info, loaders, lp_ft


def _candidates(cfg: PipelineConfig, soft_dir: Path | None) -> list[tuple[float, float]]:
    if soft_dir is None:
        return []
    meta = json.loads((soft_dir / "soft_labels.json").read_text())
    temps = [float(v) for v in meta.get("temperatures", [meta["temperature"]])]
    return [(w, t) for w in distill_weights(cfg.student.distill_weight) for t in temps]


def _start_line(lp_ft: bool, head_start: str) -> str:
    if not lp_ft:
        return ("It starts from a fresh head (no linear probe fitted: "
                + ("timm's default init)." if head_start == "fresh" else "near-zero init)."))
    probe = ("A linear probe on its frozen backbone is epoch 0 and stays the answer when val can choose and no "
             "trained epoch beats it (on a smaller val, when training ran short of its step budget and the probe "
             "beats the last epoch); ")
    return probe + ("training starts from a fresh head (student.head_start: fresh, as a plain fine-tune)."
                    if head_start == "fresh" else "training starts from that probe as the head (LP-FT).")


def run_student(split_path: Path, cfg: PipelineConfig, out_dir: Path, checkpoint_dir: Path, *,
                soft_dir: Path | None = None, dataset_root: Path | None = None, crops_dir: Path | None = None,
                runtime: PhaseRuntime | None = None) -> dict[str, Any]:
    """The student: distilled from `soft_dir` (phase student), or CE only when None (student_no_teacher).
    With several distillation candidates (lists in student.distill_weight / soft_labels.temperature) each
    trains from the same start; the best on val (train.select_by) is kept and the report shows them all."""
    rt, recipe, t = runtime or PhaseRuntime(), cfg.student, cfg.train
    meta = json.loads((soft_dir / "soft_labels.json").read_text()) if soft_dir is not None else {}
    data = build_items(split_path, t, dataset_root, crops_dir, class_names=meta.get("class_names"))
    candidates = _candidates(cfg, soft_dir)
    if soft_dir is not None and (recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0):
        raise ConfigError("student: mixup/cutmix is not supported with distillation; set student.mixup_alpha=0 "
                          "and student.cutmix_alpha=0")
    if not candidates:
        model, info, loaders, lp_ft = _student_model(cfg, data, rt)
        lines = ["Trained without teachers (cross-entropy only). " + _start_line(lp_ft, recipe.head_start), ""]
        return train_and_report(model, info, data, loaders, recipe, cfg, out_dir, checkpoint_dir, rt,
                                title="Student without teachers", use_mixup=True, baseline_lines=lines,
                                start_is_model=lp_ft, start_name="the linear probe",
                                fresh_start=recipe.head_start == "fresh")
    results = []
    for i, (w, temp) in enumerate(candidates):
        cand_dir = out_dir if len(candidates) == 1 else out_dir / "candidates" / f"w{w:g}_T{temp:g}"
        ckpt = checkpoint_dir if len(candidates) == 1 else Path(checkpoint_dir) / f"candidate_{i}"
        results.append(_distill_candidate(split_path, soft_dir, data, cfg, rt, w, temp, cand_dir, ckpt))  # type: ignore[arg-type]
    if len(candidates) == 1:
        return results[0]
    return _keep_best(out_dir, candidates, results, t.select_by)


def _distill_candidate(split_path: Path, soft_dir: Path, data: Any, cfg: PipelineConfig, rt: PhaseRuntime,
                       weight: float, temperature: float, out_dir: Path, checkpoint_dir: Path) -> dict[str, Any]:
    import torch

    recipe = cfg.student
    soft, meta = load_soft_labels(soft_dir, temperature)
    model, info, loaders, lp_ft = _student_model(cfg, data, rt)
    keys = list(loaders.frames["train"]["key"])
    missing = [k for k in keys if k not in soft]
    if missing:
        raise DatasetError(f"{len(missing)} train items have no soft label (e.g. {missing[0]}); rerun soft_labels")
    matrix = torch.from_numpy(np.stack([soft[k] for k in keys]))
    only_right = recipe.distill_on == "teacher_right"
    loss_fn = distill_loss(matrix, weight, temperature, recipe.label_smoothing, only_right)
    wrong = int((matrix.argmax(dim=1) != torch.as_tensor(data.labels(loaders.frames["train"]))).sum())
    excluded = meta.get("excluded") or {}
    lines = [f"Distilled from {', '.join(sorted(meta['weights']))} (weights {meta['weights']}, T = {temperature:g}, "
             f"KL weight {weight:g})." + (f" Left out of the soft labels: {', '.join(sorted(excluded))}." if excluded
                                          else "") + " " + _start_line(lp_ft, recipe.head_start), "",
             f"The soft labels answer {wrong} of the {len(keys)} train items wrong; "
             + ("those train on their label alone (student.distill_on: teacher_right), the other "
                f"{len(keys) - wrong} distil." if only_right else "every item distils (student.distill_on: all)."), ""]
    metrics = train_and_report(model, info, data, loaders, recipe, cfg, out_dir, checkpoint_dir, rt, title="Student",
                               loss_fn=loss_fn, use_mixup=False, baseline_lines=lines, start_is_model=lp_ft,
                               start_name="the linear probe", meta_extra={"distill": {"weight": weight,
                                                                                      "temperature": temperature}},
                               fresh_start=recipe.head_start == "fresh")
    return {**metrics, "distill_weight": weight, "distill_temperature": temperature,
            "soft_labels_wrong_train": float(wrong), "distilled_train_items": float(len(keys) - wrong if only_right
                                                                                   else len(keys))}


def _keep_best(out_dir: Path, candidates: list[tuple[float, float]], results: list[dict[str, Any]],
               select_by: str) -> dict[str, Any]:
    """Move the best candidate's files to out_dir; the report gains the table of every candidate."""
    import shutil

    def key(i: int) -> tuple[float, ...]:
        r = results[i]
        nll = -float(r["val_nll"]) if np.isfinite(r["val_nll"]) else -np.inf
        return (nll, -i) if select_by == "nll" else (float(r["val_top1"]), nll, -i)

    best = max(range(len(results)), key=key)
    src = out_dir / "candidates" / f"w{candidates[best][0]:g}_T{candidates[best][1]:g}"
    for f in src.iterdir():
        shutil.copy2(f, out_dir / f.name)
    for cand in (out_dir / "candidates").iterdir():  # keep every candidate's report, not its weights
        for f in cand.iterdir():
            if f.suffix in (".safetensors", ".parquet"):
                f.unlink()
    rows = ["", "## Distillation candidates (chosen on val)", "", "| KL weight | T | val top-1 | val NLL | test top-1 | kept |",
            "|---|---|---|---|---|---|"]
    rows += [f"| {w:g} | {temp:g} | {r['val_top1']:.3f} | {r['val_nll']:.3f} | {r['test_top1']:.3f} | "
             f"{'**yes**' if i == best else ''} |" for i, ((w, temp), r) in enumerate(zip(candidates, results))]
    with open(out_dir / "report.md", "a") as fh:
        fh.write("\n".join(rows) + "\n")
    return {**results[best], "n_candidates": float(len(results))}


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
                            title="Fine-tuned student", start_is_model=True, start_name="the distilled student",
                            baseline_lines=["Starts from the distilled student, which is epoch 0: it stays the "
                                            "answer when no fine-tuned epoch beats it on val.", ""])
