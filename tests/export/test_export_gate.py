"""The equivalence gate's figures and verdicts on constructed logits (no model needed)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.core.config import PipelineConfig
from pipeline.export import gate


@pytest.fixture()
def ref():
    rng = np.random.default_rng(0)
    return (rng.normal(0, 3, (200, 5))).astype(np.float32)


def test_identical_logits_pass(ref):
    f = gate.compare(ref, ref.copy(), temperature=1.5)
    assert f["corr"] == pytest.approx(1.0) and f["min_image_corr"] == pytest.approx(1.0)
    assert f["max_abs"] == 0.0 and f["top1_agreement"] == 1.0 and f["conf_max_diff"] == 0.0
    assert f["prob_max_diff"] == 0.0 and f["mean_kl"] == pytest.approx(0.0, abs=1e-12)
    assert gate.verdict(f, PipelineConfig().export) == (True, "ok")


def test_figures_match_hand_computed_values():
    """Image 0 is shifted by 5 (softmax cannot see it: same answer), image 1's winning logit halves."""
    ref = np.array([[1, 0, 0], [0, 2, 0]], dtype=np.float32)
    got = np.array([[6, 5, 5], [0, 1, 0]], dtype=np.float32)
    f = gate.compare(ref, got)
    # centred rows: ref (2,-1,-1)/3 and (-2,4,-2)/3; got (2,-1,-1)/3 and (-1,2,-1)/3:
    # dot 18/9, norms^2 30/9 and 12/9 -> 18 / sqrt(360) = 3 / sqrt(10)
    assert f["corr"] == pytest.approx(3 / math.sqrt(10), abs=1e-6)
    assert f["min_image_corr"] == pytest.approx(1.0)  # each image's centred logits are proportional
    # raw pooled: deviations (.5,-.5,-.5,-.5,1.5,-.5) and got - 17/6; cov -0.5/6, var 3.5/6 and 233/36
    assert f["raw_corr"] == pytest.approx(-0.5 / math.sqrt(3.5 * 233 / 6), abs=1e-6)
    e = math.e
    p1, q1 = e**2 / (e**2 + 2), e / (e + 2)  # image 1: p(class 1) before and after
    p0, q0 = 1 / (e**2 + 2), 1 / (e + 2)  # image 1: p(class 0) = p(class 2)
    assert f["prob_max_diff"] == pytest.approx(p1 - q1, abs=1e-9)
    assert f["conf_max_diff"] == pytest.approx(p1 - q1, abs=1e-9)
    kl1 = p1 * math.log(p1 / q1) + 2 * p0 * math.log(p0 / q0)
    assert f["mean_kl"] == pytest.approx(kl1 / 2, abs=1e-9)  # image 0 contributes 0
    assert f["top1_agreement"] == 1.0 and f["max_abs"] == pytest.approx(5.0)


