"""visionops serving: the champion model over HTTP (BentoML), batch inference, bento packaging.

  bentoml serve serve.service:Classifier     the HTTP service (make serve)
  python -m serve.batch input=... output=...  batch inference over a folder or a video
  python -m serve.package                     the `bento` stage: GPU and CPU bentos of the champion

`serve.runtime` is the one operation every caller runs (upload bytes -> prepare -> infer ->
finish: predictions and production-log records); the service runs its steps around BentoML's
batcher, the monitor's reference stage and the benchmarks in one call.

Imports only the shared `visionops` package (and BentoML, ONNX Runtime), never `train`, `monitor`,
Lightning, Hydra or torch: the bento carries `serve/` and `visionops/` alone.
"""
