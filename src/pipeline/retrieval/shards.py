"""Shard hooks of the per-item retrieval phases (crops, embeddings): see `pipeline.core.sharding`.

A shard fills the phase's per-item cache for its items; the phase's own run then reads them back, so
the artifact is the same bytes as a single-process run:

- crops: items are row numbers of split.parquet (first occurrence of each item id, known damage
  state, not yet in the cache); a shard decodes, detects and crops them into cache entries.
- embeddings: items are positions in crop_id order of the crops not yet in the cache; the context is
  the sorted list of their unique texts, which every shard encodes whole (the same text batches as a
  single-process run with a cold cache), so the fused vectors are bit-identical.

The per-item cache may be remote (`pipeline.core.item_cache`): a plan lists it once; a shard asks it
nothing (its items are the plan's misses), computes them into the local mirror and uploads them
before it returns, so the phase's run on another machine finds every one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.item_cache import ItemCache
from pipeline.core.phases import PhaseRun


def _cache(run: PhaseRun, name: str, scan: bool) -> ItemCache:
    """The phase's per-item cache (sharded runs always have one); `scan`: see `ItemCache`."""
    cache = ItemCache.from_runtime(run.runtime, name, scan=scan)
    if cache is None:
        raise ValueError(f"a sharded {name} run needs a per-item cache (runtime item_cache)")
    return cache


# -- crops --------------------------------------------------------------------------------------
def _crops_setup(run: PhaseRun) -> tuple[list[dict[str, Any]], str, Any, Path | None]:
    import pyarrow.parquet as pq

    from pipeline.retrieval.crops import item_params
    from pipeline.retrieval.detect import resolve_detector

    weights = Path(run.runtime["weights_dir"]) if run.runtime.get("weights_dir") else None
    choice = resolve_detector(run.cfg.detect, weights)
    rows = pq.read_table(run.inputs["split"] / "split.parquet").to_pylist()
    return rows, item_params(run.cfg.detect, run.cfg.crops, choice), choice, weights


def crops_plan(run: PhaseRun) -> tuple[list[int], dict[str, Any]]:
    """Row numbers of the photos a crops run would process (not cached, not duplicates, known state)."""
    from pipeline.retrieval.crops import item_cache_key

    rows, params, _, _ = _crops_setup(run)
    cache = _cache(run, "crops", scan=True)
    seen: set[str] = set()
    todo = []
    for i, row in enumerate(rows):
        if row["item_id"] in seen or row.get("has_damage") is None:
            continue
        seen.add(row["item_id"])
        if not cache.has_entry(item_cache_key(row, params)):
            todo.append(i)
    return todo, {}


def crops_work(run: PhaseRun, items: list[int], context: dict[str, Any]) -> dict[str, Any]:
    """Decode, detect and crop these rows into the per-item cache."""
    from pipeline.retrieval.crops import _cached_or_processed, _process
    from pipeline.retrieval.detect import make_detector

    rows, params, choice, weights = _crops_setup(run)
    detectors: list[Any] = []

    def get_detector() -> Any:
        if not detectors:
            detectors.append(make_detector(run.cfg.detect, weights, choice))
        return detectors[0]

    counts = {"processed": 0, "cached": 0}
    root = Path(run.runtime["dataset_root"])
    with _cache(run, "crops", scan=False) as cache:  # uploaded (a remote cache) before the shard returns
        for i in items:
            row = rows[i]
            _, how = _cached_or_processed(row, params, cache, run.out_dir, lambda: _process(
                row, root, get_detector, run.cfg.detect, run.cfg.crops, run.out_dir, run.params["max_pixels"]))
            counts[how] += 1
    return {"n_processed": counts["processed"], "n_cached": counts["cached"]}


# -- embeddings ---------------------------------------------------------------------------------
def _embed_setup(run: PhaseRun) -> tuple[Any, list[dict[str, str]], dict[str, str], list[str]]:
    from pipeline.retrieval.embed import item_keys, make_embedder, read_items

    crops, texts = read_items(run.inputs["crops"], run.inputs.get("contexts"))
    emb = make_embedder(run.cfg.embed, run.runtime.get("device", "auto"), store=run.store)
    return emb, crops, texts, item_keys(emb, crops, texts)


def embed_plan(run: PhaseRun) -> tuple[list[int], dict[str, Any]]:
    """Positions (crop_id order) of the crops without a cached vector, and their unique texts."""
    from pipeline.retrieval.embed import SUFFIX

    _, crops, texts, keys = _embed_setup(run)
    cache = _cache(run, "embeddings", scan=True)
    todo = [i for i, k in enumerate(keys) if not cache.has_file(k, SUFFIX)]
    unique = sorted({texts[crops[i]["crop_id"]] for i in todo if texts.get(crops[i]["crop_id"])})
    return todo, {"texts": unique}


def embed_work(run: PhaseRun, items: list[int], context: dict[str, Any]) -> dict[str, Any]:
    """Embed these crops (fixed forward chunks, the plan's text batches) into the per-item cache."""
    from pipeline.retrieval.embed import CropDataset, _text_vectors, cache_vector, crop_loader, fresh_vectors

    emb, crops, texts, keys = _embed_setup(run)
    text_vecs = _text_vectors(emb, context["texts"])
    ds = CropDataset([run.inputs["crops"] / crops[i]["crop_path"] for i in items], [None] * len(items), emb.preprocess)
    with _cache(run, "embeddings", scan=False) as cache:  # uploaded (a remote cache) before the shard returns
        for idx, _, pixels, counts in crop_loader(ds, run.cfg.embed, emb.device):
            mine = [items[j] for j in idx]
            fused = fresh_vectors(emb, pixels, counts, [texts.get(crops[i]["crop_id"]) for i in mine], text_vecs)
            for i, vec in zip(mine, fused):
                cache_vector(cache, keys[i], vec)
    return {"n_embedded": len(items), "device": emb.device}
