"""Training items from the split (whole images) or from the crops artifact, as a torch Dataset.

`build_items` returns a `TrainingData`: one row per usable item (key = item_id for images,
crop_id for crops; absolute path; `target` = the class name; split; every split/crop column,
so regional subsets and per-region metrics can use region / zone_area / zone ...), the class list
(sorted targets of the train split, fixed from train and stored with every model), and the
dropped items with a reason (no target, a class absent from train, outside the subset).

Defaults (`train.source` / `train.target`): crops for the car-damage formats (labelme, coco)
when a crops artifact is given, with target `damage_class` = the type of the crop's largest
defect (by area) or `clean`; whole images otherwise, with target `label`. Any scalar column of
the split or crops table can be the target. `train.max_items` keeps at most that many items per
split, taken round-robin over the classes in sha256(seed:key) order (so every class keeps items
while it can, and the subset does not depend on row order).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from pipeline.core.config import RegionSpec, TrainConfig
from pipeline.core.errors import ConfigError, DatasetError

CLEAN = "clean"
DAMAGE_CLASS = "damage_class"
CROP_FORMATS = ("labelme", "coco")  # formats whose default source is crops
MAX_PIXELS = 89_478_485
SPLITS = ("train", "val", "test")


@dataclass
class TrainingData:
    frame: pd.DataFrame  # key, path, target, split + the source columns
    class_names: list[str]
    source: str
    target: str
    dropped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["key", "split", "reason"]))

    def part(self, split: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split].reset_index(drop=True)

    def labels(self, frame: pd.DataFrame) -> list[int]:
        index = {c: i for i, c in enumerate(self.class_names)}
        return [index[t] for t in frame["target"]]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: n}}."""
        out: dict[str, dict[str, int]] = {}
        for (split, target), n in self.frame.groupby(["split", "target"]).size().items():
            out.setdefault(str(split), {})[str(target)] = int(n)
        return out


def photo_groups(frame: Any) -> list[str]:
    """The resampling unit of each row of a training frame, for intervals: the split's group_id (a
    JSONL `group`, the items the split keeps together) where the row has one, else its photo's
    item_id (a crop's source photo), else its key. Rows that share a unit are not independent."""
    columns = set(getattr(frame, "columns", ()))
    out = [str(k) for k in frame["key"]]
    for column in ("item_id", "group_id"):  # later columns win where they have a value
        if column in columns:
            out = [str(v) if v is not None and v == v and str(v) else o for v, o in zip(frame[column], out)]
    return out


def photo_of(frame: Any) -> dict[str, str]:
    """{key: resampling unit} of a training frame (see `photo_groups`); {} for anything else."""
    if not (hasattr(frame, "columns") and "key" in frame.columns):
        return {}
    return dict(zip((str(k) for k in frame["key"]), photo_groups(frame)))


def largest_defect_type(defects_json: str | None, damage_types: Any) -> str | None:
    """The type of the defect with the largest area; else the first listed damage type."""
    defects = json.loads(defects_json) if defects_json else []
    if defects:
        best = max(defects, key=lambda d: (float(d.get("area_px") or 0.0), str(d.get("type"))))
        return str(best["type"])
    types = list(damage_types) if damage_types is not None else []
    return str(sorted(types)[0]) if types else None


def _read_crops(crops_dir: Path, split: pd.DataFrame) -> pd.DataFrame:
    crops = pd.read_parquet(crops_dir / "crops.parquet")
    extra = [c for c in split.columns if c not in crops.columns and c != "path"]
    crops = crops.merge(split[["item_id", *extra]], on="item_id", how="left")
    crops[DAMAGE_CLASS] = [CLEAN if t == "clean" else largest_defect_type(d, dt)
                           for t, d, dt in zip(crops["crop_type"], crops["defects"], crops["damage_types"])]
    crops["key"] = crops["crop_id"]
    crops["path"] = [str(crops_dir / p) for p in crops["crop_path"]]
    return crops


def _resolve_source(cfg: TrainConfig, split: pd.DataFrame, crops_dir: Path | None) -> str:
    if cfg.source != "auto":
        if cfg.source == "crops" and crops_dir is None:
            raise ConfigError("train.source=crops needs the crops artifact (run the crops phase first)")
        return cfg.source
    formats = set(split.get("source_format", pd.Series(dtype=str)).dropna())
    return "crops" if crops_dir is not None and formats and formats <= set(CROP_FORMATS) else "images"


