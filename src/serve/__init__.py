"""visionops serving: the champion model over HTTP (BentoML), batch inference, bento packaging.

  bentoml serve serve.service:Classifier     the HTTP service (make serve)
  python -m serve.batch input=... output=...  batch inference over a folder or a video
  python -m serve.package                     the `bento` stage: GPU and CPU bentos of the champion

Imports only the shared `visionops` package, never Lightning or the Hydra training code.
"""
