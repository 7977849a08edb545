"""The MLflow pyfunc of a registered classifier, logged as "models from code" (no pickled object).

MLflow copies this file into the logged model and runs it on load; `set_model` names the model.
The model's only artifact is its model dir (`model.safetensors` + `model.json`), read by
`pipeline.training.inference.Predictor`, so loading needs the `pipeline` package installed.

Input: a DataFrame with a `path` column (image files) or an `image` column (encoded image bytes),
and optionally a boolean `whole_image` column (True: answer that row on the whole image even when
the model was trained on crops, e.g. the row is a crop already).
Output: a DataFrame with `label`, `confidence` (calibrated: softmax(logits / temperature)) and
`not_conclusive` (confidence under the stored threshold), plus `error` for unreadable images. A
model trained on crops answers a photo through its crop rule (pipeline.retrieval.crop_rule) and adds
`damaged`, `n_windows`, `windows` (JSON, one answer per grid window), `vehicle_box` and `note`.
"""
from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ImageClassifierModel(PythonModel):
    def load_context(self, context):
        from pipeline.training.inference import Predictor

        self.predictor = Predictor.from_dir(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        whole: list[bool] | bool = False
        if isinstance(model_input, pd.DataFrame):
            column = "path" if "path" in model_input.columns else "image"
            sources = list(model_input[column])
            if "whole_image" in model_input.columns:
                whole = [bool(w) for w in model_input["whole_image"]]
        else:  # a list of paths
            sources = [str(s) for s in model_input]
        out = self.predictor.predict(sources, whole_image=whole)
        extra = [c for c in ("damaged", "n_windows", "windows", "vehicle_box", "note") if c in out.columns]
        return out[["label", "confidence", "not_conclusive", "error", *extra]]


mlflow.models.set_model(ImageClassifierModel())
