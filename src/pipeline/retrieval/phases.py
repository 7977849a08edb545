"""Declarations of the retrieval phases: crops, contexts, embeddings, index, validation."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.item_cache import ItemCache
from pipeline.core.phases import PhaseRun, PhaseSpec, register
from pipeline.core.sharding import RESOLVED, Sharding
from pipeline.retrieval.shards import crops_plan, crops_work, embed_config, embed_plan, embed_work, weights_dir


def _item_cache(run: PhaseRun, name: str) -> ItemCache | None:
    """The phase's per-item cache: `<item_cache>/<name>`, local or remote (mirrored in `item_mirror`)."""
    return ItemCache.from_runtime(run.runtime, name)


def _run_crops(run: PhaseRun) -> dict[str, Any]:
    """The crops, with the detector the id names (`run.params["detector"]`: found again, never re-decided)."""
    from pipeline.retrieval.crops import run_crops

    return run_crops(
        run.inputs["split"] / "split.parquet", Path(run.runtime["dataset_root"]), run.cfg.detect, run.cfg.crops,
        run.out_dir, _item_cache(run, "crops"), progress=run.progress, max_pixels=run.params["max_pixels"],
        weights_dir=weights_dir(run), detector=run.params.get("detector"),
    )


def _detector(cfg: Any, runtime: dict[str, Any]) -> dict[str, Any]:
    """Which detector `auto` will pick (and the sha256 of its files): part of the crops id, resolved once
    (a shard gets the flow's in `runtime[RESOLVED]`)."""
    from pipeline.retrieval.detect import resolve_detector

    if "detector" in (runtime.get(RESOLVED) or {}):
        return {"detector": runtime[RESOLVED]["detector"]}
    weights = runtime.get("weights_dir")
    return {"detector": resolve_detector(cfg.detect, Path(weights) if weights else None).identity}


def _run_contexts(run: PhaseRun) -> dict[str, Any]:
    from pipeline.retrieval.contexts import run_contexts

    return run_contexts(run.inputs["crops"], run.out_dir)


def _embedding_head(cfg: Any, runtime: dict[str, Any]) -> dict[str, Any]:
    """`embed.backend: trained`: the head's artifact id (a registry alias resolved now), so the id and
    the lineage of the embeddings name the head that made them."""
    if "head" in (runtime.get(RESOLVED) or {}):
        return {"head": runtime[RESOLVED]["head"]}
    head = cfg.embed.head if cfg.embed.backend == "trained" else None
    if head and str(head).startswith("registry:"):
        from pipeline.core.phases import resolve_reference

        head = resolve_reference("embed_head", str(head), cfg, runtime)
    return {"head": head}


def _run_embeddings(run: PhaseRun) -> dict[str, Any]:
    from pipeline.retrieval.embeddings import run_embeddings

    return run_embeddings(run.inputs["crops"], run.inputs["contexts"], embed_config(run), run.out_dir,
                          item_cache=_item_cache(run, "embeddings"), device=run.runtime.get("device", "auto"),
                          progress=run.progress, store=run.store)


# The study's loss settings the head's criterion reads (retrieval.metric_losses.make_criterion).
STUDY_LOSS_KEYS = ("miner", "triplet_margin", "pair_margins", "arcface_margin", "arcface_scale")


def head_enabled(cfg: Any) -> bool:
    """Whether the nightly trains and judges an embedding head (not for a hand-set `trained` head)."""
    return cfg.embed_head.adopt != "never" and cfg.embed.backend != "trained"


def _with_head(*names: str) -> Any:
    def inputs_for(cfg: Any, options: dict[str, Any]) -> tuple[str, ...]:
        return (*names, "embedding_head") if head_enabled(cfg) else names

    return inputs_for


