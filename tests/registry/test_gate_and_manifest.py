"""The promotion gate's rules and the training manifest as plain functions: no MLflow, no trained model (the inner
loop's registry tests; tests/registry/test_training_registry.py runs them on registered models)."""
import json

from pipeline.core.config import PipelineConfig
from pipeline.registry.gate import correct_share, floors, majority_of
from pipeline.registry.training_manifest import training_manifest

# 40 test crops from 20 photos (two each); the train split's majority class `clean` is a quarter of them
RECORDS = [{"item_id": f"i{n:02d}", "group": f"photo{n // 2:02d}", "label": "clean" if n % 4 == 0 else "dent"}
           for n in range(40)]
ALL_RIGHT = {r["item_id"]: True for r in RECORDS}
MAJORITY_ANSWERS = {r["item_id"]: r["label"] == "clean" for r in RECORDS}  # always answering `clean`


def _by_rule(rules: list[dict]) -> dict[str, dict]:
    return {r["rule"]: r for r in rules}


def test_a_model_that_learnt_nothing_hits_the_majority_floor():
    rules = _by_rule(floors(MAJORITY_ANSWERS, RECORDS, majority_class="clean", probe=None, champion=None))
    assert set(rules) == {"majority"}
    r = rules["majority"]
    assert not r["passed"] and r["diff_value"] == 0.0 and r["diff_lo"] <= 0.0 <= r["diff_hi"]
    assert "not above the majority-class rate beyond the interval" in r["text"] and "'clean'" in r["text"]


def test_a_good_model_clears_every_floor_and_says_by_how_much():
    probe = {k: n % 5 != 0 for n, k in enumerate(ALL_RIGHT)}  # the probe is right on 80%
    rules = _by_rule(floors(ALL_RIGHT, RECORDS, majority_class="clean", probe=probe, champion=dict(ALL_RIGHT)))
    assert [rules[k]["passed"] for k in ("majority", "probe", "champion")] == [True, True, True]
    assert rules["majority"]["diff_value"] == 0.75 and rules["majority"]["diff_lo"] > 0  # 1.00 against 0.25
    assert rules["probe"]["diff_value"] == 0.2 and rules["champion"]["diff_value"] == 0.0


def test_worse_than_the_probe_or_the_champion_beyond_the_interval_is_refused_within_it_is_not():
    half = {k: n % 2 == 0 for n, k in enumerate(ALL_RIGHT)}  # right on one crop of each photo: 50%
    rules = _by_rule(floors(half, RECORDS, majority_class=None, probe=dict(ALL_RIGHT), champion=dict(ALL_RIGHT)))
    assert set(rules) == {"probe", "champion"}
    for name in ("probe", "champion"):
        assert not rules[name]["passed"] and rules[name]["diff_hi"] < 0, rules[name]
        assert "worse beyond the interval" in rules[name]["text"]
    one_less = {**ALL_RIGHT, "i07": False}  # one crop of 40 worse: within the interval
    rules = _by_rule(floors(one_less, RECORDS, majority_class=None, probe=dict(ALL_RIGHT), champion=None))
    assert rules["probe"]["passed"] and rules["probe"]["diff_value"] == -0.025 and rules["probe"]["diff_hi"] >= 0


def test_the_intervals_resample_photos_and_are_seeded():
    probe = {k: n % 3 != 0 for n, k in enumerate(ALL_RIGHT)}
    a = floors(ALL_RIGHT, RECORDS, majority_class="clean", probe=probe, champion=None, seed=3)
    assert a == floors(ALL_RIGHT, RECORDS, majority_class="clean", probe=probe, champion=None, seed=3)
    assert all(r["diff_n_groups"] == 20 for r in a), a


def test_majority_class_and_correct_share():
    assert majority_of({"dent": 5, "clean": 9}, ["clean", "dent"]) == "clean"
    assert majority_of({"dent": 4, "clean": 4}, ["dent", "clean"]) == "dent"  # a tie: the first in the class list
    assert majority_of({}, ["clean"]) is None
    assert correct_share({"a": True, "b": False, "c": True, "d": True}) == 0.75



def test_a_run_of_the_promotion_alone_names_the_model_it_promoted(tmp_path):
    """`pipeline run-phase promotion` runs one phase: the manifest's model comes from the promotion's inputs."""
    model = tmp_path / "calibration"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({"arch": "tf_efficientnet_lite0", "class_names": ["clean", "dent"],
                                                  "image_size": 160, "temperature": 1.4, "threshold": 0.55}))
    (model / "model.safetensors").write_bytes(b"\0" * 2**20)
    promotion = {"artifact_id": "p1", "cache_hit": False, "metrics": {"promoted": 1.0}}
    alone = training_manifest({"flow_run_id": "f1", "phases": {"promotion": promotion}}, PipelineConfig())
    assert alone["model"] is None and list(alone["phases"]) == ["promotion"]
    doc = training_manifest({"flow_run_id": "f1", "phases": {"promotion": promotion},
                             "model_inputs": {"calibration": {"artifact_id": "c1", "path": str(model)}}}, PipelineConfig())
    assert doc["model"]["phase"] == "calibration" and doc["model"]["artifact_id"] == "c1"
    assert doc["model"]["arch"] == "tf_efficientnet_lite0" and doc["model"]["threshold"] == 0.55
    assert doc["model"]["size_mb"] == 1.0 and list(doc["phases"]) == ["promotion"]  # no phase it did not run
