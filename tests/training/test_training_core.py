"""Training core: items (incl. grayscale), config precedence, deterministic fit, resume after a fault,
soft-label combination."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.config import PhaseTrainConfig, build_config, load_config
from pipeline.training.items import ImageDataset, build_items, largest_defect_type, photo_groups
from pipeline.training.distill import combine, distill_loss
from pipeline.training.loop import InjectedFault, fit
from training_helpers import make_image_split


def test_items_from_images_with_grayscale(tmp_path):
    split = make_image_split(tmp_path)
    cfg = build_config({}, [])
    data = build_items(split, cfg.train, tmp_path)
    assert data.source == "images" and data.target == "label"
    assert data.class_names == ["checker", "hstripes", "vstripes"]
    assert data.counts()["train"] == {"checker": 8, "hstripes": 8, "vstripes": 8}
    gray = data.frame[data.frame["path"].str.endswith("train_0.png")].iloc[0]
    from PIL import Image
    assert Image.open(gray["path"]).mode == "L"
    x, y, i = ImageDataset([gray["path"]], [0], lambda im: np.asarray(im))[0]
    assert x.shape == (40, 40, 3) and y == 0 and i == 0
    small = build_items(split, build_config({}, ["train.max_items=3"]).train, tmp_path)
    assert small.frame.groupby("split").size().to_dict() == {"test": 3, "train": 3, "val": 3}
    assert small.counts()["val"] == {"checker": 1, "hstripes": 1, "vstripes": 1}
    from pipeline.core.config import RegionSpec
    north = build_items(split, cfg.train, tmp_path, subset=RegionSpec(name="n", column="region", values=["north"]))
    assert set(north.frame["region"]) == {"north"} and (north.dropped["reason"] == "outside_subset_n").sum() == 18


def test_unknown_class_and_missing_target_are_dropped(tmp_path):
    split = make_image_split(tmp_path)
    table = pd.read_parquet(split)
    table.loc[(table["split"] == "val") & (table["label"] == "checker"), "label"] = "only_in_val"
    table.loc[0, "label"] = None
    table.to_parquet(split)
    data = build_items(split, build_config({}, []).train, tmp_path)
    assert "only_in_val" not in data.class_names
    assert data.dropped["reason"].value_counts().to_dict() == {"class_not_in_train": 3, "no_target": 1}


def test_crop_target_is_the_largest_defect():
    defects = json.dumps([{"type": "dent", "area_px": 50.0}, {"type": "crack", "area_px": 80.0}])
    assert largest_defect_type(defects, ["crack", "dent"]) == "crack"
    assert largest_defect_type("[]", ["scratch"]) == "scratch"
    assert largest_defect_type(None, []) is None


def test_intervals_resample_the_split_group_not_the_image():
    """Images of one JSONL group (one photo's crops, one vehicle) are one unit for the intervals; a
    crop without a group falls back to its photo, an image without either to its key."""
    frame = pd.DataFrame({"key": ["a", "b", "c", "d"], "item_id": ["a", "b", "p1", "d"],
                          "group_id": ["g1", "g1", None, ""]})
    assert photo_groups(frame) == ["g1", "g1", "p1", "d"]
    assert photo_groups(pd.DataFrame({"key": ["x", "y"]})) == ["x", "y"]


def test_config_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 4\n  image_size: 96\nteacher:\n  epochs: 10\nstudent:\n  image_size: 128\n")
    cfg = load_config(f)
    assert (cfg.teacher.epochs, cfg.student.epochs, cfg.finetune.epochs) == (10, 4, 4)  # phase YAML > train YAML
    assert (cfg.student.image_size, cfg.teacher.image_size) == (128, 96)
    cfg = load_config(f, ["train.epochs=2"])  # a train --set beats the phase YAML
    assert (cfg.teacher.epochs, cfg.student.epochs, cfg.regional.epochs) == (2, 2, 2)
    cfg = load_config(f, ["train.epochs=2", "teacher.epochs=3"])  # a phase --set beats a train --set
    assert (cfg.teacher.epochs, cfg.student.epochs) == (3, 2)
    cfg = load_config(f, ["train.image_size=48"])
    assert (cfg.student.image_size, cfg.teacher.image_size) == (48, 48)


class _Tensors:
    def __init__(self, n=48, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        self.x = torch.randn(n, 3, 12, 12, generator=g) + self.y[:, None, None, None].float()
        self.labels = self.y.tolist()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(3, 12, 12), int(self.y[i]), i  # augmentation from torch's RNG


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 3))


def _loaders():
    from pipeline.training.items import make_loader

    return make_loader(_Tensors(), 8, train=True, seed=1), make_loader(_Tensors(24, seed=5), 16, train=False)


RECIPE = PhaseTrainConfig(lr=0.01, warmup_epochs=1, patience=None, label_smoothing=0.1, accum_steps=2)


def _fit(ckpt, **kw):
    model = _tiny_model()
    train, val = _loaders()
    res = fit(model, train, val, RECIPE, epochs=3, seed=7, checkpoint_dir=ckpt, **kw)
    return model, res


def test_fit_same_seed_same_weights_and_metrics(tmp_path):
    m1, r1 = _fit(tmp_path / "a")
    m2, r2 = _fit(tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert r1.history == r2.history and r1.epochs_run == 3
    assert r1.history[-1]["train_loss"] < r1.history[0]["train_loss"]
    assert (tmp_path / "a" / "best" / "model.safetensors").is_file()
    assert (tmp_path / "a" / "last" / "state.pt").is_file()


def test_resume_after_injected_fault(tmp_path):
    ckpt = tmp_path / "ckpt"
    seen = []
    with pytest.raises(InjectedFault):  # 6 batches/epoch, accum 2 -> 3 steps per epoch: fails in epoch 2
        _fit(ckpt, fail_after_steps=4, on_epoch=lambda e, row: seen.append(e))
    assert seen == [0]
    model, res = _fit(ckpt, fail_after_steps=4, on_epoch=lambda e, row: seen.append(e))  # the retry
    assert res.resumed_from == 0 and res.epochs_run == 3 and seen == [0, 1, 2]
    clean, ref = _fit(tmp_path / "clean")
    assert res.history == ref.history  # resuming from the last checkpoint = never having failed
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), clean.state_dict().values()))


def test_soft_labels_combine_and_regional_renormalisation():
    rng = np.random.default_rng(0)
    g, r = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    covered = {"teacher": np.ones(4, bool), "teacher_north": np.array([1, 0, 1, 0], bool)}
    probs = combine({"teacher": g, "teacher_north": r}, covered, {"teacher": 0.5, "teacher_north": 0.5}, 3.0)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-6)
    sg, sr = (torch.softmax(torch.from_numpy(z) / 3.0, 1).numpy() for z in (g, r))
    assert np.allclose(probs[1], sg[1], atol=1e-6) and np.allclose(probs[3], sg[3], atol=1e-6)  # global only
    assert np.allclose(probs[0], 0.5 * sg[0] + 0.5 * sr[0], atol=1e-6)  # both, renormalised


def test_distillation_loss_pulls_student_to_teacher():
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    loss = distill_loss(soft, 0.7, 3.0)
    logits = torch.zeros(2, 3, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    values = []
    for _ in range(20):
        opt.zero_grad()
        value = loss(logits, torch.tensor([0, 2]), torch.tensor([0, 1]))
        value.backward()
        opt.step()
        values.append(float(value.detach()))
    assert values[-1] < values[0] * 0.8
    assert logits.argmax(dim=1).tolist() == [0, 2]
