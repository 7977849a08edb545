"""The nightly's embedding head: trained on the frozen image features, adopted only when it earns it.

The `embedding_head` phase runs the embedding study's cheapest useful cell (a head on frozen features,
`training.embedding_head`) on the image part of the vectors the embeddings phase wrote, and decides
whether search should use it. Test photos are never used: not to train, not to choose, not to decide.

1. Development crops: those of the train and val splits. Their photos' groups (vehicle, near duplicate)
   are dealt into `folds` folds (seeded).
2. For each loss of `embed_head.losses`, one head per fold is trained on the other folds' crops; every
   development crop is then a query once, ranked by the head that never saw its photo, image-only,
   against every development crop outside its own photo and group. The frozen features rank the same
   queries against the same references.
3. The score is the users' bar: coverage (the share of same-damage-state crops among the top k),
   balanced over damaged and clean queries, with a bootstrap interval over photos; the gain of a head
   is the paired difference with the frozen features on the same draws.
4. The loss with the best score wins. Its head is adopted when the lower end of its gain's interval is
   above `embed_head.min_gain` (0: better by more than its interval); otherwise search keeps the frozen
   features and the report says why (as it does when there is nothing to learn from: one class, too
   few photos, a fusion without a separable image part).
5. The head that serves is trained on the train split's crops only, with the winning loss, so val and
   test crops stay unseen by it (validation's queries).

Outputs: decision.json (adopted, reason, the loss, every row's figures with intervals and n, the
protocol), head/ (the served head, whenever one was trained: validation shows its row even when it was
refused), report.md.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.retrieval.stats import Estimate, PhotoBootstrap

DECISION = "decision.json"
HEAD_DIR = "head"


def image_part(x: np.ndarray, embedder: dict[str, Any]) -> np.ndarray | None:
    """The L2-normalised image part of fused vectors (None when the fusion mixes image and text into one)."""
    from pipeline.retrieval.head import l2n

    dims = embedder.get("image_dim")
    if embedder.get("fusion", {}).get("mode") != "concat" or not dims:
        return None
    return l2n(np.asarray(x, dtype=np.float32)[:, : int(dims)])


def topk_state_precision(z: np.ndarray, queries: np.ndarray, refs: np.ndarray, state: np.ndarray, item: np.ndarray,
                         group: np.ndarray, k: int) -> np.ndarray:
    """Per query (rows of z): the share of its top k allowed references (rows `refs`, own photo and group
    excluded) with the query's damage state."""
    out = np.full(len(queries), np.nan)
    rz = z[refs]
    chunk = max(1, 2**22 // max(len(refs), 1))
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        sims = z[q] @ rz.T
        mask = ((item[refs][None, :] == item[q][:, None]) & (item[q][:, None] != "")) | \
               ((group[refs][None, :] == group[q][:, None]) & (group[q][:, None] != "")) | (refs[None, :] == q[:, None])
        sims = np.where(mask, -np.inf, sims)
        allowed = (~mask).sum(axis=1)
        kk = min(k, len(refs))
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk] if kk < len(refs) else np.argsort(-sims, axis=1)
        top_sims = np.take_along_axis(sims, top, axis=1)
        hit = (state[refs][top] == state[q][:, None]) & np.isfinite(top_sims)
        out[s:s + chunk] = np.where(allowed > 0, hit.sum(axis=1) / np.maximum(np.minimum(k, allowed), 1), np.nan)
    return out