def _subsample(frame: pd.DataFrame, max_items: int | None, seed: int) -> pd.DataFrame:
    if not max_items:
        return frame
    digest = [hashlib.sha256(f"{seed}:{k}".encode()).hexdigest() for k in frame["key"]]
    order = frame.assign(_h=digest).sort_values(["split", "_h"])
    order["_r"] = order.groupby(["split", "target"], sort=False).cumcount()  # round-robin over classes
    order = order.sort_values(["split", "_r", "_h"])
    return order.groupby("split", sort=False).head(max_items).drop(columns=["_h", "_r"])


def select_subset(frame: pd.DataFrame, subset: RegionSpec) -> pd.Series:
    """Boolean mask of rows whose `subset.column` is one of `subset.values` (compared as text)."""
    if subset.column not in frame.columns:
        raise ConfigError(f"regional teacher {subset.name!r}: no column {subset.column!r}; have {sorted(frame.columns)}")
    wanted = {str(v) for v in subset.values}
    return frame[subset.column].map(lambda v: v is not None and not pd.isna(v) and str(v) in wanted)


def build_items(split_path: Path, cfg: TrainConfig, dataset_root: Path | None = None, crops_dir: Path | None = None,
                class_names: list[str] | None = None, subset: RegionSpec | None = None) -> TrainingData:
    """Items of every split (see the module docstring). `class_names` given: use that list (a
    regional teacher or a student keeps its teacher's classes); `subset`: keep only those rows."""
    split = pd.read_parquet(split_path)
    source = _resolve_source(cfg, split, crops_dir)
    if source == "crops":
        frame = _read_crops(Path(crops_dir), split)  # type: ignore[arg-type]
    else:
        if dataset_root is None:
            raise ConfigError("training on whole images needs the dataset root")
        frame = split.assign(key=split["item_id"], path=[str(Path(dataset_root) / p) for p in split["path"]])
    target = cfg.target or (DAMAGE_CLASS if source == "crops" else "label")
    if target not in frame.columns:
        raise ConfigError(f"train.target {target!r} is not a column of the {source} table; have {sorted(frame.columns)}")
    if frame[target].map(lambda v: isinstance(v, (list, tuple)) or hasattr(v, "tolist")).any():
        raise ConfigError(f"train.target {target!r} holds lists; choose a scalar column")
    frame = frame.assign(target=[None if v is None or pd.isna(v) else str(v) for v in frame[target]])
    dropped = [frame.loc[frame["target"].isna(), ["key", "split"]].assign(reason="no_target")]
    frame = frame[frame["target"].notna()]
    if subset is not None:
        mask = select_subset(frame, subset)
        dropped.append(frame.loc[~mask, ["key", "split"]].assign(reason=f"outside_subset_{subset.name}"))
        frame = frame[mask]
    frame = _subsample(frame.sort_values("key"), cfg.max_items, cfg.seed)
    classes = list(class_names) if class_names else sorted(set(frame.loc[frame["split"] == "train", "target"]))
    if not classes:
        raise DatasetError(f"no training items with a {target!r} target in the train split")
    known = frame["target"].isin(classes)
    dropped.append(frame.loc[~known, ["key", "split"]].assign(reason="class_not_in_train"))
    frame = frame[known].sort_values(["split", "key"]).reset_index(drop=True)
    return TrainingData(frame, classes, source, target, pd.concat(dropped, ignore_index=True))


class ImageDataset:
    """(image tensor, class index, row index) per row; images decoded to 8-bit RGB (grayscale too)."""

    def __init__(self, paths: list[str], labels: list[int], transform: Callable[[Any], Any]):
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        self.paths, self.labels, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        from pipeline.data.images import load_rgb

        image, _ = load_rgb(self.paths[i], MAX_PIXELS)
        return self.transform(image), self.labels[i], i


def make_loader(dataset: ImageDataset, batch_size: int, *, train: bool, seed: int = 0, workers: int = 0,
                device: str = "cpu", balanced: bool = False) -> Any:
    """A DataLoader: shuffled (or class-balanced) with a seeded generator for train, in order otherwise;
    the last partial train batch is dropped only when it is a sliver of the set (`budget.drop_last`)."""
    import torch
    from torch.utils.data import DataLoader, WeightedRandomSampler

    from pipeline.training.budget import drop_last

    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if train and balanced:
        counts = pd.Series(dataset.labels).value_counts()
        weights = [1.0 / counts[y] for y in dataset.labels]
        sampler = WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      generator=generator, num_workers=workers, pin_memory=str(device).startswith("cuda"),
                      drop_last=train and drop_last(len(dataset), batch_size), persistent_workers=workers > 0)
