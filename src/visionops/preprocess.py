"""The evaluation-time preprocessing, defined once: training's val/test transform and serving's.

decode -> resize to `size` -> uint8 HWC (`to_uint8`) -> float32 CHW normalised (`normalize`).
Training inserts its augmentations between `to_uint8` and `normalize`; nothing else differs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from visionops.images import ImageSource, decode_image

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn an image into the model's input tensor."""

    size: tuple[int, int] = (32, 32)  # (height, width)
    channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"
    layout: str = "NCHW"
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ValueError(
                f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}"
            )
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean and std need {self.channels} values (one per channel), got "
                f"{len(self.mean)} and {len(self.std)}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        d = dict(d)
        return cls(
            size=tuple(int(v) for v in d.pop("size")),  # type: ignore[arg-type]
            channels=int(d.pop("channels", 3)),
            mean=tuple(float(v) for v in d.pop("mean")),
            std=tuple(float(v) for v in d.pop("std")),
            interpolation=str(d.pop("interpolation", "bilinear")),
            layout=str(d.pop("layout", "NCHW")),
            dtype=str(d.pop("dtype", "float32")),
            extra=dict(d.pop("extra", {}) or {}),
        )

    @classmethod
    def from_data_config(cls, data_cfg: Any) -> PreprocessSpec:
        """Build from the `data` section of the Hydra config (image_size, channels, mean, std)."""
        return cls(
            size=tuple(int(v) for v in data_cfg["image_size"]),  # type: ignore[arg-type]
            channels=int(data_cfg["channels"]),
            mean=tuple(float(v) for v in data_cfg["mean"]),
            std=tuple(float(v) for v in data_cfg["std"]),
            interpolation=str(data_cfg.get("interpolation", "bilinear")),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d


def to_uint8(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize a decoded image to the spec and return uint8 HWC (C = spec.channels)."""
    h, w = spec.size
    if img.size != (w, h):
        img = img.resize((w, h), _RESAMPLE[spec.interpolation])
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


@functools.lru_cache(maxsize=64)
def _standardise(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(mean * 255, 1 / (std * 255)) as float32 of shape (C, 1, 1): the constants of `normalize`."""
    m = np.asarray(mean, dtype=np.float32) * 255.0
    s = 1.0 / (np.asarray(std, dtype=np.float32) * 255.0)
    return m[:, None, None], s[:, None, None]


def normalize(arr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 HWC (or NHWC) -> float32 CHW (or NCHW), scaled to [0, 1] then standardised.

    Written into one C-contiguous float32 array with two NumPy calls (it runs on every request)."""
    mean, inv_std = _standardise(tuple(spec.mean), tuple(spec.std))
    chw = arr.transpose(2, 0, 1) if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)  # a view
    out = np.empty(chw.shape, dtype=np.float32)
    np.subtract(chw, mean, out=out)
    out *= inv_std
    return out


def preprocess(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """A decoded image -> the model's float32 CHW input."""
    return normalize(to_uint8(img, spec), spec)


def load_and_preprocess(source: ImageSource, spec: PreprocessSpec, **decode_kw: Any) -> np.ndarray:
    return preprocess(decode_image(source, channels=spec.channels, **decode_kw), spec)


def load_batch(sources: Sequence[ImageSource], spec: PreprocessSpec, **decode_kw: Any) -> np.ndarray:
    """Several images (paths or bytes) -> one NCHW batch, through the one decode + preprocess path."""
    return batch([load_and_preprocess(s, spec, **decode_kw) for s in sources])


def batch(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(np.stack(arrays, axis=0))
