"""Vehicle-damage model factory (library). `pipeline.load_model("champion", workdir=...)` answers from
the MLflow registry; it is imported lazily so `import pipeline` stays light."""
from __future__ import annotations

from typing import Any

__all__ = ["LAYERS", "load_model"]

# The library's packages, lowest first: a module may import its own package and the ones before it,
# never a later one (lazy imports included; tests/core/test_layers.py reads every import to check).
# Prefect, tasks/ and flows/ sit above all of them and are never imported here.
LAYERS = ("core", "data", "demo", "models", "retrieval", "training", "registry", "export", "study", "monitor", "app")


def load_model(ref: str | int = "champion", workdir: Any = "work", config: Any = None, name: str | None = None):
    """The registered student (or `name`) at alias `ref` or version number, as an MLflow pyfunc:
    `model.predict(pandas.DataFrame({"path": [...]}))` returns label, confidence (calibrated) and
    not_conclusive. See `pipeline.registry.predict.load_model`."""
    from pipeline.registry.predict import load_model as _load

    return _load(ref, workdir, config, name)
