"""Configuration: YAML + overrides, failing before any work on unknown or ill-typed keys."""
from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, PipelineConfig, load_config, valid_keys

ROOT = Path(__file__).resolve().parents[1]


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
