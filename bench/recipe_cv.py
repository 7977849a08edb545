"""The training recipe against the plain fine-tune, cross-validated over photo groups.

    python bench/recipe_cv.py --workdir DIR [--folds 4]
        [--models plain,probe,teacher,student,student_no_teacher,finetune] [--set k=v ...] [--seeds 1]
        [--first-seed 0] [--scratch DIR] [--json OUT]

One held-out split of a few hundred items cannot rank two recipes: on car-damage-coco the test split
holds 22 crops from 7 photos, one crop is 4.5 points, and the intervals of every model overlap. This
bench re-uses the items (whole images or crops) and the photo groups of a flow run in DIR
(`bench/real_data.py`, `pipeline run train` or `pipeline run retrieval --workdir DIR`: its `split` and,
for a crops-trained dataset, `crops` artifacts; each crop follows its photo into the photo's fold) and deals the groups into K folds; fold k is the test split, a third of
fold k+1 the val split, the rest train. On every fold it trains, each from the same items and seed:

- `plain`: the bare loop of `bench/real_data.py` (the student's backbone, a fresh timm head, AdamW
  lr 1e-3, cosine, random-resized crop + flip, batch 32, the student phase's epoch count);
- `probe`: the teacher's frozen-backbone linear probe (`teacher` phase's baseline; no extra cost);
- `teacher`: the teacher phase (linear probe, then LP-FT) exactly as the flow runs it;
- `student`: soft labels from that teacher, then the distilled student (the flow's student phase);
- `student_no_teacher`: the student phase without soft labels (its LP-FT recipe, the student's
  backbone: the like-for-like rival of `plain`);
- `finetune`: the distilled student fine-tuned (the flow's finetune phase).

Every test item is scored once over the K folds, so each figure rests on the whole dataset; the table
gives per model the pooled top-1 with its 95% bootstrap interval over photos, the per-fold figures, and
the paired difference to `plain` over the same items (beyond its interval or not). With `--seeds N`
every fold is trained with seeds first-seed .. first-seed+N-1 and each item's score is its mean over seeds (seed spread per
model printed too). A shortcut to the regime of the held-out checks: `--set train.epochs=4 --set
train.image_size=160` (explicit epochs, the step budget overridden).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODELS = ("plain", "probe", "teacher", "student", "student_no_teacher", "finetune")


def flow_inputs(workdir: Path, dataset: Path | None = None) -> tuple[Path, Path | None, Path]:
    """(split.parquet, crops dir or None, dataset root) of the flow run in `workdir` (train, retrieval or
    factory: any that made the split, and the crops for a crops-trained dataset)."""
    runs = sorted((workdir / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    arts = workdir / "artifacts"
    splits = sorted((arts / "split").glob("*/split.parquet"), key=lambda p: p.stat().st_mtime)
    if not splits:
        raise SystemExit(f"{workdir}: no split artifact; run the train flow there first (bench/real_data.py)")
    crops = sorted((arts / "crops").glob("*/"), key=lambda p: p.stat().st_mtime)
    root = dataset
    for r in reversed(runs if root is None else []):
        data = json.loads(r.read_text())
        root = (data.get("run") or {}).get("dataset_root")
        if root:
            break
    if root is None:
        raise SystemExit(f"{workdir}: cannot tell the dataset root from runs/*.json; pass --dataset")
    return splits[-1], (crops[-1] if crops else None), Path(root)


def folds_of(split: Any, k: int, seed: int = 0) -> list[Any]:
    """K copies of the split frame with `split` reassigned: fold i test, a third of fold i+1 val, the rest train."""
    groups = np.array(sorted(split["group_id"].astype(str).unique()))
    if len(groups) < k:
        raise SystemExit(f"only {len(groups)} photo groups: fewer than --folds {k}")
    np.random.default_rng(seed).shuffle(groups)
    parts = np.array_split(groups, k)
    out = []
    for i in range(k):
        test, nxt = set(parts[i]), parts[(i + 1) % k]
        val = set(nxt[: max(1, len(nxt) // 3)])
        g = split["group_id"].astype(str)
        out.append(split.assign(split=["test" if x in test else "val" if x in val else "train" for x in g]))
    return out


def fold_crops(crops: Path, frame: Any, out: Path) -> Path:
    """A crops dir for one fold: the crops table with each crop's split taken from its photo's fold (the
    crops phase records the split it was cut under), the crop images linked, not copied."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    table = pd.read_parquet(crops / "crops.parquet")
    fold = dict(zip(frame["item_id"].astype(str), frame["split"]))
    table["split"] = [fold.get(str(i), s) for i, s in zip(table["item_id"], table["split"])]
    table.to_parquet(out / "crops.parquet", index=False)
    for entry in crops.iterdir():
        link = out / entry.name
        if entry.name != "crops.parquet" and not link.exists():
            link.symlink_to(entry.resolve())
    return out