def test_temperature_scales_the_probabilities():
    ref = np.array([[2.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    got = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    f = gate.compare(ref, got, temperature=2.0)  # p = sigmoid(1) vs sigmoid(0.5)
    s = lambda z: 1 / (1 + math.exp(-z))
    assert f["prob_max_diff"] == pytest.approx(s(1.0) - s(0.5), abs=1e-9)
    assert f["min_image_corr"] is None  # two classes: one image's centred logits are always (anti)correlated


def test_per_image_shift_passes_and_a_hidden_change_is_refused():
    """Pooled raw-logit correlation fails a model whose answers are unchanged and passes one whose
    answers all change; the centred figures do not."""
    rng = np.random.default_rng(3)
    ref = rng.normal(0, 2, (200, 4)).astype(np.float32)
    cfg = PipelineConfig().export
    shifted = gate.compare(ref, ref + rng.normal(0, 20, (200, 1)).astype(np.float32))
    assert shifted["raw_corr"] < 0.5 and shifted["corr"] == pytest.approx(1.0, abs=1e-6)
    assert gate.verdict(shifted, cfg)[0]
    common = (np.arange(200)[:, None] * 100.0).astype(np.float32)
    small = np.array([0.3, 0.1, -0.1, -0.3], dtype=np.float32)
    hidden = gate.compare(common + small, common + small[::-1])
    assert hidden["raw_corr"] > 0.9999 and hidden["top1_agreement"] == 0.0 and hidden["corr"] < 0
    ok, reason = gate.verdict(hidden, cfg)
    assert not ok and "top-1 agreement" in reason and "centred logit corr" in reason


def test_small_noise_passes_large_noise_is_refused(ref):
    rng = np.random.default_rng(1)
    cfg = PipelineConfig().export
    small = gate.compare(ref, ref + rng.normal(0, 1e-3, ref.shape).astype(np.float32))
    assert small["corr"] > 0.99999 and small["top1_agreement"] == 1.0
    assert gate.verdict(small, cfg)[0]
    big = gate.compare(ref, ref + rng.normal(0, 2.0, ref.shape).astype(np.float32))
    ok, reason = gate.verdict(big, cfg)
    assert not ok and "top-1 agreement" in reason and "corr" in reason and "max |dp|" in reason and "KL" in reason


def test_top1_agreement_threshold_is_inclusive_at_99_percent(ref):
    def swap_top(rows):
        got = ref[:100].copy()
        for i in rows:
            k = int(got[i].argmax())
            other = (k + 1) % got.shape[1]
            got[i, k], got[i, other] = got[i, other], got[i, k]
        return got

    cfg = PipelineConfig().export.model_copy(update={"min_image_corr": -1.0, "max_prob_diff": 1.0, "max_kl": 1.0})
    one = gate.compare(ref[:100], swap_top([0]))
    two = gate.compare(ref[:100], swap_top([0, 1]))
    assert one["top1_agreement"] == pytest.approx(0.99) and two["top1_agreement"] == pytest.approx(0.98)
    assert one["corr"] > 0.99 and two["corr"] > 0.98  # correlation alone would hardly notice
    cfg = cfg.model_copy(update={"min_corr": 0.98})
    assert gate.verdict(one, cfg)[0] is True
    ok, reason = gate.verdict(two, cfg)
    assert not ok and reason.startswith("top-1 agreement 0.9800 < 0.99 (2 flips") and ";" not in reason.split(")")[-1]


def test_probability_and_kl_thresholds_refuse_on_their_own():
    ref = np.array([[3.0, 0.0, 0.0]] * 10, dtype=np.float32)
    got = ref.copy()
    got[0] = [2.0, 0.0, 0.0]  # same answer, confidence 0.910 -> 0.787
    f = gate.compare(ref, got)
    cfg = PipelineConfig().export.model_copy(update={"min_corr": -1.0, "min_image_corr": -1.0, "max_prob_diff": 0.05,
                                                     "max_kl": 0.005})
    ok, reason = gate.verdict(f, cfg)
    assert f["top1_agreement"] == 1.0 and not ok and reason.startswith("max |dp| 0.12")
    loose = cfg.model_copy(update={"max_prob_diff": 0.2, "max_kl": 0.01})  # mean KL here 0.0054
    assert gate.verdict(f, loose.model_copy(update={"max_kl": 1e-3}))[1].startswith("mean KL")
    assert gate.verdict(f, loose)[0]


def test_non_finite_output_is_refused(ref):
    bad = ref.copy()
    bad[3, 1] = np.nan
    f = gate.compare(ref, bad)
    assert f["max_abs"] == float("inf") and f["top1_agreement"] == 0.0
    assert gate.verdict(f, PipelineConfig().export)[0] is False


def test_shape_mismatch_raises(ref):
    with pytest.raises(ValueError, match="shapes differ"):
        gate.compare(ref, ref[:, :3])


def test_flips_report_how_close_to_a_tie_torch_was():
    """Two classes, T = 1: input 0 flips at a torch margin of tanh(0.05) (a coin toss), input 1 flips
    at tanh(1) (a clear answer); the reason carries the largest flipped margin and the near ties."""
    ref = np.array([[0.1, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 0.1]], dtype=np.float32)
    got = np.array([[0.0, 0.1], [0.0, 2.0], [3.0, 0.0], [0.0, 0.1]], dtype=np.float32)
    f = gate.compare(ref, got)
    assert f["flips"] == 2 and f["top1_agreement"] == 0.5
    assert f["flip_max_margin"] == pytest.approx(math.tanh(1.0), abs=1e-9)  # p1 - p2 = tanh(d / 2)
    assert f["near_ties"] == 2  # inputs 0 and 3: margin tanh(0.05) < 0.1
    ok, reason = gate.verdict(f, PipelineConfig().export)
    assert not ok and "2 flips, torch's calibrated top-2 margin <= 0.762 on each; 2 inputs have a margin < 0.1" in reason
    same = gate.compare(ref, ref.copy())
    assert same["flips"] == 0 and same["flip_max_margin"] is None
