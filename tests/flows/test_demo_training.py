"""Training on a labelled JSONL dataset (whole images, a `region` column, grayscale files among them)
through the `train` flow, with a regional teacher on one region; plus the demo's printed table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.app.demo_report import demo_table, random_init_notes

CLASSES = ("checker", "hstripes", "vstripes")


def _pattern(kind: str, rng: np.random.Generator, size: int = 112) -> np.ndarray:
    period = int(rng.integers(6, 16))
    yy, xx = np.mgrid[0:size, 0:size]
    base = {"checker": (yy // period + xx // period) % 2, "hstripes": (yy // period) % 2,
            "vstripes": (xx // period) % 2}[kind].astype(np.float32)
    return np.clip(base * 170 + 40 + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)


def write_jsonl_dataset(root: Path, per_class: int = 20, seed: int = 0) -> Path:
    """root/images/*.png (every third one grayscale) + root/labels.jsonl with label and region."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for kind in CLASSES:
        for i in range(per_class):
            gray = _pattern(kind, rng)
            rel = f"images/{kind}_{i:02d}.png"
            if i % 3 == 0:
                Image.fromarray(gray, "L").save(root / rel)
            else:
                tint = np.stack([gray, np.roll(gray, 3, 1), gray // 2 + 60], axis=-1).astype(np.uint8)
                Image.fromarray(tint, "RGB").save(root / rel)
            lines.append(json.dumps({"path": rel, "label": kind, "region": "north" if i % 2 == 0 else "south",
                                     "has_damage": False}))
    (root / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_demo_table_shows_models_calibration_promotion_and_random_init_note():
    phases = {
        "teacher": {"metrics": {"baseline_val_top1": 0.9, "baseline_test_top1": 0.8, "val_top1": 0.95,
                                "test_top1": 0.93, "random_init": 0.0}},
        "teacher_north": {"metrics": {"val_top1": 0.7, "test_top1": 0.6, "baseline_test_top1": 0.5, "random_init": 1.0}},
        "student": {"metrics": {"val_top1": 0.91, "test_top1": 0.9, "random_init": 0.0}},
        "calibration": {"metrics": {"ece_before": 0.12, "ece_after": 0.04, "temperature": 1.7, "threshold": 0.65,
                                    "threshold_reached": 0, "test_coverage_at_threshold": 0.81, "test_top1": 0.9}},
        "promotion": {"metrics": {"promoted": 0, "version": 3.0}, "info": {"decision": "top-1 lower than the champion's"}},
    }
    text = demo_table({"phases": phases}, 125.0)
    assert "regional teacher north (global teacher on it: 0.500)" in text
    assert "0.120 -> 0.040" in text and "0.65 (none reached)" in text and "0.810" in text
    assert "kept as challenger (top-1 lower than the champion's)" in text and "v3" in text
    assert "export: not run" in text and "wall time 2.1 min (125 s)" in text and "peak memory" in text
    assert random_init_notes(phases) == [
        "NOTE: teacher_north was RANDOM-INITIALISED (no pretrained weights): its figures are not a pretrained model's."]
    assert "RANDOM-INITIALISED" in text


@pytest.mark.slow
def test_train_flow_on_jsonl_with_regional_teacher_and_grayscale(prefect_server, tmp_path):
    from pipeline_flows.train import train
    from training_helpers import tiny_config

    data = write_jsonl_dataset(tmp_path / "data")
    cfg = tiny_config("regional.teachers=[{name: north, column: region, values: [north]}]", "train.epochs=1",
                      "teacher.mixup_alpha=0", "teacher.cutmix_alpha=0", "export.onnx_variants=[fp32]",
                      "export.tfjs_variants=[]", "export.n_inputs=8", "export.n_calibration=4")
    summary = train(dataset=str(data), format="jsonl", workdir=str(tmp_path / "w"), config=cfg)
    phases = summary["phases"]
    for name in ("teacher", "teacher_north", "soft_labels", "student", "student_no_teacher", "finetune",
                 "calibration", "promotion"):
        assert name in phases, name
    teacher = phases["teacher"]["metrics"]
    assert teacher["n_classes"] == 3 and teacher["random_init"] == 1.0 and teacher["n_train"] > 0
    north = phases["teacher_north"]["metrics"]
    assert 0 < north["n_train"] < teacher["n_train"]  # the regional subset only
    soft = phases["soft_labels"]["metrics"]
    assert soft["max_sum_error"] < 1e-4
    if north["teaches"]:  # a regional teacher joins the soft labels only when it beats the global one on its val
        assert soft["coverage_teacher_north"] == north["n_train"] and soft["n_excluded"] == 0
    else:
        assert soft["n_excluded"] == 1 and "coverage_teacher_north" not in soft
    meta = json.loads((Path(phases["calibration"]["path"]) / "model.json").read_text())
    assert meta["class_names"] == list(CLASSES) and meta["source"] == "images" and meta["target"] == "label"
    cal = phases["calibration"]["metrics"]
    assert 0.05 <= cal["temperature"] <= 20 and cal["n_test"] == phases["finetune"]["metrics"]["test_n"]
    # no TF.js variant exported: the student cannot become champion, and the manifest records the run
    assert phases["promotion"]["metrics"]["promoted"] == 0
    manifest = tmp_path / "w" / "runs" / f"{summary['flow_run_id']}.training.yaml"
    doc = yaml.safe_load(manifest.read_text())
    assert doc["flow_run_id"] == summary["flow_run_id"] and doc["model"]["phase"] == "calibration"
    assert set(doc["data"]["counts"]) == {"train", "val", "test"} and "teacher_north" in doc["figures"]
    # written by the flow layer, not the phase: the promotion artifact holds only the data counts
    promotion_dir = Path(phases["promotion"]["path"])
    assert json.loads((promotion_dir / "data_counts.json").read_text()) == doc["data"]["counts"]
    assert not list(promotion_dir.glob("*manifest*")) and summary["training_manifest"] == str(manifest)
    from pipeline.core.workspace import Workspace
    from pipeline.registry.versions import registry_client

    client = registry_client(Workspace(tmp_path / "w").tracking_uri(cfg))  # logged to the flow's parent run
    assert manifest.name in [a.path for a in client.list_artifacts(summary["mlflow_run_id"])]


@pytest.mark.slow
def test_train_flow_on_shuffled_labels_completes_and_makes_no_champion(prefect_server, tmp_path):
    """Nothing can be learnt when labels are shuffled: the run completes and the promotion floors refuse."""
    from pipeline_flows.train import train
    from training_helpers import tiny_config

    from pipeline.core.workspace import Workspace
    from pipeline.registry.versions import registry_client

    data = write_jsonl_dataset(tmp_path / "data", per_class=10, seed=3)
    rows = [json.loads(line) for line in (data / "labels.jsonl").read_text().splitlines()]
    labels = np.random.default_rng(0).permutation([r["label"] for r in rows])
    (data / "labels.jsonl").write_text("".join(json.dumps({**r, "label": str(y)}) + "\n" for r, y in zip(rows, labels)))
    cfg = tiny_config("train.epochs=1", "teacher.mixup_alpha=0", "teacher.cutmix_alpha=0",
                      "export.onnx_variants=[fp32]", "export.tfjs_variants=[]", "export.n_inputs=8",
                      "export.n_calibration=4")
    summary = train(dataset=str(data), format="jsonl", workdir=str(tmp_path / "w"), config=cfg)
    promotion = summary["phases"]["promotion"]
    decision = json.loads((Path(promotion["path"]) / "decision.json").read_text())
    assert promotion["metrics"]["promoted"] == 0 and "refused by the floor" in decision["reason"]
    assert [r["rule"] for r in decision["floors"] if not r["passed"]][:1] == ["majority"]
    client = registry_client(Workspace(tmp_path / "w").tracking_uri(cfg))
    name = decision["name"]
    assert "champion" not in client.get_registered_model(name).aliases