def run_fold(split_path: Path, crops: Path | None, root: Path, sets: list[str], seed: int, models: list[str],
             scratch: Path) -> dict[str, Any]:
    from bench.real_data import plain_finetune
    from pipeline.core.config import load_config
    from pipeline.training.budget import plan
    from pipeline.training.compare import correctness
    from pipeline.training.distill import run_finetune, run_soft_labels, run_student
    from pipeline.training.items import build_items
    from pipeline.training.teacher import PROBE_DIR, run_teacher

    cfg = load_config(None, [*sets, f"train.seed={seed}"])
    res: dict[str, Any] = {"scores": {}, "wall": {}}

    def scores(model_dir: Path) -> dict[str, tuple[float, str]]:
        return {k: (float(ok), item) for k, (ok, item) in (correctness(model_dir) or {}).items()}

    def phase(name: str, fn: Any, **kw: Any) -> Path:
        """Run one phase function from scratch in scratch/<name> (kw: its own inputs, e.g. checkpoint_dir)."""
        out = scratch / name
        for old in (out, kw.get("checkpoint_dir")):
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        out.mkdir(parents=True)
        t0 = time.perf_counter()
        fn(split_path, cfg=cfg, out_dir=out, dataset_root=root, crops_dir=crops, **kw)
        res["wall"][name] = time.perf_counter() - t0
        return out

    def model(name: str, fn: Any, **kw: Any) -> Path:
        out = phase(name, fn, checkpoint_dir=scratch / f"ck_{name}", **kw)
        res["scores"][name] = scores(out)
        return out

    distilled = {"student", "finetune"} & set(models)
    if {"teacher", "probe"} & set(models) or distilled:
        teacher = model("teacher", run_teacher)
        if (probe := scores(teacher / PROBE_DIR)):
            res["scores"]["probe"] = probe
    if distilled:
        soft = phase("soft_labels", run_soft_labels, teacher_dirs={"teacher": teacher})
        student = model("student", run_student, soft_dir=soft)
        if "finetune" in models:
            model("finetune", run_finetune, student_dir=student)
    if "student_no_teacher" in models:
        model("student_no_teacher", run_student, soft_dir=None)
    if "plain" in models:
        data = build_items(split_path, cfg.train, root, crops)
        size = cfg.student.image_size or cfg.train.image_size
        epochs = plan(len(data.part("train")), cfg.student.batch_size or cfg.train.batch_size, cfg.student,
                      cfg.train).epochs
        p = plain_finetune(split_path, crops, root, cfg, size, epochs, seed)
        res["wall"]["plain"] = p["wall_s"]
        res["scores"]["plain"] = {k: (c, g) for k, c, g in zip(p["keys"], p["correct"], p["groups"])}
    return res


