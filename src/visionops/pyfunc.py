"""The MLflow pyfunc flavour of a visionops model: ONNX Runtime behind `mlflow.pyfunc`.

`mlflow models serve -m models:/<name>@champion` and `mlflow.pyfunc.load_model` run it without
torch or Lightning. Input: float32 NCHW tensors after the shared preprocessing (see the bundle).
Output by task: classification, class probabilities (N, classes); detection, per image a list of
{"box": [x1, y1, x2, y2], "score", "label"} scoring at least the `score_threshold` param (default:
the bundle's), boxes in the pixels of the `orig_size` input ([height, width] per image; without
it, input pixels). A detector's input is {"images": NCHW, "orig_size": (N, 2)} or the images alone.
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
        path = context.artifacts[self.bundle.serving_format]
        if self.bundle.task == "detection":
            from visionops.detection import OnnxDetector

            self.model = OnnxDetector(path, self.bundle.task_spec)
        else:
            self.model = OnnxModel(path)

    # No type hints on predict: MLflow would validate inputs against them instead of the signature.
    def predict(self, context, model_input, params=None):
        if self.bundle.task == "detection":
            return self._detect(model_input, params or {})
        x = np.asarray(model_input, dtype=np.float32)
        return self.model.predict_proba(x)

    def _detect(self, model_input: Any, params: dict[str, Any]) -> list[list[dict[str, Any]]]:
        if isinstance(model_input, dict):
            images, sizes = model_input["images"], model_input.get("orig_size")
        else:
            images, sizes = model_input, None
        images = np.asarray(images, dtype=np.float32)
        sizes = None if sizes is None else np.asarray(sizes, dtype=np.float32)
        return self.model.detect(images, sizes, self.bundle.labels, params.get("score_threshold"))
