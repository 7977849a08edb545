"""Configuration: YAML + overrides, failing before any work on unknown or ill-typed keys."""
from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, PipelineConfig, load_config, valid_keys

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_repo_configs_load():
    assert load_config().audit.min_side == 100
    for name in ("default.yaml", "demo.yaml"):
        cfg = load_config(ROOT / "configs" / name)
        assert isinstance(cfg, PipelineConfig)
    assert load_config(ROOT / "configs" / "default.yaml") == PipelineConfig()


def test_overrides_are_typed():
    cfg = load_config(None, ["audit.min_side=64", "split.ratios=[0.7,0.15,0.15]", "audit.allowed_licenses=[CC0]"])
    assert cfg.audit.min_side == 64
    assert cfg.split.ratios == (0.7, 0.15, 0.15)
    assert cfg.audit.allowed_licenses == ["CC0"]


def test_unknown_key_names_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["audit.min_sid=3"])
    assert "audit.min_sid" in str(err.value) and "audit.min_side" in str(err.value)


def test_unknown_key_in_yaml_names_valid_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("audit:\n  bogus: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert "audit.bogus" in str(err.value) and "audit.min_side" in str(err.value)


def test_unknown_section_and_bad_types_fail():
    with pytest.raises(ConfigError, match="valid keys"):
        load_config(None, ["nosuch.key=1"])
    with pytest.raises(ConfigError, match="min_side"):
        load_config(None, ["audit.min_side=abc"])
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config(None, ["split.ratios=[0.5,0.1,0.1]"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["audit.min_side"])


def test_valid_keys_cover_sections():
    keys = valid_keys()
    assert "audit.min_side" in keys and "split.seed" in keys and "tracking.uri" in keys


def test_training_phases_inherit_train_as_training_sections_declares():
    """One declaration (core.training_sections) decides what a training phase inherits from `train` and
    what of it is runtime; the config, the override precedence and the phase ids follow it."""
    from pipeline.core import training_sections as T
    from pipeline.core.config import TRAIN_PHASE_SECTIONS, build_config, train_runtime_keys

    assert TRAIN_PHASE_SECTIONS == ("teacher", "regional", "student", "finetune")
    cfg = build_config({"student": {"image_size": 64}}, ["train.image_size=48", "train.batch_size=5", "train.epochs=2"])
    for section in TRAIN_PHASE_SECTIONS:
        phase = getattr(cfg, section)
        assert (phase.epochs, phase.batch_size, phase.image_size) == (2, 5, 48)  # a train --set beats a phase's YAML
    assert build_config({"student": {"image_size": 64}}).student.image_size == 64
    # "Runtime" in a field's description and the runtime declaration agree
    runtime = {k for k, f in T.TrainConfig.model_fields.items() if (f.description or "").startswith("Runtime")}
    assert runtime == set(T.TRAIN_RUNTIME_KEYS)
    phase_runtime = {k for k, f in T.PhaseTrainConfig.model_fields.items() if (f.description or "").startswith("Runtime")}
    assert phase_runtime == set(T.PHASE_RUNTIME_KEYS) <= set(T.INHERITED_TRAIN_KEYS)
    assert train_runtime_keys("train", "teacher", "soft_labels") == (
        *(f"train.{k}" for k in T.TRAIN_RUNTIME_KEYS), *(f"teacher.{k}" for k in T.PHASE_RUNTIME_KEYS))


def test_runtime_keys_of_training_do_not_change_training_artifact_ids():
    from pipeline.core.config import TRAIN_PHASE_SECTIONS, TRAIN_RUNTIME_KEYS, build_config
    from pipeline.core.phases import nodes

    regional = "regional.teachers=[{name: north, column: region, values: [north]}]"
    runtime = ["train.batch_size=7", "train.num_workers=2", "train.amp=bf16", "train.eval_batch_size=9",
               *(f"{s}.batch_size=3" for s in TRAIN_PHASE_SECTIONS)]
    assert {o.split("=")[0] for o in runtime} <= set(TRAIN_RUNTIME_KEYS)
    base, same, other = (build_config({}, [regional, *o]) for o in ([], runtime, ["train.image_size=64"]))
    training = ("teacher", "teacher_north", "soft_labels", "student", "student_no_teacher", "finetune", "calibration",
                "promotion")

    def ids(cfg):
        graph = nodes(cfg, {"format": "jsonl"})
        return {n: graph[n].spec.artifact_id(cfg, ["x"], {"format": "jsonl"}, graph[n].instance or None) for n in training}

    assert ids(base) == ids(same)
    assert all(a != b for a, b in zip(ids(base).values(), ids(other).values()))
