"""visionops shared core: what training, serving and monitoring must agree on.

Image decoding (`visionops.images`), the evaluation-time preprocessing (`visionops.preprocess`),
dataset manifests (`visionops.manifest`) and the model bundle contract (`visionops.bundle`).
This package depends on numpy and Pillow only: serving and monitoring import it without
pulling in Lightning, Hydra or torch.
"""

__version__ = "0.1.0"
