"""Which detector runs: decided once per run, then found again from that decision wherever it runs.

`resolve_detector(cfg, weights_dir)` decides the backend and why, from detect.backend (a table of
resolvers, `RESOLVERS`) and the files that are there (cheap: file checks, nothing loaded). Its
`identity` (backend, random init, each file by name and sha256) goes into the crops artifact id;
the crops phase and each of its shards get that identity (the phase's params) and `choice_for`
finds the files it names here (a table of locators by backend, `LOCATORS`): no new decision, and a
clear `ModelUnavailable` when the files here are not the ones the id names. A file's sha256 is
computed once per process (keyed on its path, size and mtime), however often it is asked.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from pipeline.core.config import DetectConfig
from pipeline.core.errors import ModelUnavailable
from pipeline.core.hashing import sha256_file
from pipeline.retrieval.detect_outputs import SSD_INPUT

_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per process for each (path, size, mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


@dataclass(frozen=True)
class DetectorChoice:
    """Which backend runs, why, and the files it will load (resolved, nothing loaded yet).

    `reason` names config keys and file names only (no work-dir paths): it goes into the crops
    report, which must depend on the inputs alone.
    """

    backend: str  # ultralytics | opencv_dnn | none
    reason: str
    weights: Path | None = None
    config: Path | None = None  # OpenCV SSD text graph
    arch: str | None = None  # Ultralytics random init: the model yaml
    random_init: bool = False

    @property
    def file_name(self) -> str | None:
        return self.weights.name if self.weights is not None else self.arch

    @cached_property
    def identity(self) -> dict[str, Any]:
        """What decides the boxes: backend, random init, and each file by name and sha256."""
        files = {role: {"name": p.name, "sha256": file_sha256(p)}
                 for role, p in (("weights", self.weights), ("config", self.config)) if p is not None}
        return {"backend": self.backend, "arch": self.arch, "random_init": self.random_init, **files}

    def input_px(self, imgsz: int) -> int | None:
        """The model's input size in px: None without a model (the whole image), the fixed SSD_INPUT of a
        TensorFlow SSD graph (the one backend with a text-graph `config`), else detect.imgsz."""
        if self.weights is None and self.arch is None:
            return None
        return SSD_INPUT if self.config is not None else imgsz

    def info(self) -> dict[str, str]:
        """String entries for the phase's returned metrics (lineage, MLflow, the run summary)."""
        out = {"detector": self.backend, "detector_reason": self.reason}
        if self.file_name:
            out["detector_weights"] = self.file_name
        return out


# -- the files of each backend ---------------------------------------------------------------------


def _is_path(weights: str) -> bool:
    """A path (it has a directory part), as opposed to a bare file name looked up in the weights dir."""
    return Path(weights).name != weights


def resolve_yolo_weights(weights: str, weights_dir: Path | None) -> Path | None:
    """A local weights file: `weights` as a path, else a bare name in the weights dir (never the cwd)."""
    if weights.endswith((".yaml", ".yml")):
        return None  # an architecture, not weights
    if _is_path(weights):
        path = Path(weights).expanduser()
        return path if path.is_file() else None
    cached = Path(weights_dir) / weights if weights_dir is not None else None
    return cached if cached is not None and cached.is_file() else None


def _ultralytics_missing(cfg: DetectConfig, weights_dir: Path | None) -> ModelUnavailable:
    where = f"the weights dir {weights_dir}" if weights_dir is not None else "the work dir's weights dir"
    return ModelUnavailable(
        f"YOLO weights {cfg.weights!r} not found and runs are offline. Provide them one of three ways: "
        f"set detect.weights to a local file path; put {Path(cfg.weights).name!r} into {where} "
        f"(<workdir>/.cache/weights); or, for tests and demos only, set detect.allow_random_init=true (random "
        f"weights: meaningless boxes). detect.backend=auto uses detect.dnn_model or the whole image instead."
    )


def _ultralytics_found(cfg: DetectConfig, weights_dir: Path | None) -> DetectorChoice | None:
    """Ultralytics on the local weights file of cfg.weights, None when there is none."""
    path = resolve_yolo_weights(cfg.weights, weights_dir)
    if path is None:
        return None
    where = "detect.weights path" if _is_path(cfg.weights) else "in the weights dir"
    return DetectorChoice("ultralytics", f"detect.backend={cfg.backend}: Ultralytics weights {path.name!r} "
                                         f"found ({where})", path)


def _ultralytics_random(cfg: DetectConfig) -> DetectorChoice:
    arch = Path(cfg.weights).with_suffix(".yaml").name
    return DetectorChoice("ultralytics", f"detect.backend=ultralytics: no weights {cfg.weights!r}; "
                                         f"RANDOM-INITIALISED {arch} (detect.allow_random_init)", arch=arch,
                          random_init=True)


def _auto_miss(cfg: DetectConfig, weights_dir: Path | None) -> str:
    """Why `auto` found no Ultralytics weights (file names only)."""
    return (f"no Ultralytics weights ({cfg.weights!r} is not in the weights dir)" if weights_dir is not None
            else f"no Ultralytics weights (no weights dir to look {cfg.weights!r} up in)")


