"""The equivalence gate's figures and verdicts on constructed logits (no model needed)."""
from __future__ import annotations

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
    assert gate.verdict(f, PipelineConfig().export) == (True, "ok")


def test_small_noise_passes_large_noise_is_refused(ref):
    rng = np.random.default_rng(1)
    cfg = PipelineConfig().export
    small = gate.compare(ref, ref + rng.normal(0, 1e-3, ref.shape).astype(np.float32))
    assert small["corr"] > 0.99999 and small["top1_agreement"] == 1.0
    assert gate.verdict(small, cfg)[0]
    big = gate.compare(ref, ref + rng.normal(0, 2.0, ref.shape).astype(np.float32))
    ok, reason = gate.verdict(big, cfg)
    assert not ok and "top-1 agreement" in reason and "corr" in reason


def test_top1_agreement_threshold_is_inclusive_at_99_percent(ref):
    def swap_top(rows):
        got = ref[:100].copy()
        for i in rows:
            k = int(got[i].argmax())
            other = (k + 1) % got.shape[1]
            got[i, k], got[i, other] = got[i, other], got[i, k]
        return got

    cfg = PipelineConfig().export.model_copy(update={"min_image_corr": -1.0})
    one = gate.compare(ref[:100], swap_top([0]))
    two = gate.compare(ref[:100], swap_top([0, 1]))
    assert one["top1_agreement"] == pytest.approx(0.99) and two["top1_agreement"] == pytest.approx(0.98)
    assert one["corr"] > 0.995 and two["corr"] > 0.995  # pooled correlation alone would not notice
    assert gate.verdict(one, cfg)[0] is True
    assert gate.verdict(two, cfg) == (False, "top-1 agreement 0.9800 < 0.99")


def test_non_finite_output_is_refused(ref):
    bad = ref.copy()
    bad[3, 1] = np.nan
    f = gate.compare(ref, bad)
    assert f["max_abs"] == float("inf") and f["top1_agreement"] == 0.0
    assert gate.verdict(f, PipelineConfig().export)[0] is False


def test_shape_mismatch_raises(ref):
    with pytest.raises(ValueError, match="shapes differ"):
        gate.compare(ref, ref[:, :3])
