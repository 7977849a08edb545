"""Comparing two trained models item by item, from the predictions every model artifact writes.

Every training phase writes `predictions.parquet` (val and test: key, photo, label, logits). Two
models scored on the same items are compared by the paired bootstrap of their correctness over
photos (`pipeline.core.stats.paired_difference`): "beyond the interval" means the 95% interval of
the top-1 difference excludes 0. Used by the run summary (`pipeline demo`), the benchmark and the
phase reports.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.stats import Estimate, paired_difference, verdict

PREDICTIONS = "predictions.parquet"


def correctness(model_dir: str | Path, split: str = "test") -> dict[str, tuple[bool, str]] | None:
    """{key: (correct, photo)} of a model dir's predictions on `split`; None when it has none."""
    import pandas as pd

    path = Path(model_dir) / PREDICTIONS
    if not path.is_file():
        return None
    frame = pd.read_parquet(path)
    frame = frame[frame["split"] == split]
    return {str(k): (int(np.argmax(z)) == int(y), str(g))
            for k, g, y, z in zip(frame["key"], frame["group"], frame["label"], frame["logits"])}


def paired(dir_a: str | Path, dir_b: str | Path, split: str = "test", seed: int = 0) -> Estimate | None:
    """top-1(a) - top-1(b) on the items both scored, with its interval over photos; None if either lacks them."""
    a, b = correctness(dir_a, split), correctness(dir_b, split)
    if a is None or b is None:
        return None
    keys = sorted(set(a) & set(b))
    return paired_difference([float(a[k][0]) for k in keys], [float(b[k][0]) for k in keys],
                             [a[k][1] for k in keys], seed=seed)


def compare_line(dir_a: str | Path, dir_b: str | Path, names: tuple[str, str], split: str = "test",
                 seed: int = 0) -> str | None:
    """One sentence: whether a differs from b beyond the interval (None when they cannot be compared)."""
    d = paired(dir_a, dir_b, split, seed)
    return None if d is None else verdict(d, names)


def comparisons(paths: dict[str, Any], seed: int = 0) -> list[str]:
    """The comparisons a training run reports, for the phases present in `paths` ({phase: model dir})."""
    pairs = [(("teacher", "teacher/probe"), ("teacher", "its frozen linear probe")),
             (("student", "student_no_teacher"), ("the distilled student", "the no-teacher student")),
             (("finetune", "student"), ("the fine-tuned student", "the distilled student")),
             (("finetune", "teacher"), ("the fine-tuned student", "the teacher"))]
    dirs = {**{k: Path(v) for k, v in paths.items() if v}}
    if "teacher" in dirs:
        dirs["teacher/probe"] = dirs["teacher"] / "probe"
    out = []
    for (a, b), names in pairs:
        if a in dirs and b in dirs:
            line = compare_line(dirs[a], dirs[b], names, seed=seed)
            if line:
                out.append(line)
    return out
