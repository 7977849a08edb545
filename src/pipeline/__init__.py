"""Vehicle-damage model factory (library). `pipeline.load_model("champion", workdir=...)` answers from
the MLflow registry; it is imported lazily so `import pipeline` stays light."""
from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def load_model(ref: str | int = "champion", workdir: Any = "work", config: Any = None, name: str | None = None):
    """The registered student (or `name`) at alias `ref` or version number, as an MLflow pyfunc:
    `model.predict(pandas.DataFrame({"path": [...]}))` returns label, confidence (calibrated) and
    not_conclusive. See `pipeline.training.predict.load_model`."""
    from pipeline.training.predict import load_model as _load

    return _load(ref, workdir, config, name)
