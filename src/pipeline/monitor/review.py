"""The review queue: which photos without labels a person should label first.

Candidates are the inbox's images (any depth, `data.image_extensions`), optionally with the current
run's val/test photos (`review.label_check`: the champion contradicting a label is a likely label
error). Before scoring, a candidate is left out when it is unreadable, already queued by an earlier
review (the ledger, by content hash), already labelled (its hash is a photo of the run) or a near
duplicate of a labelled photo (64-bit pHash within `audit.near_duplicate_threshold`). Each left-out
photo is listed with its reason; none is lost.

The champion scores the rest (`scoring.score_photos`); uncertainty of its calibrated probabilities is
least-confidence (1 - p1), margin (1 - (p1 - p2)) or entropy / log(C); for a label check, 1 - p(label).
Selection (`select`): not-conclusive photos first, then by uncertainty (ties in seeded hash order), in
one greedy pass that takes a photo only if it lies at least `review.min_distance` (cosine, in the
champion's feature space) from every photo taken so far and is no pHash near duplicate of one: the
threshold form of greedy k-center, so the batch is never ten near copies of one photo.
"""
from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

LEDGER = "queued.csv"
LEDGER_FIELDS = ("content_hash", "review", "folder", "queued_at")


@dataclass
class Candidate:
    key: str  # sha256 of the file's bytes
    path: Path  # where the photo is now
    source: str  # inbox-relative path, or the dataset path for a label check
    kind: str = "inbox"  # inbox | label_check
    label: str | None = None  # label_check: the class the run's label maps to
    annotations: str | None = None  # label_check: the manifest's annotations (JSON)
    phash: int | None = None
    probs: np.ndarray | None = None
    feature: np.ndarray | None = None
    windows: list[dict[str, Any]] = field(default_factory=list)
    width: int = 0
    height: int = 0
    uncertainty: float = math.nan
    not_conclusive: bool = False
    why: str = ""


def uncertainty(probs: np.ndarray, kind: str) -> np.ndarray:
    """Per row of calibrated probabilities: least_confidence, margin or normalised entropy, all in [0, 1]."""
    p = np.asarray(probs, dtype=np.float64)
    top = np.sort(p, axis=1)[:, ::-1]
    if kind == "least_confidence":
        return 1.0 - top[:, 0]
    if kind == "margin":
        return 1.0 - (top[:, 0] - (top[:, 1] if p.shape[1] > 1 else 0.0))
    if kind == "entropy":
        h = -(np.where(p > 0, p * np.log(np.clip(p, 1e-300, None)), 0.0)).sum(axis=1)
        return h / math.log(p.shape[1]) if p.shape[1] > 1 else np.zeros(len(p))
    raise ValueError(f"unknown uncertainty {kind!r}; use least_confidence, margin or entropy")


def hamming(a: int, b: int) -> int:
    return (int(a) ^ int(b)).bit_count()


def near_labelled(hashes: Sequence[int], labelled: Sequence[int], threshold: int,
                  block: int = 64) -> list[int | None]:
    """Per candidate hash, the index of a labelled hash within `threshold` bits (None if none)."""
    from pipeline.data.near_duplicates import _popcount

    lab = np.asarray(labelled, dtype=np.uint64)
    out: list[int | None] = [None] * len(hashes)
    if not len(lab):
        return out
    cand = np.asarray(hashes, dtype=np.uint64)
    for s in range(0, len(cand), block):
        dist = _popcount(cand[s:s + block, None] ^ lab[None, :])
        for i, row in enumerate(dist):
            j = int(np.argmin(row))
            if row[j] <= threshold:
                out[s + i] = j
    return out


def _order_key(c: Candidate, seed: int) -> tuple:
    tie = hashlib.sha256(f"{seed}:{c.key}".encode()).hexdigest()
    return (not c.not_conclusive, -c.uncertainty, tie)


