"""The embeddings phase: On disk (`run_embeddings`): shards/emb_00000.npy (float32, <= shard_size rows each, in crop_id
order), embeddings.parquet (crop_id, shard, row), embedder.json (`describe()` plus the config without
its runtime keys), report.md. Every file depends only on the inputs: no device, install path, timing
or cache count (those are returned as metrics). The per-item cache holds one fused vector per crop:
item_cache/<key[:2]>/<key>.npy (a local directory, or a remote one through its local mirror:
`pipeline.core.item_cache`).

Floats do not depend on `embed.batch_size` (a runtime option, not in the artifact id): the image
tower always runs on exactly FORWARD_CHUNK views (the last chunk zero-padded), so each view meets the
same kernels whatever the batch size; the DataLoader batch is batch_size rounded up to a multiple of
FORWARD_CHUNK. Texts are encoded once per unique text, sorted, in fixed chunks of TEXT_CHUNK; with a
cold item cache the vectors are bit-identical for any batch size, with a warm one a text may share
its padded batch with others (sentence-transformers pads to the longest), which moves it by < 1e-6.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.core.config import EmbedConfig
from pipeline.core.hashing import canonical_json, sha256_bytes
from pipeline.core.item_cache import ItemCache, as_item_cache

from pipeline.retrieval.embedder import (  # noqa: F401  (re-exported)
    EMBED_VERSION, Embedder, FORWARD_CHUNK, LITE0_MEAN, LITE0_SIZE, LITE0_STD, Preprocess, RUNTIME_KEYS, TEXT_CHUNK, _trained_embedder, embedder_from_json, l2n, make_embedder, patch_boxes, resolve_head,
)


def cache_key(crop_id: str, text: str | None, params_json: str) -> str:
    """sha256(crop_id, context text, canonical model params, EMBED_VERSION)."""
    return sha256_bytes(canonical_json([crop_id, text, params_json, EMBED_VERSION]).encode())


SUFFIX = ".npy"  # a cache entry: item_cache/<key[:2]>/<key>.npy


def cache_vector(cache: ItemCache, key: str, arr: np.ndarray) -> Path:
    """Store one fused vector as cache entry `key` (atomically; on a remote cache one object, uploaded
    when the cache flushes)."""
    return cache.save_file(key, SUFFIX, lambda fh: np.save(fh, arr, allow_pickle=False))


def cached_vectors(cache: ItemCache | None, keys: list[str]) -> list[Path | None]:
    """The local file of each key's cached vector, or None (a remote cache's are downloaded in batches)."""
    if cache is None:
        return [None] * len(keys)
    cache.prefetch_files(keys, SUFFIX)
    return [cache.file(k, SUFFIX) for k in keys]


class CropDataset:
    """torch Dataset: (index, cached vector or None, preprocessed views or None) per crop."""

    def __init__(self, paths: list[Path], cached: list[Path | None], preprocess: Preprocess) -> None:
        self.paths, self.cached, self.preprocess = paths, cached, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, Any]:
        from PIL import Image

        if self.cached[i] is not None:
            return i, np.load(self.cached[i], allow_pickle=False), None
        with Image.open(self.paths[i]) as im:
            return i, None, self.preprocess(im.convert("RGB"))


def _collate(batch: list[tuple[int, np.ndarray | None, Any]]) -> tuple[list[int], list[np.ndarray | None], Any, list[int]]:
    import torch

    views = [v for _, _, v in batch if v is not None]
    pixels = torch.cat(views) if views else None
    return [i for i, _, _ in batch], [c for _, c, _ in batch], pixels, [len(v) for v in views]


class ShardWriter:
    """Streams rows into shards/emb_NNNNN.npy of at most `shard_size` rows."""

    def __init__(self, out_dir: Path, dim: int, shard_size: int) -> None:
        self.dir = out_dir / "shards"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.buf = np.empty((shard_size, dim), dtype=np.float32)
        self.n = 0
        self.shard = 0
        self.index: list[tuple[int, int]] = []

    def add(self, vec: np.ndarray) -> None:
        self.buf[self.n] = vec
        self.index.append((self.shard, self.n))
        self.n += 1
        if self.n == len(self.buf):
            self.flush()

    def flush(self) -> None:
        if self.n:
            np.save(self.dir / f"emb_{self.shard:05d}.npy", self.buf[: self.n], allow_pickle=False)
            self.shard += 1
            self.n = 0


def run_embeddings(crops_dir: Path, contexts_dir: Path | None, cfg: EmbedConfig, out_dir: Path,
                   item_cache: ItemCache | Path | None = None, device: str = "auto", progress: bool = True,
                   store: Any = None) -> dict[str, Any]:
    """Embed every crop of crops_dir (with its context text); write shards, index and reports to out_dir.
    `item_cache`: a local directory or an `ItemCache` (a remote one: listed once, the vectors it holds
    downloaded in batches, new ones uploaded before this returns).

    Returns metrics: n_total, n_embedded, n_cached, dim, n_shards, n_with_text, random_init (0/1), seconds,
    and `device` (info). The files hold none of the run-dependent ones (cache counts, timings, device).
    """
    import pyarrow as pa
    from tqdm.auto import tqdm

    from pipeline.core.tables import EMBEDDINGS, write_table

    t0 = time.perf_counter()
    crops_dir, out_dir = Path(crops_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    crops, texts = read_items(crops_dir, contexts_dir)
    emb = make_embedder(cfg, device, store)
    keys = item_keys(emb, crops, texts)
    cache = as_item_cache(item_cache)
    cached = cached_vectors(cache, keys)
    ds = CropDataset([crops_dir / c["crop_path"] for c in crops], cached, emb.preprocess)
    loader = crop_loader(ds, cfg, emb.device)
    writer = ShardWriter(out_dir, emb.dim, cfg.shard_size)
    text_vecs = _text_vectors(emb, [texts.get(c["crop_id"]) for c, v in zip(crops, cached) if v is None])
    n_embedded = 0
    bar = tqdm(total=len(ds), desc="embed", unit="crop", disable=not progress)
    with cache or contextlib.nullcontext(), bar:  # a remote cache: the new vectors are uploaded before this returns
        for idx, vecs, pixels, counts in loader:
            new = [i for i, v in zip(idx, vecs) if v is None]
            if new:
                fused = fresh_vectors(emb, pixels, counts, [texts.get(crops[i]["crop_id"]) for i in new], text_vecs)
                fresh = dict(zip(new, fused))
                if cache is not None:
                    for i in new:
                        cache_vector(cache, keys[i], fresh[i])
                n_embedded += len(new)
            for i, v in zip(idx, vecs):
                writer.add(v if v is not None else fresh[i])
            bar.update(len(idx))
    writer.flush()
    table = pa.table({"crop_id": pa.array([c["crop_id"] for c in crops], pa.string()),
                      "shard": pa.array([s for s, _ in writer.index], pa.int32()),
                      "row": pa.array([r for _, r in writer.index], pa.int32())})
    write_table(table, out_dir / EMBEDDINGS)
    desc = emb.describe()
    config = cfg.model_dump(mode="json", exclude=set(RUNTIME_KEYS))
    (out_dir / "embedder.json").write_text(json.dumps({**desc, "config": config, "embed_version": EMBED_VERSION},
                                                      indent=2, sort_keys=True), encoding="utf-8")
    content = {"n_total": len(crops), "dim": emb.dim, "n_shards": writer.shard,
               "n_with_text": sum(c["crop_id"] in texts for c in crops), "random_init": int(emb.random_init)}
    (out_dir / "report.md").write_text(_report(desc, content), encoding="utf-8")
    return {**content, "n_embedded": n_embedded, "n_cached": len(crops) - n_embedded,
            "seconds": round(time.perf_counter() - t0, 3), "device": emb.device}


def read_items(crops_dir: Path, contexts_dir: Path | None) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The crops (crop_id, crop_path) in crop_id order, and the context text of each crop that has one."""
    import pyarrow.parquet as pq

    crops = pq.read_table(Path(crops_dir) / "crops.parquet", columns=["crop_id", "crop_path"]).to_pylist()
    crops.sort(key=lambda r: r["crop_id"])
    texts: dict[str, str] = {}
    if contexts_dir is not None and (Path(contexts_dir) / "contexts.parquet").is_file():
        for r in pq.read_table(Path(contexts_dir) / "contexts.parquet", columns=["crop_id", "text"]).to_pylist():
            texts[r["crop_id"]] = r["text"]
    return crops, texts


