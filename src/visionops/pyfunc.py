"""The MLflow pyfunc flavour of a visionops model: ONNX Runtime behind `mlflow.pyfunc`.

`mlflow models serve -m models:/<name>@champion` and `mlflow.pyfunc.load_model` run it without
torch or Lightning. Input: float32 NCHW tensors after the shared preprocessing (see the bundle);
output: class probabilities.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np


class VisionopsOnnxModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from pathlib import Path

        from visionops.bundle import ModelBundle
        from visionops.onnx_runtime import OnnxModel

        self.bundle = ModelBundle.load(Path(context.artifacts["bundle"]).parent)
        self.model = OnnxModel(context.artifacts[self.bundle.serving_format])

    # No type hints on predict: MLflow would validate inputs against them instead of the signature.
    def predict(self, context, model_input, params=None):
        x = np.asarray(model_input, dtype=np.float32)
        return self.model.predict_proba(x)