def _run_embedding_head(run: PhaseRun) -> dict[str, Any]:
    from pipeline.retrieval.adopt import run_embedding_head
    from pipeline.retrieval.validate import photo_groups

    groups = photo_groups(run.inputs["crops"], run.store, run.inputs["split"])
    return run_embedding_head(run.inputs["embeddings"], run.inputs["crops"], run.out_dir, run.cfg.embed_head,
                              run.cfg.study, k=run.params["k"], groups=groups)


def _run_index(run: PhaseRun) -> dict[str, Any]:
    from pipeline.retrieval.index import run_index

    return run_index(run.inputs["embeddings"], run.inputs["crops"], run.inputs["contexts"], run.cfg.index, run.out_dir,
                     head_dir=run.inputs.get("embedding_head"))


def _run_validation(run: PhaseRun) -> dict[str, Any]:
    from pipeline.retrieval.validate import run_validation

    return run_validation(run.inputs["index"], run.inputs["embeddings"], run.inputs["crops"], run.out_dir,
                          k=run.params["k"], seed=run.params["seed"], store=run.store, split_dir=run.inputs["split"],
                          head_dir=run.inputs.get("embedding_head"))


register(
    PhaseSpec(
        name="crops", version="3", inputs=("split",), outputs=("crops.parquet",), sections=("detect", "crops"),
        run=_run_crops, source=_detector,
        extra_params=lambda cfg, opt: {"max_pixels": cfg.audit.max_pixels, "detector": opt.get("detector")},
        reports=("report.md", "contact_sheet.png", "skipped.parquet"), pool="gpu",
        sharding=Sharding(crops_plan, crops_work),
        description="vehicle box, grid crops of clean surfaces, damage crops from polygons",
    ),
    PhaseSpec(
        name="contexts", version="1", inputs=("crops",), outputs=("contexts.parquet",), sections=(),
        run=_run_contexts, reports=("report.md",),
        description="deterministic text context of each crop",
    ),
    PhaseSpec(
        name="embeddings", version="3", inputs=("crops", "contexts"), outputs=("embeddings.parquet", "embedder.json"),
        sections=("embed",), runtime_keys=("embed.batch_size", "embed.num_workers", "embed.allow_download", "embed.head"),
        source=_embedding_head, extra_params=lambda cfg, opt: {"head": opt.get("head")} if opt.get("head") else {},
        run=_run_embeddings, reports=("report.md", "embedder.json"), pool="gpu",
        sharding=Sharding(embed_plan, embed_work),
        description="image + text embeddings of the crops, sharded, cached per crop",
    ),
    PhaseSpec(
        name="embedding_head", version="1", inputs=("embeddings", "crops", "split"),
        outputs=("decision.json", "report.md"), sections=("embed_head",), run=_run_embedding_head,
        extra_params=lambda cfg, opt: {"k": 5, "study": {k: getattr(cfg.study, k) for k in STUDY_LOSS_KEYS}},
        reports=("report.md", "decision.json"),
        description="a head on the frozen image features, adopted when it beats them on held-out photos",
    ),
    PhaseSpec(
        name="index", version="6", inputs=("embeddings", "crops", "contexts", "embedding_head"),
        inputs_for=_with_head("embeddings", "crops", "contexts"),
        outputs=("index.faiss", "metadata.parquet", "index.json"), sections=("index",), runtime_keys=("index.use_gpu",),
        run=_run_index, reports=("report.md", "index.json"),
        description="FAISS index (of the adopted head's vectors when there is one), self-check, recall vs exact search",
    ),
    PhaseSpec(
        name="validation", version="4", inputs=("index", "embeddings", "crops", "split", "embedding_head"),
        inputs_for=_with_head("index", "embeddings", "crops", "split"),
        outputs=("report.md", "metrics.json"), sections=(), run=_run_validation,
        extra_params=lambda cfg, opt: {"k": 5, "seed": 0},
        reports=("report.md", "metrics.json", "pca.png", "tsne.png", "examples.png"),
        description="retrieval figures (image-only headline), plots, filter checks",
    ),
)
