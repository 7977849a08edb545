"""Answers from the MLflow registry: `load_model` (the registered pyfunc at an alias such as `champion`,
or a version number) and `predict_images` (the version's model dir through `training.inference.Predictor`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pipeline.training.inference import Predictor


def image_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    exts = {e.lower() for e in extensions}
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in exts)


def load_model(ref: str | int = "champion", workdir: str | Path = "work", config: Any = None,
               name: str | None = None):
    """The registered student (or `name`) at alias `ref` (or version number) as an MLflow pyfunc
    whose `predict(DataFrame with a 'path' or 'image' column)` returns label, confidence and
    not_conclusive. The registry is the work dir's tracking store (config `tracking.*`)."""
    from pipeline.core.config import PipelineConfig
    from pipeline.core.workspace import setup_environment
    from pipeline.registry.versions import load_pyfunc, registry_client, student_name

    cfg = config if config is not None else PipelineConfig()
    ws = setup_environment(workdir, prefect_home=False)
    client = registry_client(ws.tracking_uri(cfg))
    return load_pyfunc(client, name or student_name(cfg), ref, ws.cache / "registry")


def predict_images(paths: Sequence[Path], ref: str | int = "champion", workdir: str | Path = "work",
                   config: Any = None, name: str | None = None, whole_image: bool = False):
    """Answers for image files from the registered model (DataFrame, one row per path): the
    version's model dir (downloaded once, as the pyfunc does) through `Predictor`, with the work
    dir's weights dir for a crops model's detector. A model trained on crops answers each photo
    through its crop rule (per window and for the photo) unless `whole_image`."""
    from pipeline.core.config import PipelineConfig
    from pipeline.core.workspace import setup_environment
    from pipeline.registry.versions import registry_client, resolve_version, student_name, version_model_dir

    cfg = config if config is not None else PipelineConfig()
    ws = setup_environment(workdir, prefect_home=False)
    client = registry_client(ws.tracking_uri(cfg))
    mv = resolve_version(client, name or student_name(cfg), ref)
    predictor = Predictor.from_dir(version_model_dir(client, mv, ws.cache / "registry"), weights_dir=ws.weights)
    out = predictor.predict([str(p) for p in paths], whole_image=whole_image)
    return out.drop(columns=["source"])
