"""The LightningModule: a classifier built from its config, so a checkpoint rebuilds itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score


class ImageClassifier(L.LightningModule):
    def __init__(
        self,
        net_cfg: dict[str, Any],
        num_classes: int,
        in_channels: int,
        labels: list[str],
        preprocess: dict[str, Any],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = instantiate(net_cfg, num_classes=num_classes, in_channels=in_channels)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.train_acc = MulticlassAccuracy(num_classes)
        self.val_acc = MulticlassAccuracy(num_classes)
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.val_f1(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)
        self.log("val/f1_macro", self.val_f1, on_epoch=True)

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError("ImageClassifier needs an optimizer factory to train")
        opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(optimizer=opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def load_classifier(ckpt_path: str, map_location: str = "cpu") -> ImageClassifier:
    """Rebuild a trained classifier from a checkpoint without downloading pretrained weights."""
    ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=False)
    hp = dict(ckpt["hyper_parameters"])
    hp["net_cfg"] = {**hp["net_cfg"], "weights": None}
    hp["channels_last"] = False
    model = ImageClassifier(**hp)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
