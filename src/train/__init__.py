"""visionops training: prepare data, train with Lightning, evaluate, tracked in MLflow.

Entry points (each a pipeline stage in dvc.yaml):
  python -m train.raw        write the bundled digits dataset as PNG files
  python -m train.prepare    validate images and write split manifests
  python -m train            train (Hydra: `python -m train experiment=digits_small_cnn`)
  python -m train.evaluate   test-split metrics, confusion matrix, calibration
"""
