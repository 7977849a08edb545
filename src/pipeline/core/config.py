"""Pipeline configuration: one pydantic section per phase, loaded from YAML, overridable.

`load_config(path, overrides)` reads a YAML file (or the defaults) and applies `section.key=value`
overrides. Unknown or ill-typed keys raise `ConfigError` naming the valid keys, before any work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from pipeline.core.errors import ConfigError  # noqa: E402  (re-exported: pipeline.core.config.ConfigError)
from pipeline.core.sections import (  # noqa: F401  (re-exported)
    Section, DataConfig, AuditConfig, SplitConfig, DemoConfig, StoreConfig, TrackingConfig,
    RuntimeConfig, DetectConfig, CropsConfig, EmbedConfig, EmbedHeadConfig, IndexConfig, DriftConfig, ReviewConfig,
)
from pipeline.core.training_sections import (  # noqa: F401  (re-exported)
    CalibrationConfig, PromotionConfig, ExportConfig, AugmentConfig, TrainConfig, PhaseTrainConfig,
    TeacherConfig, RegionSpec, RegionalConfig, SoftLabelsConfig, StudentConfig, FinetuneConfig,
    StudyStage, StudyConfig, INHERITED_TRAIN_KEYS, PHASE_RUNTIME_KEYS,
)
from pipeline.core.training_sections import TRAIN_RUNTIME_KEYS as _TRAIN_RUNTIME


class PipelineConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    crops: CropsConfig = Field(default_factory=CropsConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    embed_head: EmbedHeadConfig = Field(default_factory=EmbedHeadConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    regional: RegionalConfig = Field(default_factory=RegionalConfig)
    soft_labels: SoftLabelsConfig = Field(default_factory=SoftLabelsConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    study: StudyConfig = Field(default_factory=StudyConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)


    @model_validator(mode="after")
    def _inherit_train(self) -> "PipelineConfig":
        """Training phase fields left null take the train section's value (training_sections decides which)."""
        for section in TRAIN_PHASE_SECTIONS:
            getattr(self, section).inherit_train(self.train)
        return self


# The training phase sections: every PhaseTrainConfig section of the config.
TRAIN_PHASE_SECTIONS = tuple(name for name, f in PipelineConfig.model_fields.items()
                             if isinstance(f.annotation, type) and issubclass(f.annotation, PhaseTrainConfig))


def train_runtime_keys(*sections: str) -> tuple[str, ...]:
    """The dotted keys of `sections` that training reads at run time (never in an artifact id): train's
    runtime keys, and the inherited ones of the training phase sections."""
    keys = {"train": _TRAIN_RUNTIME, **{s: PHASE_RUNTIME_KEYS for s in TRAIN_PHASE_SECTIONS}}
    return tuple(f"{s}.{k}" for s in sections for k in keys.get(s, ()))


TRAIN_RUNTIME_KEYS = train_runtime_keys("train", *TRAIN_PHASE_SECTIONS)


def valid_keys(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> list[str]:
    """All dotted keys of the config, e.g. ['audit.min_side', ...]."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(valid_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _format_validation(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            section = ".".join(str(p) for p in e["loc"][:-1])
            choices = [k for k in valid_keys() if k.startswith(section + ".")] if section else sorted(
                PipelineConfig.model_fields
            )
            lines.append(f"unknown key '{loc}'; valid keys here: {', '.join(choices)}")
        else:
            lines.append(f"'{loc}': {e['msg']} (got {e.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(
            f"override key '{key}' must be section.key; valid keys: {', '.join(valid_keys())}"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    data = dict(data)
    keys = set(valid_keys())
    for text in overrides or []:
        parts, value = parse_override(text)
        dotted = ".".join(parts)
        if dotted not in keys:
            section = parts[0]
            near = [k for k in keys if k.startswith(section + ".")]
            raise ConfigError(
                f"unknown config key '{dotted}'; valid keys: {', '.join(sorted(near or keys))}"
            )
        node = data
        for p in parts[:-1]:
            node[p] = dict(node.get(p) or {})
            node = node[p]
        node[parts[-1]] = value
    return data


def _train_overrides_win(data: dict, overrides: list[str] | None) -> dict:
    """A `--set train.K=` (K inherited by training phases) beats the phases' YAML values of K; a
    phase's own `--set` still beats it (precedence: phase --set, train --set, phase YAML, train YAML)."""
    keys = [".".join(parse_override(o)[0]) for o in overrides or []]
    for key in INHERITED_TRAIN_KEYS:
        if f"train.{key}" not in keys:
            continue
        for section in TRAIN_PHASE_SECTIONS:
            if f"{section}.{key}" not in keys and isinstance(data.get(section), dict):
                data[section] = {k: v for k, v in data[section].items() if k != key}
    return data


def build_config(data: dict | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    merged = _train_overrides_win(apply_overrides(data or {}, overrides), overrides)
    try:
        return PipelineConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_validation(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
    return build_config(data, overrides)