def summarise(per_item: dict[str, dict[str, list[float]]], groups: dict[str, str], fold_of: dict[str, int],
              k: int) -> list[str]:
    from pipeline.core.stats import mean_ci, paired_difference, verdict

    lines = [f"{'model':<20} {'pooled test top-1 [95% CI over photos]':<44} per fold"]
    for name, items in per_item.items():
        keys = sorted(items)
        vals = np.array([np.mean(items[x]) for x in keys])
        est = mean_ci(vals, [groups[x] for x in keys])
        folds = [np.mean([np.mean(items[x]) for x in keys if fold_of[x] == i] or [np.nan]) for i in range(k)]
        lines.append(f"{name:<20} {est.text():<44} "
                     + " ".join(f"{f:.3f}" for f in folds))
    if "plain" in per_item and len(per_item) > 1:
        lines.append("")
        lines.append("paired with the plain fine-tune over the items both scored (bootstrap over photos):")
        for name, items in per_item.items():
            if name == "plain":
                continue
            keys = sorted(set(items) & set(per_item["plain"]))
            a = [np.mean(items[x]) for x in keys]
            b = [np.mean(per_item["plain"][x]) for x in keys]
            d = paired_difference(a, b, [groups[x] for x in keys])
            lines.append(f"  {verdict(d, (name, 'plain'))}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, type=Path,
                    help="work dir of a train (or retrieval) flow run: its split and crops")
    ap.add_argument("--dataset", type=Path, help="dataset root (default: from the run's summary)")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--scratch", type=Path, default=Path("bench-work/recipe_cv"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    import pandas as pd

    split_path, crops, root = flow_inputs(a.workdir, a.dataset)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown --models {unknown}; choose from {list(MODELS)}")
    split = pd.read_parquet(split_path)
    # intervals resample photo groups (a JSONL `group`, a LabelMe photo), not single images or crops
    group_of = dict(zip(split["item_id"].astype(str), split["group_id"].astype(str)))
    per_item: dict[str, dict[str, list[float]]] = {}
    groups: dict[str, str] = {}
    fold_of: dict[str, int] = {}
    walls: dict[str, list[float]] = {}
    seed_scores: dict[tuple[str, int], list[float]] = {}
    seeds = range(a.first_seed, a.first_seed + a.seeds)
    for i, frame in enumerate(folds_of(split, a.folds)):
        path = a.scratch / f"fold{i}" / "split.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path)
        fcrops = None if crops is None else fold_crops(crops, frame, a.scratch / f"fold{i}" / "crops")
        for seed in seeds:
            res = run_fold(path, fcrops, root, a.set, seed, models, a.scratch / f"fold{i}")
            for name, scores in res["scores"].items():
                for key, (c, item) in scores.items():
                    per_item.setdefault(name, {}).setdefault(key, []).append(c)
                    groups[key], fold_of[key] = group_of.get(item, item), i
                seed_scores.setdefault((name, seed), []).extend(c for c, _ in scores.values())
            for name, w in res["wall"].items():
                walls.setdefault(name, []).append(w)
            done = {n: f"{np.mean([c for c, _ in s.values()]):.3f}" for n, s in res["scores"].items()}
            n_test = len(next(iter(res["scores"].values()))) if res["scores"] else 0
            print(f"fold {i} seed {seed}: {n_test} test items: {done}", flush=True)
    order = [m for m in MODELS if m in per_item]
    per_item = {m: per_item[m] for m in order}
    print(f"\n== {a.folds}-fold by photo group: {len(groups)} test items, {len(set(groups.values()))} photos; "
          f"{' '.join(a.set) or 'default config'} ==")
    print("\n".join(summarise(per_item, groups, fold_of, a.folds)))
    if a.seeds > 1:
        print("\nper seed (pooled top-1):")
        for m in order:
            vals = [float(np.mean(seed_scores[m, s])) for s in seeds if (m, s) in seed_scores]
            print(f"  {m}: " + " ".join(f"{v:.3f}" for v in vals) + f" (spread {max(vals) - min(vals):.3f})")
    print("\nwall s per fold (mean): " + ", ".join(f"{n} {np.mean(w):.0f}" for n, w in walls.items()))
    if a.json:
        a.json.write_text(json.dumps({"per_item": per_item, "groups": groups, "fold_of": fold_of, "walls": walls,
                                      "sets": a.set, "folds": a.folds, "seeds": a.seeds}, indent=1))


if __name__ == "__main__":
    main()
