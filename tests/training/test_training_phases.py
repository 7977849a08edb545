"""The training phases end to end on a tiny pattern dataset (32 px, random-init small nets, 1 epoch)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.training.distill import run_finetune, run_soft_labels, run_student
from pipeline.models.classifier import load_classifier
from pipeline.training.teacher import run_regional_teacher, run_teacher
from training_helpers import make_image_split, tiny_config


@pytest.mark.slow
def test_teacher_regional_soft_labels_student_finetune(tmp_path):
    split = make_image_split(tmp_path)
    cfg = tiny_config("regional.teachers=[{name: north, column: region, values: [north]}]", "train.epochs=1",
                      "teacher.mixup_alpha=0", "teacher.cutmix_alpha=0")
    kw = {"dataset_root": tmp_path}
    teacher = run_teacher(split, cfg, tmp_path / "t", tmp_path / "ck_t", **kw)
    assert teacher["epochs_run"] == 1 and teacher["random_init"] == 1.0 and "baseline_test_top1" in teacher
    assert 0 <= teacher["test_top1"] <= 1 and teacher["test_n"] == 9
    meta = json.loads((tmp_path / "t" / "model.json").read_text())
    assert meta["class_names"] == ["checker", "hstripes", "vstripes"] and meta["layout"] == "NCHW"
    assert meta["random_init"] is True and meta["temperature"] == 1.0 and meta["threshold"] is None
    report = (tmp_path / "t" / "report.md").read_text()
    assert report.startswith("**Random-initialised backbone**") and "## Baseline" in report
    assert (tmp_path / "t" / "confusion.png").stat().st_size > 0

    regional = run_regional_teacher(split, tmp_path / "t", "north", cfg, tmp_path / "tn", tmp_path / "ck_tn", **kw)
    assert regional["n_train"] == 12 and regional["test_n"] == 6
    rmeta = json.loads((tmp_path / "tn" / "model.json").read_text())
    assert rmeta["subset"]["column"] == "region"
    # the soft labels use a regional teacher only when it beats the global teacher on its subset's val
    assert rmeta["soft_labels_use"]["use"] == bool(regional["teaches"])
    assert (regional["val_top1"] > regional["baseline_val_top1"]) == bool(regional["teaches"])
    rmeta["soft_labels_use"] = {"use": False, "reason": "lost on val"}
    (tmp_path / "tn" / "model.json").write_text(json.dumps(rmeta))
    left_out = run_soft_labels(split, {"teacher": tmp_path / "t", "teacher_north": tmp_path / "tn"}, cfg,
                               tmp_path / "s_out", **kw)
    assert left_out["n_excluded"] == 1 and "coverage_teacher_north" not in left_out
    assert json.loads((tmp_path / "s_out" / "soft_labels.json").read_text())["excluded"] == {"teacher_north": "lost on val"}
    assert "teacher_north: lost on val" in (tmp_path / "s_out" / "report.md").read_text()
    rmeta["soft_labels_use"] = {"use": True, "reason": "won on val"}
    (tmp_path / "tn" / "model.json").write_text(json.dumps(rmeta))

    soft = run_soft_labels(split, {"teacher": tmp_path / "t", "teacher_north": tmp_path / "tn"}, cfg,
                           tmp_path / "s", **kw)
    assert soft["coverage_teacher"] == 24 and soft["coverage_teacher_north"] == 12 and soft["max_sum_error"] < 1e-5
    table = pd.read_parquet(tmp_path / "s" / "soft_labels.parquet")
    probs = np.load(tmp_path / "s" / "probs" / "probs_00000.npy")
    assert probs.shape == (24, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert sorted(len(t) for t in table["teachers"]).count(2) == 12

    student = run_student(split, cfg, tmp_path / "st", tmp_path / "ck_st", soft_dir=tmp_path / "s", **kw)
    again = run_student(split, cfg, tmp_path / "st2", tmp_path / "ck_st2", soft_dir=tmp_path / "s", **kw)
    assert all(abs(student[k] - again[k]) <= 1e-6 for k in student)
    assert (tmp_path / "st" / "model.safetensors").read_bytes() == (tmp_path / "st2" / "model.safetensors").read_bytes()
    alone = run_student(split, cfg, tmp_path / "snt", tmp_path / "ck_snt", **kw)
    assert "Trained without teachers" in (tmp_path / "snt" / "report.md").read_text() and alone["epochs_run"] == 1

    tuned = run_finetune(split, tmp_path / "st", cfg, tmp_path / "ft", tmp_path / "ck_ft", **kw)
    assert tuned["epochs_run"] == 1
    model, fmeta = load_classifier(tmp_path / "ft")
    assert fmeta["arch"] == cfg.student.arch and not model.training
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
