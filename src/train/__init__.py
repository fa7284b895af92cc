"""visionops training: prepare data, train with Lightning, evaluate, export, register, tracked in MLflow.

Stages (each a `python -m` entry point, and a stage of dvc.yaml but promote):
  python -m train.raw        write the bundled digits dataset as PNG files
  python -m train.prepare    validate images and write split manifests
  python -m train            train (Hydra: `python -m train experiment=digits_small_cnn`)
  python -m train.evaluate   the best checkpoint judged: test metrics, calibration, confusion matrices
  python -m train.export     ONNX fp32 and int8 with parity measured
  python -m train.register   a registry version, gated against the champion
  python -m train.promote    move the champion alias by hand (through the gates, or forced)
Helpers: fit (the training loop), metrics, gate, decision, runs, tracking, datamodule, module,
models, trainer_setup; build (a registered version in one call, for tests and benchmarks); params
and views (make targets). Entry points run through `visionops.config`.

Imports the shared `visionops` package, Lightning, Hydra and torch; never `serve` or `monitor`.
"""
