"""The drift report: did the data, the image embeddings or the champion's answers shift between a
reference run and the current one?

Sections and their checks (statistics in `stats`, plots and pages in `drift_report`):

- data: class balance and zone distribution (chi-squared, or Jensen-Shannon on large samples), classes
  gone or new (named), image width, height and brightness (Kolmogorov-Smirnov), the share of quarantined files, the mix of
  quarantine reasons, and reasons the reference never had (named);
- embeddings: a domain classifier telling the two runs' photos apart (cross-validated ROC AUC; drift
  above `drift.auc_threshold` when also significant) and an MMD permutation test, on one image
  embedding per photo, with a 2-D PCA projection of both sets;
- predictions: the model's calibrated confidence (KS), its not-conclusive rate, and its per-class
  prediction rates, on each run's val and test items (the same model on both sides, so a change is the
  data's), never on items the model trained on (it is surer of those).

A section drifts when any of its checks does. Its p-value rules are Bonferroni-corrected within the
section (alpha / number of p-value checks), so an unchanged distribution raises a false alarm in at
most `alpha` of sections. Thresholds are config (`drift.*`).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.monitor import stats
from pipeline.monitor.drift_data import (RunSide, comparable_embedders, embedder_of, image_stats, photo_embeddings,
                                         prediction_items, zone_values)
from pipeline.monitor.stats import Check

SECTIONS = ("data", "embeddings", "predictions")


def bonferroni(checks: list[Check], alpha: float) -> list[Check]:
    """Re-judge the checks ruled by a p-value at alpha / m (m = how many of them the section has)."""
    ruled = [c for c in checks if c.rule.startswith("p <") or "and p <" in c.rule]
    m = len(ruled)
    if m <= 1:
        return checks
    a = alpha / m
    out = []
    for c in checks:
        if c not in ruled:
            out.append(c)
        elif c.rule.startswith("p <"):
            out.append(replace(c, rule=f"p < {a:.3g} ({alpha:g}/{m})", threshold=a, drift=bool(c.p_value < a)))
        else:  # the AUC rule: the AUC threshold stays, its significance is corrected
            head = c.rule.split(" and ")[0]
            out.append(replace(c, rule=f"{head} and p < {a:.3g} ({alpha:g}/{m})",
                               drift=bool(c.statistic > c.threshold and c.p_value < a)))
    return out


def data_section(ref: RunSide, cur: RunSide, cfg: Any) -> tuple[list[Check], dict[str, Any]]:
    a, b = ref.photos(), cur.photos()
    if a is None or b is None:
        side = ref if a is None else cur
        return [stats.skipped("data", "photos", f"the {side.label} run has no split or audit artifact")], {}
    args = (cfg.alpha, cfg.large_n)
    checks = [stats.categorical("data", "class balance", a["label"], b["label"], *args, cfg.js_threshold),
              stats.category_set("data", "classes gone or new", a["label"], b["label"])]
    za, zb = zone_values(a), zone_values(b)
    checks.append(stats.categorical("data", "zone distribution", za, zb, *args, cfg.js_threshold) if za and zb
                  else stats.skipped("data", "zone distribution", "no zones in " + ("either run" if not (za or zb)
                                     else f"the {'reference' if not za else 'current'} run"), len(a), len(b)))
    ia, note_a = image_stats(ref, a, cfg.max_items, cfg.seed)
    ib, note_b = image_stats(cur, b, cfg.max_items, cfg.seed)
    for col in ("width", "height"):
        checks.append(stats.numeric("data", f"image {col}", ia[col], ib[col], *args, cfg.ks_threshold, " px"))
    if note_a.endswith("any more") or note_b.endswith("any more"):
        checks.append(stats.skipped("data", "brightness", note_a if note_a.endswith("any more") else note_b,
                                    len(a), len(b)))
    else:
        c = stats.numeric("data", "brightness", ia["brightness"], ib["brightness"], *args, cfg.ks_threshold)
        checks.append(replace(c, detail="; ".join(x for x in (c.detail, note_a, note_b) if x)))
    qa, qb = ref.quarantine(), cur.quarantine()
    extras: dict[str, Any] = {"photos": (a, b), "zones": (za, zb), "images": (ia, ib), "quarantine": (qa, qb)}
    if qa is None or qb is None:
        checks.append(stats.skipped("data", "quarantined files", "an audit artifact is missing"))
        return bonferroni(checks, cfg.alpha), extras
    checks.append(stats.proportion("data", "quarantined files", len(qa), len(qa) + len(a), len(qb), len(qb) + len(b),
                                   *args, cfg.rate_threshold))
    if len(qa) and len(qb):
        checks.append(stats.categorical("data", "quarantine reasons", qa["reason"], qb["reason"], *args,
                                        cfg.js_threshold))
    checks.append(stats.new_categories("data", "new quarantine reasons", qa["reason"], qb["reason"]))
    return bonferroni(checks, cfg.alpha), extras


def photo_groups(ids_a: list[str], ids_b: list[str], phash: dict[str, str], threshold: int) -> tuple[list, list]:
    """Cross-validation groups of both sides' photos: the same photo (content hash) or a near duplicate
    (64-bit pHash within `threshold` bits, e.g. the same photo darkened or resized) share one group, so a
    photo and its twin on the other side are never split between training and test folds."""
    from pipeline.core.components import component_roots
    from pipeline.data.near_duplicates import near_duplicate_pairs

    ids = [*ids_a, *ids_b]
    hashes = np.asarray([int(phash[i], 16) if isinstance(phash.get(i), str) and phash[i] else 0 for i in ids],
                        dtype=np.uint64)
    pairs = near_duplicate_pairs(hashes, threshold)
    known = np.asarray([isinstance(phash.get(i), str) and bool(phash[i]) for i in ids])
    pairs = pairs[known[pairs[:, 0]] & known[pairs[:, 1]]] if len(pairs) else pairs
    first: dict[str, int] = {}
    extra = []  # the same photo (content hash) on both sides
    for k, i in enumerate(ids):
        if i in first:
            extra.append((first[i], k))
        else:
            first[i] = k
    roots = component_roots(len(ids), np.vstack([pairs, np.asarray(extra, dtype=np.int64).reshape(-1, 2)]))
    names = [ids[r] for r in roots]
    return names[: len(ids_a)], names[len(ids_a):]


def embeddings_section(ref: RunSide, cur: RunSide, cfg: Any,
                       near_duplicate_threshold: int = 4) -> tuple[list[Check], dict[str, Any]]:
    ea, eb = photo_embeddings(ref, cfg.max_items, cfg.seed), photo_embeddings(cur, cfg.max_items, cfg.seed)
    for e in (ea, eb):
        if isinstance(e, str):
            return [stats.skipped("embeddings", "image embeddings", e)], {}
    why = comparable_embedders(embedder_of(ref.dir("embeddings")), embedder_of(cur.dir("embeddings")))
    (ids_a, xa), (ids_b, xb) = ea, eb  # type: ignore[misc]
    if why or min(len(ids_a), len(ids_b)) < 4:
        why = why or f"too few photos with embeddings ({len(ids_a)} / {len(ids_b)}; need 4 a side)"
        return [stats.skipped("embeddings", "image embeddings", why, len(ids_a), len(ids_b))], {}
    phash = {}
    for side in (ref, cur):
        photos = side.photos()
        if photos is not None and "phash" in photos.columns:
            phash.update(zip(photos["item_id"], photos["phash"]))
    groups_a, groups_b = photo_groups(ids_a, ids_b, phash, near_duplicate_threshold)
    auc = stats.domain_classifier_auc(xa, xb, groups_a, groups_b, cfg.cv_folds, cfg.seed)
    p_auc = stats.auc_p_value(auc, len(ids_a), len(ids_b))
    dom = Check("embeddings", "domain classifier", f"logistic regression, {cfg.cv_folds}-fold ROC AUC", auc,
                f"AUC > {cfg.auc_threshold:g} and p < {cfg.alpha:g}", cfg.auc_threshold, p_auc, len(ids_a), len(ids_b),
                bool(auc > cfg.auc_threshold and p_auc < cfg.alpha),
                f"AUC {auc:.3f} (0.5: the runs' photos cannot be told apart); {len(set(groups_a) & set(groups_b))} "
                f"photo(s) or twin group(s) on both sides, each kept in one fold")
    mmd2, p_mmd, bw = stats.mmd_permutation_test(xa, xb, cfg.mmd_permutations, cfg.seed)
    mmd = Check("embeddings", "MMD", f"MMD^2, Gaussian kernel, {cfg.mmd_permutations} permutations", mmd2,
                f"p < {cfg.alpha:g}", cfg.alpha, p_mmd, len(ids_a), len(ids_b), bool(p_mmd < cfg.alpha),
                f"bandwidth {bw:.3g} (median distance)")
    shared = len(set(ids_a) & set(ids_b))
    extras = {"xa": xa, "xb": xb, "shared": shared}
    return bonferroni([dom, mmd], cfg.alpha), extras


def predictions_section(ref: RunSide, cur: RunSide, cfg: Any, scorer: Any, train_cfg: Any,
                        no_model: str = "", trained: frozenset = frozenset()) -> tuple[list[Check], dict]:
    """The model's answers on both runs' held-out (val, test) items, also leaving out any item it trained on:
    it is surer of those, and a reference holding its training data would make any new data look shifted."""
    if scorer is None:
        return [stats.skipped("predictions", "model answers", f"no model to score with: {no_model or 'none given'}")], {}
    items = [prediction_items(side, train_cfg, 10**9, cfg.seed) for side in (ref, cur)]
    for it in items:
        if isinstance(it, str):
            return [stats.skipped("predictions", "model answers", it)], {}
    from pipeline.monitor.drift_data import sample

    left_out = [int(f["key"].isin(trained).sum()) for f in items]
    items = [sample(f[~f["key"].isin(trained)].reset_index(drop=True), "key", cfg.max_items, cfg.seed) for f in items]
    if min(len(f) for f in items) == 0:
        return [stats.skipped("predictions", "model answers", f"every item of a run was a training item of the model "
                              f"(left out {left_out[0]} / {left_out[1]})")], {}
    answers = []
    for frame in items:
        s = scorer.score_images(list(frame["path"]))
        ok = [i for i, e in enumerate(s.errors) if e is None]
        p = s.probs[ok]
        answers.append({"confidence": p.max(axis=1), "label": [scorer.class_names[k] for k in p.argmax(axis=1)],
                        "n_unreadable": len(s.errors) - len(ok)})
    (a, b), args = answers, (cfg.alpha, cfg.large_n)
    conf = stats.numeric("predictions", "calibrated confidence", a["confidence"], b["confidence"], *args,
                         cfg.ks_threshold)
    note = f"; items the model trained on left out: {left_out[0]} / {left_out[1]}" if any(left_out) else ""
    checks = [replace(conf, detail=conf.detail + note)]
    t = scorer.threshold
    if t is None:
        checks.append(stats.skipped("predictions", "not-conclusive rate", "the model has no threshold",
                                    len(a["label"]), len(b["label"])))
    else:
        checks.append(stats.proportion("predictions", "not-conclusive rate", int((a["confidence"] < t).sum()),
                                       len(a["confidence"]), int((b["confidence"] < t).sum()), len(b["confidence"]),
                                       *args, cfg.rate_threshold))
    checks.append(stats.categorical("predictions", "predicted class rates", a["label"], b["label"], *args,
                                    cfg.js_threshold))
    return bonferroni(checks, cfg.alpha), {"answers": (a, b), "classes": scorer.class_names, "threshold": t}


def verdicts(checks: list[Check]) -> dict[str, dict[str, Any]]:
    """Per section: drift or not, which checks drifted, and the checks that ran."""
    out = {}
    for section in SECTIONS:
        own = [c for c in checks if c.section == section]
        ran = [c for c in own if not c.skipped]
        drifted = [c.check for c in ran if c.drift]
        status = "drift" if drifted else ("no drift" if ran else "skipped")
        out[section] = {"verdict": status, "drifted": drifted, "n_checks": len(ran),
                        "skipped": [f"{c.check}: {c.skipped}" for c in own if c.skipped]}
    return out


def compare(ref: RunSide, cur: RunSide, cfg: Any, scorer: Any = None, train_cfg: Any = None,
            model: str = "", out_dir: Path | None = None, progress: Any = None,
            near_duplicate_threshold: int = 4, trained: frozenset = frozenset()) -> dict[str, Any]:
    """Every section's checks and verdicts (JSON-serialisable); with out_dir, also drift.json, report.md,
    drift.html and the plots. `near_duplicate_threshold`: pHash bits within which two photos are twins."""
    say = progress or (lambda msg: None)
    say("drift: data")
    d_checks, d_extra = data_section(ref, cur, cfg)
    say("drift: embeddings")
    e_checks, e_extra = embeddings_section(ref, cur, cfg, near_duplicate_threshold)
    say("drift: predictions")
    p_checks, p_extra = predictions_section(ref, cur, cfg, scorer, train_cfg, "" if scorer else model, trained)
    checks = d_checks + e_checks + p_checks
    result = {
        "reference": {"run": ref.run, "dataset_root": str(ref.dataset_root) if ref.dataset_root else None},
        "current": {"run": cur.run, "dataset_root": str(cur.dataset_root) if cur.dataset_root else None},
        "model": model if scorer is not None else f"none ({model or 'not given'})",
        "sections": verdicts(checks),
        "checks": [c.to_dict() for c in checks],
        "shared_photos": e_extra.get("shared"),
        "config": cfg.model_dump(mode="json"),
    }
    if out_dir is not None:
        from pipeline.monitor.drift_report import write_report

        write_report(result, {**d_extra, **e_extra, **p_extra}, Path(out_dir))
    return result


def metrics(result: dict[str, Any]) -> dict[str, Any]:
    """Numbers for MLflow and the run record; strings (drifted sections, reference run) as info."""
    out: dict[str, Any] = {}
    for section, v in result["sections"].items():
        out[f"drift_{section}"] = 1.0 if v["verdict"] == "drift" else 0.0
    out["n_drifted_sections"] = sum(v["verdict"] == "drift" for v in result["sections"].values())
    for c in result["checks"]:
        if c["statistic"] is not None and not c["skipped"]:
            key = c["check"].replace(" ", "_").replace("-", "_")
            out[f"{c['section']}_{key}"] = float(c["statistic"])
    drifted = [s for s, v in result["sections"].items() if v["verdict"] == "drift"]
    out["drifted"] = ", ".join(drifted) or "none"
    out["reference_run"] = str(result["reference"]["run"])
    return out


def empty_result(reason: str, cur_run: str = "") -> dict[str, Any]:
    """What the phase writes when there is nothing to compare (first run, no reference): said plainly."""
    return {"skipped": reason, "reference": None, "current": {"run": cur_run},
            "sections": {s: {"verdict": "skipped", "drifted": [], "n_checks": 0, "skipped": [reason]} for s in SECTIONS},
            "checks": []}

