"""The MLflow registry: pyfunc models from code, gated promotion, manual pins, predict and load_model."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.core.config import PipelineConfig
from training_fixtures import colour_images, tiny_model_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    return {"root": root, "train": colour_images(root / "train", 10, seed=0, prefix="tr"),
            "val": colour_images(root / "val", 10, seed=1, prefix="va"),
            "test": colour_images(root / "test", 15, seed=2, prefix="te")}


def _fitted_temperature(model_dir, val):
    from pipeline.training.calibrate import fit_temperature, score_items
    from pipeline.models.classifier import load_classifier

    s = score_items(*load_classifier(model_dir), val)
    return fit_temperature(s.logits, s.labels)


@pytest.mark.slow
def test_gate_keeps_the_champion_against_worse_students_and_moves_for_a_better_one(data, tmp_path):
    from pipeline.registry import promote as P
    from pipeline.registry import versions as R

    cfg = PipelineConfig()
    client = R.registry_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    name, train_ids = "exp-student", [r["item_id"] for r in data["train"]]
    test, cache = data["test"], tmp_path / "cache"

    def register(model_dir, extra_ids=()):
        return R.register_classifier(client, name, model_dir, "exp", train_ids + list(extra_ids)).version

    def champion():
        return int(client.get_model_version_by_alias(name, "champion").version)

    bad = register(tiny_model_dir(tmp_path / "bad", data["train"], shift=1))
    first = P.promote_student(client, name, bad, test, cfg, cache_dir=cache, majority_class="blue")
    # the first promotion has floors too: a systematically wrong model is below the majority-class rate
    assert not first["promoted"] and first["frozen_now"] and first["frozen_items"] == 45
    assert "refused by the floor" in first["reason"] and "always 'blue'" in first["reason"]
    assert [r["rule"] for r in first["floors"] if not r["passed"]] == ["majority"]
    assert first["floors"][0]["diff_hi"] < 0 and int(client.get_model_version_by_alias(name, "challenger").version) == int(bad)

    good_dir = tiny_model_dir(tmp_path / "good0", data["train"])
    t = _fitted_temperature(good_dir, data["val"])
    good = register(tiny_model_dir(tmp_path / "good", data["train"], temperature=t),
                    extra_ids=[r["item_id"] for r in test[:3]])  # it trained on 3 test items
    better = P.promote_student(client, name, good, test[:5], cfg, cache_dir=cache,  # another test list: frozen wins
                               majority_class="blue", baseline_dir=tmp_path / "bad")
    assert not better["frozen_now"] and better["frozen_items"] == 45
    assert better["left_out_trained"] == 3 and better["compared_items"] == 42
    assert better["new"]["top1"] > better["probe"]["top1"] + 0.3 and better["champion"] is None
    assert better["promoted"] and champion() == int(good) and "first promotion, floors cleared" in better["reason"]
    assert all(r["passed"] for r in better["floors"]) and [r["rule"] for r in better["floors"]] == ["majority", "probe"]

    worse = register(tiny_model_dir(tmp_path / "bad2", data["train"], shift=2))
    d = P.promote_student(client, name, worse, test, cfg, cache_dir=cache, majority_class="blue")
    assert not d["promoted"] and d["alias"] == "challenger" and "vs the champion" in d["reason"]
    assert {r["rule"] for r in d["floors"] if not r["passed"]} == {"majority", "champion"}
    assert champion() == int(good) and int(client.get_model_version_by_alias(name, "challenger").version) == int(worse)

    overconfident = register(tiny_model_dir(tmp_path / "hot", data["train"], temperature=0.001))
    d = P.promote_student(client, name, overconfident, test, cfg, cache_dir=cache, majority_class="blue")
    assert d["new"]["top1"] == pytest.approx(d["champion"]["top1"])  # same weights: same answers
    assert all(r["passed"] for r in d["floors"])  # same answers: within every interval, ECE decides
    assert d["new"]["ece"] > d["champion"]["ece"] + cfg.promotion.ece_margin
    assert not d["promoted"] and "ECE" in d["reason"] and champion() == int(good)

    two = register(tiny_model_dir(tmp_path / "two", data["train"], classes=("blue", "green")))
    d = P.promote_student(client, name, two, test, cfg, cache_dir=cache, majority_class="blue")
    assert d["classes_changed"] and d["only_champion"] == ["red"] and d["shared_classes"] == ["blue", "green"]
    assert d["left_out_trained"] == 3 and d["outside_shared_classes"] == 15 and d["compared_items"] == 27
    assert d["promoted"] == all(r["passed"] for r in d["floors"]) and champion() == (int(two) if d["promoted"] else int(good))
    previous = champion()

    actions = [(e["action"], e["version"]) for e in R.history(client, name)]
    assert actions[:4] == [("challenger", int(bad)), ("promoted", int(good)), ("challenger", int(worse)),
                           ("challenger", int(overconfident))]
    assert R.register_classifier(client, name, tmp_path / "bad2", "exp").version == worse  # idempotent

    event = R.pin_champion(client, name, int(bad), reason="roll back for the test")
    assert champion() == int(bad) and event["action"] == "rollback" and event["previous_champion"] == previous
    last = R.history(client, name)[-1]
    assert last["by"] == "manual" and last["reason"] == "roll back for the test" and last["version"] == int(bad)
    tags = client.get_model_version(name, bad).tags
    assert any(k.startswith("pipeline.event.") and "rollback" in v for k, v in tags.items())


@pytest.mark.slow
def test_registered_pyfunc_answers_not_conclusive_under_the_threshold(data, tmp_path):
    """Through the work dir (pipeline.load_model, `pipeline predict`, `pipeline promote`)."""
    from typer.testing import CliRunner

    import pipeline
    from pipeline.app.cli import app
    from pipeline.registry import versions as R

    cfg = PipelineConfig()
    workdir = tmp_path / "work"
    client = R.registry_client(f"sqlite:///{workdir / 'mlflow.db'}")
    name = R.student_name(cfg)
    sure = R.register_classifier(client, name, tiny_model_dir(tmp_path / "a", data["train"], threshold=0.0), "e")
    unsure = R.register_classifier(client, name, tiny_model_dir(tmp_path / "b", data["train"], threshold=0.99), "e")
    R.pin_champion(client, name, int(unsure.version))

    paths = [r["path"] for r in data["test"][:6]]
    out = pipeline.load_model("champion", workdir=workdir).predict(pd.DataFrame({"path": paths}))
    assert list(out.columns[:3]) == ["label", "confidence", "not_conclusive"]
    assert out["not_conclusive"].all() and (out["confidence"] < 0.99).all()
    assert set(out["label"]) <= {"blue", "green", "red"}
    again = pipeline.load_model(int(sure.version), workdir=workdir).predict(pd.DataFrame({"path": paths}))
    assert not again["not_conclusive"].any()
    assert again["confidence"].tolist() == pytest.approx(out["confidence"].tolist())

    runner = CliRunner()
    res = runner.invoke(app, ["predict", "--folder", str(data["root"] / "test"), "--workdir", str(workdir),
                              "--out", str(tmp_path / "preds.csv")])
    assert res.exit_code == 0, res.output
    csv = pd.read_csv(tmp_path / "preds.csv")
    assert len(csv) == 45 and csv["not_conclusive"].all()
    res = runner.invoke(app, ["promote", "--version", str(sure.version), "--workdir", str(workdir)])
    assert res.exit_code == 0, res.output
    assert R.history(client, name)[-1]["version"] == int(sure.version)
    res = runner.invoke(app, ["predict", "--image", paths[0], "--workdir", str(workdir), "--json"])
    assert res.exit_code == 0 and '"not_conclusive":false' in res.stdout
    res = runner.invoke(app, ["promote", "--version", "99", "--workdir", str(workdir)])
    assert res.exit_code == 1 and "no version" in res.output


@pytest.mark.slow
def test_run_promotion_registers_teachers_and_student_and_reports(data, tmp_path):
    from pipeline.registry import versions as R
    from pipeline.registry.training_manifest import write_training_manifest
    from pipeline.registry.promotion import run_promotion

    cfg = PipelineConfig()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    teacher = tiny_model_dir(tmp_path / "teacher", data["train"], seed=1)
    regional = tiny_model_dir(tmp_path / "regional", data["train"], seed=2)
    student = tiny_model_dir(tmp_path / "student", data["train"], threshold=0.5)
    m = run_promotion(student, data["test"], [r["item_id"] for r in data["train"]], cfg, uri, tmp_path / "out",
                      teacher_dirs={"teacher": teacher, "teacher_frontal": regional})
    assert m["promoted"] == 1 and m["version"] == 1 and m["compared_items"] == 45 and 0 <= m["new_top1"] <= 1
    client = R.registry_client(uri)
    names = {rm.name for rm in client.search_registered_models()}
    assert names == {"vehicle-damage-teacher", "vehicle-damage-teacher-frontal", "vehicle-damage-student"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "promoted: champion" in report and "first promotion" in report
    vetoed = run_promotion(tiny_model_dir(tmp_path / "s2", data["train"], seed=3), data["test"], [], cfg, uri,
                           tmp_path / "out2", veto="no passing browser variant")
    assert vetoed["promoted"] == 0 and vetoed["alias"] == "challenger" and "vetoed" in vetoed["decision"]

    from pipeline.training.items import TrainingData

    frame = pd.DataFrame({"split": ["train", "train", "val"], "target": ["red", "blue", "red"]})
    summary = {"flow_run_id": "f1", "phases": {
        "teacher": {"artifact_id": "a1", "cache_hit": True, "metrics": {"test_top1": 0.8, "baseline_test_top1": 0.4}},
        "teacher_frontal": {"artifact_id": "a2", "cache_hit": False, "metrics": {"test_top1": 0.7}},
        "calibration": {"artifact_id": "a3", "cache_hit": False, "path": str(student),
                        "metrics": {"ece_before": 0.2, "ece_after": 0.05, "threshold": 0.5, "other": 1}},
        "promotion": {"artifact_id": "a4", "cache_hit": False, "metrics": m}}}
    path = write_training_manifest(summary, cfg, tmp_path / "manifest.yaml", TrainingData(frame, ["blue", "red"], "test", "target").counts())
    import yaml

    doc = yaml.safe_load(path.read_text())
    assert doc["data"]["counts"] == {"train": {"blue": 1, "red": 1}, "val": {"red": 1}}
    assert doc["phases"]["teacher"]["status"] == "cache hit" and doc["phases"]["calibration"]["status"] == "computed"
    assert doc["figures"]["calibration"] == {"ece_before": 0.2, "ece_after": 0.05, "threshold": 0.5}
    assert doc["figures"]["teacher_frontal"] == {"test_top1": 0.7} and doc["figures"]["promotion"]["promoted"] == 1
    assert doc["model"]["arch"] == "test_efficientnet" and doc["model"]["size_mb"] > 0 and doc["model"]["threshold"] == 0.5
    assert doc["hyperparameters"]["calibration"]["n_bins"] == 15 and "teacher" in doc["hyperparameters"]
    assert doc["environment"]["torch"] and doc["seed"]["split"] == 42 and "git_commit" in doc["code"]