def item_keys(emb: Embedder, crops: list[dict[str, str]], texts: dict[str, str]) -> list[str]:
    """The per-item cache key of each crop."""
    params_json = canonical_json(emb.params())
    return [cache_key(c["crop_id"], texts.get(c["crop_id"]), params_json) for c in crops]


def crop_loader(ds: CropDataset, cfg: EmbedConfig, device: str) -> Any:
    """Batches of batch_size rounded up to a multiple of FORWARD_CHUNK, in order."""
    import torch

    loader_batch = -(-cfg.batch_size // FORWARD_CHUNK) * FORWARD_CHUNK
    # Workers are spawned, not forked: a flow or worker process has threads (Prefect, MLflow), and a
    # forked child of a threaded process can die at start (seen in the test suite).
    context = "spawn" if cfg.num_workers > 0 else None
    return torch.utils.data.DataLoader(ds, batch_size=loader_batch, shuffle=False, num_workers=cfg.num_workers,
                                       pin_memory=device.startswith("cuda"), collate_fn=_collate,
                                       multiprocessing_context=context)


def fresh_vectors(emb: Embedder, pixels: Any, counts: list[int], texts: list[str | None],
                  text_vecs: dict[str, np.ndarray]) -> np.ndarray:
    """Fused vectors of freshly decoded views (fixed forward chunks) and their texts' vectors."""
    img = emb.embed_pixels(pixels, counts, fixed_chunks=True)
    txt = np.zeros((len(texts), emb.text_dim), dtype=np.float32)
    for j, t in enumerate(texts):
        if t:
            txt[j] = text_vecs[t]
    return emb.fuse(img, txt)


def _text_vectors(emb: Embedder, texts: Sequence[str | None]) -> dict[str, np.ndarray]:
    """Vector of each unique non-empty text, encoded in sorted order (same chunks whatever the batch size)."""
    unique = sorted({t for t in texts if t})
    return dict(zip(unique, emb.embed_texts(unique))) if unique else {}


def _report(desc: dict[str, Any], metrics: dict[str, Any]) -> str:
    lines = []
    if desc["random_init"]:
        which = ", ".join(f"{k}: {m['name']}" for k, m in desc["models"].items() if m["random_init"])
        lines = [f"Random-initialised model: {which} (no weights available; vectors are meaningless, tests/demo only).", ""]
    lines += ["# Embeddings", "",
             f"Backend `{desc['backend']}`, dim {desc['dim']} "
             f"(image {desc['image_dim']}, text {desc['text_dim']}), fusion `{desc['fusion']['mode']}` "
             f"(alpha {desc['fusion']['alpha']}, beta {desc['fusion']['beta']}, multi_patch {desc['fusion']['multi_patch']}).",
             "", "| model | name | source | weights |", "|---|---|---|---|"]
    lines += [f"| {k} | {m['name']} | {m['source']} | {m.get('weights') or '-'} |" for k, m in desc["models"].items()]
    lines += ["", "| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines) + "\n"


def load_embeddings(emb_dir: Path) -> tuple[list[str], np.ndarray]:
    """(crop_ids in crop_id order, (n, dim) float32 matrix) from an embeddings dir."""
    import pyarrow.parquet as pq

    emb_dir = Path(emb_dir)
    t = pq.read_table(emb_dir / "embeddings.parquet").to_pydict()
    meta = json.loads((emb_dir / "embedder.json").read_text(encoding="utf-8"))
    out = np.empty((len(t["crop_id"]), int(meta["dim"])), dtype=np.float32)
    shard, row = np.asarray(t["shard"], dtype=np.int64), np.asarray(t["row"], dtype=np.int64)
    for s in np.unique(shard):  # each shard file read once
        at = shard == s
        out[at] = np.load(emb_dir / "shards" / f"emb_{s:05d}.npy", allow_pickle=False)[row[at]]
    return list(t["crop_id"]), out
