"""Intervals over photos: seeded, resampling photos (not queries), paired between rankings of the same queries."""
import numpy as np
import pytest

from pipeline.retrieval.stats import PhotoBootstrap


def test_interval_is_seeded():
    rng = np.random.default_rng(0)
    photos, values = np.arange(20), rng.random(20)
    a = PhotoBootstrap(photos, seed=1).mean(values)
    assert a == PhotoBootstrap(photos, seed=1).mean(values)
    b = PhotoBootstrap(photos, seed=2).mean(values)
    assert (b.lo, b.hi) != (a.lo, a.hi) and b.value == a.value
    assert a.lo < a.value < a.hi and (a.n_queries, a.n_photos) == (20, 20)


def test_interval_resamples_photos_not_queries():
    """Ten identical queries per photo add no information: the interval over photos is the one of a single
    query per photo (a bootstrap over queries would shrink it about threefold)."""
    rng = np.random.default_rng(0)
    photos, values = np.arange(20), rng.random(20)
    one = PhotoBootstrap(photos, seed=3).mean(values)
    ten = PhotoBootstrap(np.repeat(photos, 10), seed=3).mean(np.repeat(values, 10))
    assert ten.value == pytest.approx(one.value)
    assert (ten.lo, ten.hi) == pytest.approx((one.lo, one.hi))
    assert (ten.n_queries, ten.n_photos) == (200, 20)
    queries = PhotoBootstrap(np.arange(200), seed=3).mean(np.repeat(values, 10))
    assert queries.hi - queries.lo < 0.5 * (ten.hi - ten.lo)


def test_masks_balanced_and_paired_differences():
    photos = np.repeat(np.arange(12), 3)
    state = np.tile([True, True, False], 12)
    good = np.where(state, 0.9, 0.7)
    boot = PhotoBootstrap(photos, seed=0)
    d, c = boot.mean(good, state), boot.mean(good, ~state)
    assert (d.value, d.n_queries, c.value, c.n_queries) == (pytest.approx(0.9), 24, pytest.approx(0.7), 12)
    bal, draws = boot.balanced(good, state)
    assert bal.value == pytest.approx(0.8) and bal.n_queries == 36
    better = good + 0.05
    bal2, draws2 = boot.balanced(better, state)
    diff = boot.difference(draws2, draws, bal2.value - bal.value, 36)
    assert diff.value == pytest.approx(0.05) and diff.lo == pytest.approx(0.05) and diff.hi == pytest.approx(0.05)
    nan = boot.mean(np.where(state, np.nan, 0.5))  # nan values never count
    assert nan.value == pytest.approx(0.5) and nan.n_queries == 12
    assert "queries, 12 photos" in d.text()