def fold_of(keys: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold per row: the rows' keys (photo groups) dealt into `folds` folds in a seeded order."""
    from pipeline.core.hashing import sha256_bytes

    uniq = sorted(set(keys.tolist()), key=lambda g: sha256_bytes(f"{seed}:{g}".encode()))
    at = {g: i % folds for i, g in enumerate(uniq)}
    return np.array([at[g] for g in keys], dtype=np.int64)


def _steps(n_train: int, cfg: Any) -> int:
    """Optimizer steps: cfg.epochs passes over the training crops in batches of cfg.batch_size, within
    [cfg.min_steps, cfg.max_steps]."""
    return int(np.clip(cfg.epochs * max(1, n_train // cfg.batch_size), cfg.min_steps, cfg.max_steps))


def train_head(x: np.ndarray, labels: np.ndarray, loss: str, cfg: Any, study: Any) -> Any:
    from pipeline.retrieval.head import train_feature_head

    return train_feature_head(x, labels, loss, study, dim=cfg.dim, steps=_steps(len(x), cfg), lr=cfg.lr,
                              batch_size=cfg.batch_size, seed=cfg.seed)


def cross_validate(x: np.ndarray, labels: np.ndarray, state: np.ndarray, item: np.ndarray, group: np.ndarray,
                   losses: list[str], cfg: Any, study: Any, k: int) -> dict[str, np.ndarray]:
    """Per-query top-k state precision of the development crops (nan for crops not sampled as queries:
    at most cfg.max_queries, seeded): 'frozen' and one array per loss (each crop ranked by the head of the
    fold that did not see its photo), against every development crop."""
    keys = np.where(group != "", group, item)
    folds = fold_of(keys, min(cfg.folds, len(set(keys.tolist()))), cfg.seed)
    rows = np.arange(len(x))
    asked = np.zeros(len(x), dtype=bool)
    asked[rows if len(x) <= cfg.max_queries else
          np.random.default_rng(cfg.seed).choice(len(x), cfg.max_queries, replace=False)] = True
    out = {"frozen": np.full(len(x), np.nan)}
    out["frozen"][asked] = topk_state_precision(x, np.flatnonzero(asked), rows, state, item, group, k)
    for loss in losses:
        vals = np.full(len(x), np.nan)
        for f in np.unique(folds):
            train = folds != f
            if len(set(labels[train].tolist())) < 2:
                continue
            z = train_head(x[train], labels[train], loss, cfg, study).project(x)
            q = np.flatnonzero((folds == f) & asked)
            vals[q] = topk_state_precision(z, q, rows, state, item, group, k)
        out[loss] = vals
    return out


def _row(name: str, vals: np.ndarray, state: np.ndarray, boot: PhotoBootstrap) -> tuple[dict[str, Any], np.ndarray]:
    bal, draws = boot.balanced(vals, state)
    row = {"row": name, "balanced_coverage": bal, "coverage_damaged": boot.mean(vals, state),
           "coverage_clean": boot.mean(vals, ~state)}
    return row, draws


def decide(cv: dict[str, np.ndarray], state: np.ndarray, photos: np.ndarray, cfg: Any) -> dict[str, Any]:
    """Rows with intervals, the winning loss, its paired gain over frozen, and whether it is adopted."""
    boot = PhotoBootstrap(photos, n=cfg.bootstrap, seed=cfg.seed, confidence=cfg.confidence)
    frozen, frozen_draws = _row("frozen", cv["frozen"], state, boot)
    rows, draws = [frozen], {}
    for loss, vals in cv.items():
        if loss == "frozen":
            continue
        row, draws[loss] = _row(f"head ({loss})", vals, state, boot)
        rows.append(row)
    heads = [r for r in rows[1:] if np.isfinite(r["balanced_coverage"].value)]
    if not heads:
        return {"rows": rows, "loss": None, "gain": None, "adopted": False,
                "reason": "no head could be trained (a fold held fewer than 2 classes)"}
    best = max(heads, key=lambda r: r["balanced_coverage"].value)
    loss = best["row"][len("head ("):-1]
    point = best["balanced_coverage"].value - frozen["balanced_coverage"].value
    gain = boot.difference(draws[loss], frozen_draws, point, best["balanced_coverage"].n_queries)
    adopted = bool(np.isfinite(gain.lo) and gain.lo > cfg.min_gain)
    verdict = "beats" if adopted else "does not beat"
    reason = f"the {loss} head {verdict} the frozen features by more than its interval"  # figures: explain()
    return {"rows": rows, "loss": loss, "gain": gain, "adopted": adopted, "reason": reason}


def explain(decision: dict[str, Any]) -> str:
    """The decision's reason with its figures (decision.json keeps them as numbers, the reason without)."""
    gain, rows = decision.get("gain"), decision.get("rows") or []
    if not gain or len(rows) < 2:
        return decision["reason"]
    val = (lambda e: e.value) if isinstance(gain, Estimate) else (lambda e: e["value"])  # noqa: E731
    g = gain if isinstance(gain, Estimate) else Estimate(**gain)
    best = next(r for r in rows if r["row"] == f"head ({decision['loss']})")
    return (f"{decision['reason']}: balanced coverage {val(best['balanced_coverage']):.3f} vs "
            f"{val(rows[0]['balanced_coverage']):.3f}, gain {g.value:+.3f} [{g.lo:+.3f}, {g.hi:+.3f}] over "
            f"{g.n_photos} photo groups")


def crop_table(ids: list[str], crops_dir: Path, groups: dict[str, str]) -> dict[str, np.ndarray]:
    """Per embedding row (crop_id order): label (damage type or clean), state, photo, group, split."""
    import pyarrow.parquet as pq

    from pipeline.retrieval.neighbours import damage_label

    cols = ["crop_id", "item_id", "split", "has_damage", "defects", "damage_types"]
    rows = {r["crop_id"]: r for r in pq.read_table(Path(crops_dir) / "crops.parquet", columns=cols).to_pylist()}
    rs = [rows[c] for c in ids]
    item = np.array([str(r["item_id"] or "") for r in rs], dtype=object)
    return {"label": np.array([damage_label(r) for r in rs], dtype=object),
            "state": np.array([bool(r["has_damage"]) for r in rs]),
            "item": item, "group": np.array([str(groups.get(i) or "") for i in item], dtype=object),
            "split": np.array([str(r["split"]) for r in rs], dtype=object)}


def _refusal(t: dict[str, np.ndarray], dev: np.ndarray, train: np.ndarray, img: np.ndarray | None,
             cfg: Any) -> str | None:
    """Why no head can be trained or judged here (None when one can)."""
    if img is None:
        return ("the fused vectors have no separable image part (clip 'average'/'weighted' fusion): an image query "
                "cannot be scored image-only, so no head is judged")
    classes = sorted(set(t["label"][train].tolist()))
    if len(classes) < 2:
        return f"the train crops hold one class only ({', '.join(classes) or 'none'}): nothing for a head to learn"
    keys = np.where(t["group"][dev] != "", t["group"][dev], t["item"][dev])
    n = len(set(keys.tolist()))
    if n < cfg.min_photos:
        return (f"{n} photo groups in train + val, fewer than embed_head.min_photos = {cfg.min_photos}: too few to "
                "judge a head with an interval")
    return None


def _plain(obj: Any) -> Any:
    if isinstance(obj, Estimate):
        return {"value": obj.value, "lo": obj.lo, "hi": obj.hi, "n_queries": obj.n_queries, "n_photos": obj.n_photos}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def run_embedding_head(emb_dir: Path, crops_dir: Path, out_dir: Path, cfg: Any, study: Any, *, k: int = 5,
                       groups: dict[str, str] | None = None) -> dict[str, Any]:
    """The phase (see the module docstring): decision.json, head/ and report.md in out_dir; returns metrics."""
    from pipeline.retrieval.embeddings import load_embeddings

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    embedder = json.loads((Path(emb_dir) / "embedder.json").read_text(encoding="utf-8"))
    ids, x = load_embeddings(Path(emb_dir))
    img = image_part(x, embedder)
    t = crop_table(ids, Path(crops_dir), groups or {})
    dev = np.isin(t["split"], ["train", "val"])
    train = t["split"] == "train"
    decision: dict[str, Any] = {"rows": [], "loss": None, "gain": None, "adopted": False}
    decision["reason"] = _refusal(t, dev, train, img, cfg)
    protocol = {"folds": cfg.folds, "k": k, "max_queries": cfg.max_queries, "losses": list(cfg.losses),
                "min_gain": cfg.min_gain,
                "bootstrap": cfg.bootstrap, "confidence": cfg.confidence, "seed": cfg.seed,
                "n_development_crops": int(dev.sum()), "n_train_crops": int(train.sum()),
                "image_dim": int(img.shape[1]) if img is not None else None}
    if decision["reason"] is None:
        rows = np.flatnonzero(dev)
        sub = {key: v[rows] for key, v in t.items()}
        cv = cross_validate(img[rows], sub["label"], sub["state"], sub["item"], sub["group"], list(cfg.losses), cfg,
                            study, k)
        photos = np.where(sub["group"] != "", sub["group"], sub["item"])
        decision = decide(cv, sub["state"], photos, cfg)
    if cfg.adopt == "always" and decision["loss"]:
        decision["reason"] = f"embed_head.adopt = always (forced); on its own it would be: {decision['reason']}"
        decision["adopted"] = True
    if decision["loss"]:
        head = train_head(img[train], t["label"][train], decision["loss"], cfg, study)
        head.meta.update({"adopted": decision["adopted"], "embeddings_image_dim": int(img.shape[1])})
        head.save(out_dir / HEAD_DIR)
    content = {"adopted": decision["adopted"], "reason": decision["reason"], "loss": decision["loss"],
               "rows": decision["rows"], "gain": decision["gain"], "protocol": protocol}
    (out_dir / DECISION).write_text(json.dumps(_plain(content), indent=2, sort_keys=True, default=float) + "\n",
                                    encoding="utf-8")
    (out_dir / "report.md").write_text(_report(content), encoding="utf-8")
    metrics: dict[str, Any] = {"adopted": float(decision["adopted"]), "reason": explain(content),
                               "loss": decision["loss"] or "none"}
    for r in decision["rows"]:
        tag = "frozen" if r["row"] == "frozen" else r["row"][len("head ("):-1]
        for key in ("balanced_coverage", "coverage_damaged", "coverage_clean"):
            metrics[f"cv_{tag}_{key}"] = r[key].value
    if decision["gain"] is not None:
        metrics.update({"gain": decision["gain"].value, "gain_lo": decision["gain"].lo, "gain_hi": decision["gain"].hi,
                        "n_cv_queries": float(decision["gain"].n_queries), "n_cv_photos": float(decision["gain"].n_photos)})
    return metrics


def _report(c: dict[str, Any]) -> str:
    p = c["protocol"]
    verdict = "**adopted**" if c["adopted"] else "**not adopted** (search keeps the frozen features)"
    lines = ["# Embedding head (the nightly's adoption)", "",
             f"Head on frozen image features: {verdict}. Why: {explain(c)}.", "",
             f"Protocol: {p['folds']}-fold cross-validation over the photo groups of the train and val crops "
             f"({p['n_development_crops']} crops; test photos never used); each crop is a query once, ranked image-only "
             f"by the head of the fold that did not see its photo, against every development crop outside its photo "
             f"and group; top {p['k']}. Intervals: {p['confidence']:.0%} bootstrap over photos ({p['bootstrap']} draws, "
             f"seed {p['seed']}). The served head is trained on the {p['n_train_crops']} train crops only.", ""]
    if c["rows"]:
        lines += ["| row | balanced coverage | damaged coverage | clean coverage |", "|---|---|---|---|"]
        lines += [f"| {r['row']} | {r['balanced_coverage'].text()} | {r['coverage_damaged'].text()} | "
                  f"{r['coverage_clean'].text()} |" for r in c["rows"]]
    if c["gain"] is not None:
        g = c["gain"]
        lines += ["", f"Gain of the {c['loss']} head over the frozen features (paired, same draws): {g.value:+.3f} "
                  f"[{g.lo:+.3f}, {g.hi:+.3f}]; adopted when the lower end is above {p['min_gain']:g}."]
    return "\n".join(lines) + "\n"


def read_decision(head_phase_dir: Path | None) -> dict[str, Any] | None:
    """decision.json of an embedding_head artifact (None without one)."""
    if head_phase_dir is None or not (Path(head_phase_dir) / DECISION).is_file():
        return None
    return json.loads((Path(head_phase_dir) / DECISION).read_text(encoding="utf-8"))


def load_head(head_phase_dir: Path | None) -> Any:
    """The FeatureHead an embedding_head artifact trained (adopted or not), or None."""
    from pipeline.retrieval.head import FeatureHead

    if head_phase_dir is None or not (Path(head_phase_dir) / HEAD_DIR).is_dir():
        return None
    return FeatureHead.load(Path(head_phase_dir) / HEAD_DIR)


def project_fused(x: np.ndarray, embedder: dict[str, Any], head: Any, artifact_id: str | None) -> tuple[np.ndarray, dict]:
    """Fused vectors with their image part replaced by the head's output, re-fused the embedder's way
    (l2n([alpha * head(image), beta * text])), and the embedder description that says so (`projection`)."""
    from pipeline.retrieval.head import l2n

    d = int(embedder["image_dim"])
    a, b = float(embedder["fusion"]["alpha"]), float(embedder["fusion"]["beta"])
    img, txt = l2n(x[:, :d]), l2n(x[:, d:])
    out = l2n(np.concatenate([a * head.project(img), b * txt], axis=1))
    meta = {**embedder, "image_dim": head.dim, "dim": head.dim + int(embedder["text_dim"]),
            "projection": {"phase": "embedding_head", "artifact_id": artifact_id, "path": HEAD_DIR,
                           "loss": head.meta.get("loss"), "in_dim": head.in_dim, "dim": head.dim}}
    return out, meta


def searched_vectors(emb_dir: Path, head_phase_dir: Path | None) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """(crop ids, the vectors search uses, their embedder description): the embeddings, with the head's
    projection when the embedding_head artifact adopted one."""
    from pipeline.retrieval.embeddings import load_embeddings
    from pipeline.retrieval.lineage import artifact_id_of

    ids, x = load_embeddings(Path(emb_dir))
    embedder = json.loads((Path(emb_dir) / "embedder.json").read_text(encoding="utf-8"))
    decision = read_decision(head_phase_dir)
    if decision and decision.get("adopted"):
        x, embedder = project_fused(x, embedder, load_head(head_phase_dir), artifact_id_of(Path(head_phase_dir)))
    return ids, x, embedder
