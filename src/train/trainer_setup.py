"""Turn the `trainer` config into a Lightning Trainer: device, precision and memory format, and
Lightning's log lines printed once."""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

# Our keys in the trainer group that are not Lightning Trainer arguments.
_OWN_KEYS = {"channels_last"}


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_trainer_config(trainer_cfg: DictConfig) -> tuple[dict[str, Any], bool]:
    """Resolve `precision: auto` and `channels_last: auto` for the hardware present.

    On CUDA: bf16 mixed precision when the GPU supports it (Ampere and newer), else fp16 mixed;
    channels-last for convolutions. On CPU: fp32, contiguous.
    """
    kw = {k: v for k, v in OmegaConf.to_container(trainer_cfg, resolve=True).items() if k not in _OWN_KEYS}
    on_gpu = kw.get("accelerator") in ("gpu", "cuda") or (kw.get("accelerator") == "auto" and cuda_available())
    if kw.get("precision") == "auto":
        if on_gpu:
            kw["precision"] = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            kw["precision"] = "32-true"
    if kw.get("sync_batchnorm") and not on_gpu:
        kw["sync_batchnorm"] = False  # SyncBatchNorm is CUDA-only; CPU DDP (gloo) keeps per-process stats
    channels_last = trainer_cfg.get("channels_last", False)
    if channels_last == "auto":
        channels_last = on_gpu
    return {k: v for k, v in kw.items() if v is not None}, bool(channels_last)


def root_logging_only() -> None:
    """Print each log line once. Importing `lightning` adds a console handler to its `lightning`
    logger, and its records also propagate to the root handler that Hydra (or params mode) set up,
    so every Lightning line came out twice. The root handler is the one place output is configured
    (Hydra's also writes the run's log file), so Lightning's own console handler goes."""
    if not logging.getLogger().handlers:
        return  # nothing else would print Lightning's lines
    lightning_logger = logging.getLogger("lightning")
    for handler in list(lightning_logger.handlers):
        if type(handler) is logging.StreamHandler:
            lightning_logger.removeHandler(handler)
