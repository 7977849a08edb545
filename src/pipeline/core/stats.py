"""Small-sample statistics every reported figure carries: n and a seeded bootstrap interval.

Items that share a photo are not independent (the crops of one photo, the queries of one photo), so
the bootstrap resamples *groups* (photos) with replacement and recomputes the statistic on the items
of the drawn groups (a cluster bootstrap); with no groups every item is its own group. Intervals are
percentile intervals of `n_boot` resamples from `numpy.random.default_rng(seed)`, so the same inputs
give the same interval. `paired_difference` resamples the same groups for two models scored on the
same items, which is how two models are compared ("beyond the interval" = the interval of the
difference excludes 0).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

N_BOOT = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A figure with its sample size and bootstrap interval."""

    value: float
    lo: float
    hi: float
    n: int  # items
    n_groups: int  # independent units (photos)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.value):
            return f"- (n={self.n})"
        groups = f", {self.n_groups} photos" if self.n_groups != self.n else ""
        return f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}] (n={self.n}{groups})"


def _group_index(n: int, groups: Sequence[Any] | None) -> tuple[np.ndarray, int]:
    if groups is None:
        return np.arange(n), n
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} items")
    _, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    return inverse.astype(np.int64), int(inverse.max()) + 1 if n else 0


def _draws(codes: np.ndarray, n_groups: int, n_boot: int, seed: int) -> list[np.ndarray]:
    """Per resample, the item indices of the drawn groups (with multiplicity)."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(codes == g) for g in range(n_groups)]
    out = []
    for _ in range(n_boot):
        drawn = rng.integers(0, n_groups, n_groups)
        out.append(np.concatenate([members[g] for g in drawn]) if n_groups else np.zeros(0, np.int64))
    return out


def bootstrap(stat: Callable[[np.ndarray], float], n: int, groups: Sequence[Any] | None = None,
              n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Estimate:
    """`stat(indices) -> float` on all items and on `n_boot` cluster resamples of them."""
    codes, n_groups = _group_index(n, groups)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0)
    value = float(stat(np.arange(n)))
    reps = np.asarray([stat(idx) for idx in _draws(codes, n_groups, n_boot, seed)], dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if not len(reps):
        return Estimate(value, math.nan, math.nan, n, n_groups)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return Estimate(value, float(lo), float(hi), n, n_groups)


def mean_ci(values: Sequence[float] | np.ndarray, groups: Sequence[Any] | None = None, n_boot: int = N_BOOT,
            seed: int = 0, level: float = LEVEL) -> Estimate:
    """Mean of per-item values (e.g. 1.0 for a correct answer) with its cluster-bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    return bootstrap(lambda idx: float(v[idx].mean()) if len(idx) else math.nan, len(v), groups, n_boot, seed, level)


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                      groups: Sequence[Any] | None = None, n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> Estimate:
    """mean(a) - mean(b) for two per-item scores on the same items, resampling the same groups."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired scores differ in length: {x.shape} vs {y.shape}")
    d = x - y
    return bootstrap(lambda idx: float(d[idx].mean()) if len(idx) else math.nan, len(d), groups, n_boot, seed, level)


def verdict(diff: Estimate, names: tuple[str, str] = ("a", "b")) -> str:
    """How a paired difference reads: beyond its interval either way, or within it."""
    a, b = names
    if math.isnan(diff.value) or math.isnan(diff.lo):
        return f"{a} vs {b}: no items to compare"
    if diff.lo > 0:
        return f"{a} is better than {b} beyond the interval ({diff.text()})"
    if diff.hi < 0:
        return f"{a} is worse than {b} beyond the interval ({diff.text()})"
    return f"{a} and {b} do not differ beyond the interval ({diff.text()})"
