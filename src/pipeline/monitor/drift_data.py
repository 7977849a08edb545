"""One side of a drift comparison: what a run's artifacts say about its data.

A `RunSide` is built from a run's artifact dirs (audit, split, crops, embeddings; any may be missing)
and its dataset root. It gives the photo table (the split's manifest rows), the file-level quarantine,
image statistics (width and height from the manifest, mean brightness read from a sample of the
photos), one image embedding per photo (the mean of its crops' vectors, the image part only when the
embedder concatenates image and text) and the items the model scores (crops for a crops model,
photos otherwise).

Samples are deterministic and shared: photos are ordered by sha256(seed:item_id), so a photo present
in both runs is in both samples.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def hash_order(keys: list[str], seed: int) -> list[int]:
    """Positions of `keys` in sha256(seed:key) order."""
    digest = [hashlib.sha256(f"{seed}:{k}".encode()).hexdigest() for k in keys]
    return sorted(range(len(keys)), key=lambda i: digest[i])


def sample(frame: pd.DataFrame, key: str, n: int, seed: int) -> pd.DataFrame:
    if len(frame) <= n:
        return frame
    return frame.iloc[hash_order([str(k) for k in frame[key]], seed)[:n]]


@dataclass
class RunSide:
    label: str  # "reference" or "current"
    run: str  # flow run id (or a description)
    dirs: dict[str, Path | None]  # audit, split, crops, embeddings
    dataset_root: Path | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def dir(self, phase: str) -> Path | None:
        d = self.dirs.get(phase)
        return Path(d) if d is not None and Path(d).is_dir() else None

    def photos(self) -> pd.DataFrame | None:
        """The split table (one row per accepted photo), or the audit's manifest."""
        for phase, table in (("split", "split.parquet"), ("audit", "manifest.parquet")):
            d = self.dir(phase)
            if d is not None and (d / table).is_file():
                frame = pd.read_parquet(d / table)
                return frame.drop_duplicates("item_id").reset_index(drop=True)
        return None

    def quarantine(self) -> pd.DataFrame | None:
        """File-level quarantine rows (files that are not in the manifest)."""
        d = self.dir("audit")
        if d is None or not (d / "quarantine.parquet").is_file():
            return None
        q = pd.read_parquet(d / "quarantine.parquet")
        return q[q["level"] == "file"].reset_index(drop=True) if "level" in q.columns else q


def zone_values(photos: pd.DataFrame) -> list[str] | None:
    """Zone per photo (the LabelMe zone, else COCO's largest part), 'none' where unknown; None if no photo has one."""
    for col in ("zone", "zone_name"):
        if col in photos.columns and photos[col].notna().any():
            return ["none" if v is None or pd.isna(v) else str(int(v) if col == "zone" else v) for v in photos[col]]
    return None


def brightness(path: Path) -> float | None:
    """Mean luma (0-255) of an image, read at reduced size; None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (256, 256))
            im.thumbnail((256, 256))
            return float(np.asarray(im.convert("L"), dtype=np.float32).mean())
    except Exception:  # noqa: BLE001 - an unreadable photo is simply not measured
        return None


def image_stats(side: RunSide, photos: pd.DataFrame, max_items: int, seed: int) -> tuple[pd.DataFrame, str]:
    """width, height (every photo) and brightness (a sample read from the dataset root); a note when the
    photos cannot be read."""
    frame = photos[["item_id", "path", "width", "height"]].copy()
    frame["brightness"] = np.nan
    if side.dataset_root is None or not Path(side.dataset_root).is_dir():
        return frame, f"the {side.label} run's photos are not at {side.dataset_root} any more"
    picked = sample(frame, "item_id", max_items, seed)
    values = {i: brightness(Path(side.dataset_root) / p) for i, p in zip(picked["item_id"], picked["path"])}
    frame["brightness"] = [values.get(i, np.nan) for i in frame["item_id"]]
    frame["brightness"] = frame["brightness"].astype(float)
    unread = sum(v is None for v in values.values())
    return frame, (f"{unread} of {len(values)} sampled photos unreadable" if unread else "")


def embedder_of(emb_dir: Path) -> dict[str, Any]:
    return json.loads((emb_dir / "embedder.json").read_text(encoding="utf-8"))


def comparable_embedders(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Why two embeddings artifacts cannot be compared ('' when they can)."""
    keys = ("backend", "dim", "image_dim", "models", "embed_version")
    diff = [k for k in keys if a.get(k) != b.get(k)]
    return f"the runs' embedders differ ({', '.join(diff)})" if diff else ""


def photo_embeddings(side: RunSide, max_items: int, seed: int) -> tuple[list[str], np.ndarray] | str:
    """(item ids, one L2-normalised vector per photo) for a sample of photos, or why there are none."""
    from pipeline.retrieval.embeddings import load_embeddings

    emb, crops = side.dir("embeddings"), side.dir("crops")
    if emb is None or crops is None:
        return f"the {side.label} run has no {'embeddings' if emb is None else 'crops'} artifact"
    ids, x = load_embeddings(emb)
    desc = embedder_of(emb)
    if desc.get("fusion", {}).get("mode") == "concat" and 0 < int(desc.get("image_dim") or 0) < x.shape[1]:
        x = x[:, : int(desc["image_dim"])]  # the image part: the text part is written from the labels
    owner = pd.read_parquet(crops / "crops.parquet", columns=["crop_id", "item_id"])
    item_of = dict(zip(owner["crop_id"], owner["item_id"]))
    items = np.asarray([item_of.get(c, "") for c in ids])
    keep = sorted(set(items) - {""})
    keep = [keep[i] for i in hash_order(keep, seed)[:max_items]]
    out = np.stack([x[items == it].mean(axis=0) for it in keep]) if keep else np.zeros((0, x.shape[1]))
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return keep, out.astype(np.float32)


def prediction_items(side: RunSide, train_cfg: Any, max_items: int, seed: int,
                     splits: tuple[str, ...] = ("val", "test")) -> pd.DataFrame | str:
    """The items the model scores (key, path, item_id): crops or photos as training would read them, of the
    held-out splits only (a photo keeps its split across runs, so these are never what a model of these runs
    trained on; the split is stratified, so their classes mirror the run's)."""
    from pipeline.core.errors import PipelineError
    from pipeline.training.items import build_items

    split = side.dir("split")
    if split is None:
        return f"the {side.label} run has no split artifact"
    cfg = train_cfg.model_copy(update={"max_items": None})
    try:
        data = build_items(split / "split.parquet", cfg, side.dataset_root, side.dir("crops"))
    except PipelineError as exc:
        return f"the {side.label} run's items cannot be read: {exc}"
    held = data.frame[data.frame["split"].isin(splits)]
    frame = held[["key", "path", "item_id"]] if "item_id" in held.columns else \
        held[["key", "path"]].assign(item_id=held["key"])
    return sample(frame.reset_index(drop=True), "key", max_items, seed).reset_index(drop=True)


def side_from_record(store: Any, rec: Any, label: str, phases: tuple[str, ...] = ("audit", "split", "crops",
                                                                                    "embeddings")) -> RunSide:
    """A run record's side: its artifacts that are still complete in the store, its dataset root."""
    dirs: dict[str, Path | None] = {}
    for phase in phases:
        aid = (rec.phases.get(phase) or {}).get("artifact_id")
        dirs[phase] = Path(store.dir_for(phase, aid)) if aid and store.is_complete(phase, aid) else None
    root = rec.run.get("dataset_root")
    return RunSide(label, rec.flow_run_id, dirs, Path(root) if root else None)
