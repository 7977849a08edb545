"""Intervals over photos: a seeded bootstrap that resamples PHOTOS, not queries.

Queries cut from one photo are not independent (they share its light, car and camera), so a retrieval
figure's interval resamples whole photos (or groups) with replacement and recomputes the figure over
the queries of the drawn photos, each counted as often as its photo was drawn. The same draws serve
every figure of one evaluation (`PhotoBootstrap`), so differences between two rankings of the same
queries are paired.

A figure is a mean of per-query values over the queries selected by a mask (damaged queries for
damaged coverage; every query with a relevant reference for mAP@R), or the balanced mean of two such
means (damaged and clean coverage). The interval is the percentile interval of `confidence`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

N_BOOTSTRAP = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A figure with its percentile interval over photos and what it was computed from."""

    value: float
    lo: float
    hi: float
    n_queries: int
    n_photos: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {prefix: self.value, f"{prefix}_lo": self.lo, f"{prefix}_hi": self.hi,
                f"{prefix}_n_queries": float(self.n_queries), f"{prefix}_n_photos": float(self.n_photos)}

    def text(self, digits: int = 3) -> str:
        if not np.isfinite(self.value):
            return "n/a (no queries)"
        return (f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}] "
                f"({self.n_queries} queries, {self.n_photos} photos)")


class PhotoBootstrap:
    """Resampling weights of the photos of a fixed set of queries (one row of counts per draw)."""

    def __init__(self, photos: np.ndarray, n: int = N_BOOTSTRAP, seed: int = 0, confidence: float = CONFIDENCE) -> None:
        keys, self.inverse = np.unique(np.asarray(photos).astype(str), return_inverse=True)
        self.n_photos = len(keys)
        self.confidence = confidence
        rng = np.random.default_rng(seed)
        p = np.full(self.n_photos, 1.0 / max(self.n_photos, 1))
        self.counts = rng.multinomial(self.n_photos, p, size=n).astype(np.float64) if self.n_photos else np.zeros((n, 0))

    def _sums(self, values: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(values) if mask is None else (np.asarray(mask, dtype=bool) & np.isfinite(values))
        s = np.bincount(self.inverse, weights=np.where(ok, values, 0.0), minlength=self.n_photos)
        c = np.bincount(self.inverse, weights=ok.astype(np.float64), minlength=self.n_photos)
        return s, c

    def draws(self, values: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, np.ndarray, int, int]:
        """(point value, the figure in every draw (nan where a draw holds none of its queries), n queries,
        n photos) of the mean of `values` over `mask` (nan values never count)."""
        s, c = self._sums(values, mask)
        point = float(s.sum() / c.sum()) if c.sum() else float("nan")
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (self.counts @ s) / (self.counts @ c)
        return point, boot, int(c.sum()), int((c > 0).sum())

    def interval(self, boot: np.ndarray) -> tuple[float, float]:
        ok = boot[np.isfinite(boot)]
        if len(ok) == 0:
            return float("nan"), float("nan")
        tail = 100.0 * (1.0 - self.confidence) / 2.0
        lo, hi = np.percentile(ok, [tail, 100.0 - tail])
        return float(lo), float(hi)

    def mean(self, values: np.ndarray, mask: np.ndarray | None = None) -> Estimate:
        point, boot, nq, nph = self.draws(values, mask)
        return Estimate(point, *self.interval(boot), nq, nph)

    def balanced(self, values: np.ndarray, first: np.ndarray) -> tuple[Estimate, np.ndarray]:
        """The mean of the two per-side means (`first` and not `first`: damaged and clean coverage); one side
        alone when the other has no queries. Returns the estimate and its draws (for paired differences)."""
        first = np.asarray(first, dtype=bool)
        a, boot_a, na, pa = self.draws(values, first)
        b, boot_b, nb, pb = self.draws(values, ~first)
        if na and nb:
            point, boot = 0.5 * (a + b), 0.5 * (boot_a + boot_b)
        else:
            point, boot = (a, boot_a) if na else (b, boot_b)
        s, c = self._sums(np.ones(len(first)), None)
        return Estimate(float(point), *self.interval(boot), na + nb, int((c > 0).sum())), boot

    def difference(self, boot_new: np.ndarray, boot_old: np.ndarray, point: float, n_queries: int) -> Estimate:
        """Paired difference of two figures computed on the same draws."""
        return Estimate(float(point), *self.interval(boot_new - boot_old), n_queries, self.n_photos)


def estimates(values: dict[str, np.ndarray], masks: dict[str, np.ndarray | None], photos: np.ndarray,
              seed: int = 0, n: int = N_BOOTSTRAP) -> dict[str, Estimate]:
    """One Estimate per named figure, all on the same draws over `photos`."""
    boot = PhotoBootstrap(photos, n=n, seed=seed)
    return {name: boot.mean(values[name], masks.get(name)) for name in values}


def flat(named: dict[str, Estimate]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, est in named.items():
        out.update(est.as_dict(name))
    return out
