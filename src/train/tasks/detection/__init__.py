"""Object detection: everything task-specific on the training side, in one package.

Data layer (issue 11):
- `boxes`: COCO [x, y, w, h] <-> [x1, y1, x2, y2] pixel boxes, the one conversion.
- `masks`: COCO run-length encoding of per-object masks (compressed RLE, as pycocotools writes it).
- `synth`: the bundled dataset generator (digit scans on real photographs, written as COCO);
  `python -m train.tasks.detection.synth data/raw/digits_det [n=...] [seed=...]`.
- `coco`: load a COCO folder, validate it (every problem names its image file and annotation id)
  and split it deterministically by image.
- `stats`: the prepared splits as COCO files and their statistics for reports/prepare/.
- `augment`: albumentations presets whose boxes follow every geometric transform.
- `dataset`: the torch Dataset over one split and its collate function.
- `baseline`: a non-learned detector (thresholding + connected components) and its test mAP.
"""