def select(cands: list[Candidate], n: int, min_distance: float, phash_threshold: int,
           seed: int = 0) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """(selected in rank order, [(candidate passed over, why)]) — see the module docstring."""
    order = sorted(cands, key=lambda c: _order_key(c, seed))
    chosen: list[Candidate] = []
    feats: list[np.ndarray] = []
    passed: list[tuple[Candidate, str]] = []
    for rank_u, c in enumerate(order, start=1):
        if len(chosen) >= n:
            passed.append((c, "the queue was full"))
            continue
        why_not = ""
        if feats and c.feature is not None:
            dist = 1.0 - np.stack(feats) @ c.feature
            j = int(np.argmin(dist))
            if dist[j] < min_distance:
                why_not = f"cosine distance {dist[j]:.3f} < {min_distance:g} to queued #{j + 1} ({chosen[j].source})"
        if not why_not and c.phash is not None:
            dup = next((k for k, s in enumerate(chosen) if s.phash is not None
                        and hamming(s.phash, c.phash) <= phash_threshold), None)
            if dup is not None:
                why_not = f"pHash near duplicate of queued #{dup + 1} ({chosen[dup].source})"
        if why_not:
            passed.append((c, why_not))
            continue
        nearest = ""
        if feats and c.feature is not None:
            nearest = f"; nearest queued photo at cosine distance {float(np.min(1.0 - np.stack(feats) @ c.feature)):.3f}"
        c.why = f"{c.why}; rank {rank_u} of {len(order)} by uncertainty{nearest}"
        chosen.append(c)
        if c.feature is not None:
            feats.append(c.feature)
    return chosen, passed


def describe(c: Candidate, class_names: list[str], threshold: float | None, kind: str) -> str:
    """Why a scored candidate is a candidate: not conclusive, its uncertainty, or a contradicted label."""
    p = c.probs
    k = int(np.argmax(p))
    parts = []
    if c.kind == "label_check":
        parts.append(f"label check: labelled {c.label}, the model says {class_names[k]} ({p[k]:.2f}); "
                     f"1 - p(label) = {c.uncertainty:.3f}")
    if c.not_conclusive:
        parts.append(f"not conclusive ({p[k]:.3f} < threshold {threshold:.3f})")
    if c.kind != "label_check":
        parts.append(f"{kind.replace('_', '-')} {c.uncertainty:.3f}")
    if c.windows:
        deciding = next((w for w in c.windows if w.get("deciding")), None)
        if deciding:
            parts.append(f"deciding window {deciding['box']} of {len(c.windows)}")
    return "; ".join(parts)


def apply_scores(cands: list[Candidate], scores: list[Any], class_names: list[str], threshold: float | None,
                 kind: str) -> list[tuple[Candidate, str]]:
    """Fill probs / feature / uncertainty; returns the unreadable ones with their error."""
    bad = []
    for c, s in zip(cands, scores):
        if s.probs is None:
            bad.append((c, f"unreadable: {s.error}"))
            continue
        c.probs, c.feature, c.windows = s.probs, s.feature, s.windows
        k = int(np.argmax(c.probs))
        c.not_conclusive = threshold is not None and float(c.probs[k]) < threshold
        if c.kind == "label_check" and c.label in class_names:
            c.uncertainty = 1.0 - float(c.probs[class_names.index(c.label)])
        else:
            c.uncertainty = float(uncertainty(c.probs[None, :], kind)[0])
        c.why = describe(c, class_names, threshold, kind)
    return bad


# -- the ledger of queued photos ----------------------------------------------------------------
def read_ledger(root: Path) -> set[str]:
    path = Path(root) / LEDGER
    if not path.is_file():
        return set()
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["content_hash"] for row in csv.DictReader(fh) if row.get("content_hash")}


def ledger_fingerprint(root: Path) -> str:
    return hashlib.sha256("\n".join(sorted(read_ledger(root))).encode()).hexdigest()


def append_ledger(root: Path, keys: Sequence[str], review: str, folder: str) -> None:
    path = Path(root) / LEDGER
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with path.open("a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=LEDGER_FIELDS)
        if new:
            w.writeheader()
        w.writerows({"content_hash": k, "review": review, "folder": folder, "queued_at": now} for k in keys)
