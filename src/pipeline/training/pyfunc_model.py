"""The MLflow pyfunc of a registered classifier, logged as "models from code" (no pickled object).

MLflow copies this file into the logged model and runs it on load; `set_model` names the model.
The model's only artifact is its model dir (`model.safetensors` + `model.json`), read by
`pipeline.training.predict.Predictor`, so loading needs the `pipeline` package installed.

Input: a DataFrame with a `path` column (image files) or an `image` column (encoded image bytes).
Output: a DataFrame with `label`, `confidence` (calibrated: softmax(logits / temperature)) and
`not_conclusive` (confidence under the stored threshold), plus `error` for unreadable images.
"""
from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ImageClassifierModel(PythonModel):
    def load_context(self, context):
        from pipeline.training.predict import Predictor

        self.predictor = Predictor.from_dir(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if isinstance(model_input, pd.DataFrame):
            column = "path" if "path" in model_input.columns else "image"
            sources = list(model_input[column])
        else:  # a list of paths
            sources = [str(s) for s in model_input]
        out = self.predictor.predict(sources)
        return out[["label", "confidence", "not_conclusive", "error"]]


mlflow.models.set_model(ImageClassifierModel())
