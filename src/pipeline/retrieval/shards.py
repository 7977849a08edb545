"""Shard hooks of the per-item retrieval phases (crops, embeddings): see `pipeline.core.sharding`.

A shard fills the phase's per-item cache for its items; the phase's own run then reads them back, so
the artifact is the same bytes as a single-process run:

- crops: items are row numbers of split.parquet (first occurrence of each item id, known damage
  state, not yet in the cache); a shard decodes, detects and crops them into cache entries, with the
  detector the artifact id names (`run.params["detector"]`, found again here: never a new decision).
- embeddings: items are positions in crop_id order of the crops not yet in the cache, embedded with
  the head the id names (`run.params["head"]`); the context is the sorted list of their unique texts,
  which every shard encodes whole (the same text batches as a single-process run with a cold cache),
  so the fused vectors are bit-identical.

The flow process resolves a phase's source once (`tasks/shards.py` hands it to every shard in the
runtime's `resolved`, which the phase's source hook returns as is), so every shard computes the items
of the id the flow computed.

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
def weights_dir(run: PhaseRun) -> Path | None:
    """Where bare Ultralytics weight names resolve on this machine (`Workspace.weights`)."""
    return Path(run.runtime["weights_dir"]) if run.runtime.get("weights_dir") else None


def _crops_setup(run: PhaseRun) -> tuple[list[dict[str, Any]], str, Any, Path | None]:
    """The split's rows, the per-item cache params and the detector the artifact id names (`run.params`:
    resolved once for the id, found again here, never re-decided)."""
    import pyarrow.parquet as pq

    from pipeline.retrieval.crops import item_params, named_choice

    weights = weights_dir(run)
    choice = named_choice(run.cfg.detect, weights, run.params.get("detector"))
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
    from pipeline.retrieval.crops import _cached_or_processed, _process, lazy_detector

    rows, params, choice, weights = _crops_setup(run)
    get_detector = lazy_detector(run.cfg.detect, weights, choice)
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
def embed_config(run: PhaseRun) -> Any:
    """The embed section with the head the artifact id names (`run.params`: a registry alias resolved once
    for the id), so that the phase and its shards load the same head."""
    embed = run.cfg.embed
    if run.params.get("head"):
        embed = embed.model_copy(update={"head": run.params["head"]})
    return embed


def _embed_setup(run: PhaseRun) -> tuple[Any, list[dict[str, str]], dict[str, str], list[str]]:
    from pipeline.retrieval.embeddings import item_keys, make_embedder, read_items

    crops, texts = read_items(run.inputs["crops"], run.inputs.get("contexts"))
    emb = make_embedder(embed_config(run), run.runtime.get("device", "auto"), store=run.store)
    return emb, crops, texts, item_keys(emb, crops, texts)


def embed_plan(run: PhaseRun) -> tuple[list[int], dict[str, Any]]:
    """Positions (crop_id order) of the crops without a cached vector, and their unique texts."""
    from pipeline.retrieval.embeddings import SUFFIX

    _, crops, texts, keys = _embed_setup(run)
    cache = _cache(run, "embeddings", scan=True)
    todo = [i for i, k in enumerate(keys) if not cache.has_file(k, SUFFIX)]
    unique = sorted({texts[crops[i]["crop_id"]] for i in todo if texts.get(crops[i]["crop_id"])})
    return todo, {"texts": unique}


def embed_work(run: PhaseRun, items: list[int], context: dict[str, Any]) -> dict[str, Any]:
    """Embed these crops (fixed forward chunks, the plan's text batches) into the per-item cache."""
    from pipeline.retrieval.embeddings import CropDataset, _text_vectors, cache_vector, crop_loader, fresh_vectors

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
