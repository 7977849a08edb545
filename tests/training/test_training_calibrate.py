"""Calibration: temperature scaling, ECE/MCE, the threshold table and the calibration entry."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.core.config import CalibrationConfig, PipelineConfig
from pipeline.training.calibrate import (
    OUTPUTS,
    calibration_errors,
    fit_temperature,
    nll,
    pick_threshold,
    run_calibration,
    threshold_table,
    thresholds_grid,
)
from pipeline.training.inference import softmax
from training_fixtures import colour_images, tiny_model_dir


def _overconfident(n=3000, c=5, factor=3.0, seed=0):
    """Logits whose softmax is the true label distribution, multiplied by `factor` (over-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, c))
    p = softmax(z)
    labels = np.array([rng.choice(c, p=row) for row in p])
    return (z * factor).astype(np.float32), labels


def test_temperature_scaling_recovers_the_factor_and_lowers_nll_and_ece():
    logits, labels = _overconfident(factor=3.0)
    t = fit_temperature(logits, labels)
    assert 2.6 < t < 3.4
    assert nll(logits, labels, t) < nll(logits, labels) - 0.1
    ece_before, mce_before = calibration_errors(softmax(logits), labels)
    ece_after, mce_after = calibration_errors(softmax(logits, t), labels)
    assert ece_before > 0.1 and ece_after < 0.03 and ece_after < ece_before / 4
    assert mce_after < mce_before


def test_under_confident_logits_get_a_temperature_below_one():
    logits, labels = _overconfident(factor=0.4, seed=1)
    assert 0.3 < fit_temperature(logits, labels) < 0.5


def test_ece_matches_the_definition_on_a_hand_example():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins {0.9: acc 0.5}, {0.6: acc 1}
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    labels = np.array([0, 1, 1])
    ece, mce = calibration_errors(probs, labels, n_bins=10)
    assert ece == pytest.approx((2 / 3) * 0.4 + (1 / 3) * 0.4)
    assert mce == pytest.approx(0.4)


def test_threshold_table_on_a_hand_made_example():
    # confidences 0.95 right, 0.85 right, 0.75 wrong, 0.65 right, 0.45 wrong
    probs = np.array([[0.95, 0.05], [0.15, 0.85], [0.75, 0.25], [0.35, 0.65], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 1, 1])
    grid = thresholds_grid(0.40, 0.95, 0.05)
    assert grid[0] == 0.4 and grid[-1] == 0.95 and len(grid) == 12
    rows = {r["threshold"]: r for r in threshold_table(probs, labels, grid)}
    assert rows[0.4]["answered"] == 5 and rows[0.4]["precision"] == pytest.approx(3 / 5)
    assert rows[0.6]["answered"] == 4 and rows[0.6]["precision"] == pytest.approx(3 / 4)
    assert rows[0.6]["coverage"] == pytest.approx(4 / 5) and rows[0.6]["errors"] == 1
    assert rows[0.8]["answered"] == 2 and rows[0.8]["precision"] == 1.0 and rows[0.8]["coverage"] == pytest.approx(0.4)
    assert rows[0.95]["answered"] == 1
    choice = pick_threshold(list(rows.values()), 0.95)
    assert choice["reached"] and choice["threshold"] == 0.8
    none = pick_threshold(threshold_table(probs, 1 - labels, grid), 0.95)  # labels flipped: mostly wrong
    assert not none["reached"] and none["precision"] < 0.95


def test_threshold_table_when_nothing_is_answered():
    probs = np.array([[0.5, 0.5], [0.52, 0.48]])
    rows = threshold_table(probs, np.array([0, 0]), [0.9])
    assert rows[0]["answered"] == 0 and rows[0]["precision"] is None and rows[0]["coverage"] == 0.0
    assert pick_threshold(rows, 0.95) == {**rows[0], "reached": False}


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    train = colour_images(root / "train", 8, seed=0, prefix="tr")
    val = colour_images(root / "val", 10, seed=1, prefix="va")
    test = colour_images(root / "test", 10, seed=2, prefix="te")
    return root, tiny_model_dir(root / "model", train), val, test


@pytest.mark.slow
def test_run_calibration_writes_a_calibrated_model_and_is_byte_identical(tiny_split, tmp_path):
    from pipeline.models.classifier import read_meta
    from pipeline.training.inference import Predictor

    root, model_dir, val, test = tiny_split
    bad = test + [{"path": str(root / "missing.png"), "label": "red"}, {"path": test[0]["path"], "label": "purple"}]
    cfg = PipelineConfig(calibration=CalibrationConfig(gallery_size=4))
    m = run_calibration(model_dir, val, bad, cfg, tmp_path / "a")
    for key in ("ece_before", "ece_after", "mce_before", "mce_after", "temperature", "threshold",
                "val_precision_at_threshold", "val_coverage_at_threshold", "test_precision_at_threshold",
                "test_coverage_at_threshold", "test_top1"):
        assert np.isfinite(m[key]), key
    assert m["n_test"] == 30 and m["n_val"] == 30
    assert m["val_nll_after"] <= m["val_nll_before"] + 1e-9  # T = 1 is feasible, so fitting never hurts val NLL
    assert 0.4 <= m["threshold"] <= 0.95
    meta = read_meta(tmp_path / "a")
    assert meta["temperature"] == pytest.approx(m["temperature"]) and meta["threshold"] == m["threshold"]
    table = json.loads((tmp_path / "a" / "thresholds.json").read_text())
    assert [r["threshold"] for r in table["val"]] == thresholds_grid(0.4, 0.95, 0.05)
    if m["threshold_reached"]:
        assert m["val_precision_at_threshold"] >= 0.95
    report = (tmp_path / "a" / "report.md").read_text()
    assert "1 unreadable, 1 with a label outside" in report and "random-initialised" in report
    assert str(tmp_path) not in report
    # the calibrated dir answers with its temperature and threshold
    preds = Predictor.from_dir(tmp_path / "a").predict([r["path"] for r in test])
    assert (preds["not_conclusive"] == (preds["confidence"] < m["threshold"])).all()
    # same inputs, another directory: byte-identical files
    run_calibration(model_dir, val, bad, cfg, tmp_path / "b")
    for name in OUTPUTS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_a_threshold_cannot_reach_the_target_on_a_handful_of_answers():
    from pipeline.training.calibrate import pick_threshold

    table = [{"threshold": 0.5, "answered": 40, "total": 50, "coverage": 0.8, "precision": 0.90},
             {"threshold": 0.9, "answered": 1, "total": 50, "coverage": 0.02, "precision": 1.0}]
    assert pick_threshold(table, 0.95)["reached"] and pick_threshold(table, 0.95)["threshold"] == 0.9
    choice = pick_threshold(table, 0.95, min_answered=10)
    assert not choice["reached"] and choice["threshold"] == 0.5