def _dnn_choice(cfg: DetectConfig, weights_dir: Path | None) -> DetectorChoice:
    """The OpenCV DNN files of cfg.dnn_model / cfg.dnn_config; ModelUnavailable when they are not local files."""
    if not cfg.dnn_model:
        raise ModelUnavailable(
            "detect.backend=opencv_dnn needs detect.dnn_model: a TensorFlow SSD frozen graph (.pb, with "
            "detect.dnn_config=<its .pbtxt>) or a YOLOv8 .onnx export. OpenCV has no model cache and runs are offline."
        )
    model = Path(cfg.dnn_model).expanduser()
    if not model.is_file():
        raise ModelUnavailable(
            f"OpenCV DNN model detect.dnn_model={cfg.dnn_model!r} is not a local file. Set it to the model file (a "
            f"TensorFlow SSD frozen_inference_graph.pb with detect.dnn_config=<its .pbtxt>, or a YOLOv8 .onnx export); "
            f"OpenCV has no model cache and runs are offline."
        )
    config = None
    if model.suffix.lower() != ".onnx":
        config = Path(cfg.dnn_config).expanduser() if cfg.dnn_config else None
        if config is None or not config.is_file():
            raise ModelUnavailable(f"OpenCV DNN SSD {model.name!r} needs detect.dnn_config (its .pbtxt text graph); "
                                   f"got {cfg.dnn_config!r}")
    why = "detect.backend=opencv_dnn" if cfg.backend == "opencv_dnn" else f"detect.backend=auto, {_auto_miss(cfg, weights_dir)}"
    return DetectorChoice("opencv_dnn", f"{why}: OpenCV DNN model {model.name!r} (detect.dnn_model)", model, config)


def _none_choice(cfg: DetectConfig, weights_dir: Path | None) -> DetectorChoice:
    if cfg.backend == "none":
        return DetectorChoice("none", "detect.backend=none: the whole image is the vehicle box")
    return DetectorChoice("none", f"detect.backend=auto, {_auto_miss(cfg, weights_dir)} and no detect.dnn_model: the "
                                  f"whole image is the vehicle box")


# -- deciding (once, for the id) -------------------------------------------------------------------


def _resolve_ultralytics(cfg: DetectConfig, weights_dir: Path | None) -> DetectorChoice:
    found = _ultralytics_found(cfg, weights_dir)
    if found is not None:
        return found
    if not cfg.allow_random_init:
        raise _ultralytics_missing(cfg, weights_dir)
    return _ultralytics_random(cfg)


def _resolve_auto(cfg: DetectConfig, weights_dir: Path | None) -> DetectorChoice:
    """Ultralytics when its weights are here, else the configured OpenCV DNN model, else the whole image; a
    configured path that does not exist is an error, never a silent fallback."""
    found = _ultralytics_found(cfg, weights_dir)
    if found is not None:
        return found
    if _is_path(cfg.weights):
        raise ModelUnavailable(f"detect.weights {cfg.weights!r} is not a file (detect.backend=auto uses a configured "
                               f"path or fails; a bare name such as 'yolov8n.pt' is looked up in the weights dir)")
    return _dnn_choice(cfg, weights_dir) if cfg.dnn_model else _none_choice(cfg, weights_dir)


Resolver = Callable[[DetectConfig, Path | None], DetectorChoice]
RESOLVERS: dict[str, Resolver] = {  # detect.backend -> the decision
    "auto": _resolve_auto,
    "ultralytics": _resolve_ultralytics,
    "opencv_dnn": _dnn_choice,
    "none": _none_choice,
}


def resolve_detector(cfg: DetectConfig, weights_dir: Path | None = None) -> DetectorChoice:
    """The backend `make_detector` will build and why; raises ModelUnavailable for configured files that are missing."""
    return RESOLVERS[cfg.backend](cfg, weights_dir)


# -- finding the decided detector again (the phase, its shards) ------------------------------------


def _locate_ultralytics(identity: dict[str, Any], cfg: DetectConfig, weights_dir: Path | None) -> DetectorChoice:
    if identity.get("random_init"):
        return _ultralytics_random(cfg)
    found = _ultralytics_found(cfg, weights_dir)
    if found is None:
        raise ModelUnavailable(f"the crops artifact id names the detector {describe_identity(identity)}, and its "
                               f"weights are not here: {_ultralytics_missing(cfg, weights_dir)}")
    return found


Locator = Callable[[dict[str, Any], DetectConfig, Path | None], DetectorChoice]
LOCATORS: dict[str, Locator] = {  # the backend an identity names -> its files here
    "ultralytics": _locate_ultralytics,
    "opencv_dnn": lambda identity, cfg, weights_dir: _dnn_choice(cfg, weights_dir),
    "none": lambda identity, cfg, weights_dir: _none_choice(cfg, weights_dir),
}


def describe_identity(identity: dict[str, Any]) -> str:
    """A detector identity in words: backend, random init, files by name and short sha256."""
    files = [f"{role} {f['name']!r} (sha256 {f['sha256'][:12]})" for role in ("weights", "config")
             if (f := identity.get(role))]
    init = [f"RANDOM-INITIALISED {identity.get('arch')}"] if identity.get("random_init") else []
    return f"`{identity.get('backend')}`" + (f" ({', '.join(init + files)})" if init + files else "")


def choice_for(identity: dict[str, Any], cfg: DetectConfig, weights_dir: Path | None = None) -> DetectorChoice:
    """The detector `identity` names (a `DetectorChoice.identity`, as the crops artifact id holds it), its files
    found here; ModelUnavailable when they are missing or are not the ones named (sha256)."""
    locate = LOCATORS.get(identity.get("backend"))
    if locate is None or cfg.backend not in ("auto", identity.get("backend")):
        raise ModelUnavailable(f"the crops artifact id names the detector {describe_identity(identity)}, which "
                               f"detect.backend={cfg.backend} cannot give")
    choice = locate(identity, cfg, weights_dir)
    if choice.identity != identity:
        raise ModelUnavailable(
            f"the crops artifact id names the detector {describe_identity(identity)}, but here it is "
            f"{describe_identity(choice.identity)}: its files changed since the id was computed, or differ on this "
            f"machine. Put the named files in place, or run again so that the id names these.")
    return choice
