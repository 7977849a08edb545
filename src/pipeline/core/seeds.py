"""Mean and spread of each model's figures over `train.seeds` repetitions of the training phases."""
from __future__ import annotations

import math
from typing import Any, Sequence

FIGURES = ("test_top1", "val_top1")


def seed_summary(seeds: Sequence[int], per_seed: Sequence[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """{phase: {"seeds", figure: [per seed], figure_mean, figure_spread}} (spread = max - min)."""
    out: dict[str, Any] = {}
    for phase in per_seed[0]:
        row: dict[str, Any] = {"seeds": list(seeds)}
        for fig in FIGURES:
            values = [float(s.get(phase, {}).get(fig, math.nan)) for s in per_seed]
            finite = [v for v in values if math.isfinite(v)]
            row[fig] = values
            row[f"{fig}_mean"] = sum(finite) / len(finite) if finite else math.nan
            row[f"{fig}_spread"] = max(finite) - min(finite) if finite else math.nan
        out[phase] = row
    return out


def seed_lines(seeds: dict[str, Any]) -> list[str]:
    """The printed lines: 'student: test top-1 0.812 mean, spread 0.043 over seeds [0, 1, 2]'."""
    return [f"{phase}: test top-1 mean {row['test_top1_mean']:.3f}, spread {row['test_top1_spread']:.3f} "
            f"(per seed {', '.join(f'{v:.3f}' for v in row['test_top1'])}; seeds {row['seeds']})"
            for phase, row in seeds.items()]
