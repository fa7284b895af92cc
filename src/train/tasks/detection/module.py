"""The detection LightningModule: a detector built from its config, so a checkpoint rebuilds itself.

Per epoch: the training losses (`train/loss` and its parts, e.g. `train/loss_heatmap`), the
validation loss where the detector has one in eval mode (`val/loss`), and COCO mAP on the
validation split (`val/map`, `val/map_50`, `val/map_75`; torchmetrics' MeanAveragePrecision with
the faster-coco-eval backend), which checkpoints and early stopping follow. On rank 0 with an
MLflow logger, a grid of the first validation images with true and predicted boxes is logged
each epoch (`val_images/epoch_NNN.jpg`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from hydra.utils import instantiate

Batch = tuple[torch.Tensor, list[dict[str, torch.Tensor]]]
VAL_METRICS = ("map", "map_50", "map_75")


def mean_average_precision(**kwargs: Any) -> Any:
    """COCO mAP over [x1, y1, x2, y2] boxes, by the evaluator torchmetrics' maintainers recommend."""
    from torchmetrics.detection import MeanAveragePrecision

    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval", **kwargs)


class ObjectDetector(L.LightningModule):
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
        log_images: int = 8,
        score_threshold: float = 0.3,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = instantiate(net_cfg, num_classes=num_classes, in_channels=in_channels,
                               image_size=tuple(preprocess["size"]))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.val_map = mean_average_precision()
        self._shown: tuple[torch.Tensor, list, list] | None = None

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Detections per image: boxes [x1, y1, x2, y2] in input pixels, scores, labels."""
        return self.net.predict(self.to_input(x))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, targets = batch
        losses = self.net.loss(self.to_input(x), targets)
        n = x.shape[0]
        self.log("train/loss", losses["loss"], on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=n)
        for k, v in losses.items():
            if k != "loss":
                self.log(f"train/{k}", v, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        return losses["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, targets = batch
        x = self.to_input(x)
        if getattr(self.net, "has_eval_loss", False):
            loss = self.net.loss(x, targets)["loss"]
            self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        preds = self.net.predict(x)
        self.val_map.update(preds, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        if batch_idx == 0 and self.hparams.log_images:
            k = int(self.hparams.log_images)
            self._shown = (x[:k].detach().cpu(), [{k2: v.cpu() for k2, v in t.items()} for t in targets[:k]],
                           [{k2: v.cpu() for k2, v in p.items()} for p in preds[:k]])

    def on_validation_epoch_end(self) -> None:
        result = self.val_map.compute()  # gathered from every process under DDP
        self.val_map.reset()
        # the same value on every rank: no sync needed
        self.log_dict({f"val/{k}": float(result[k]) for k in VAL_METRICS}, prog_bar=True)
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self._log_picture()
        self._shown = None

    def _log_picture(self) -> None:
        from lightning.pytorch.loggers import MLFlowLogger

        from train.tasks.detection.draw import save_grid

        logger = self.logger
        if self._shown is None or not isinstance(logger, MLFlowLogger):
            return
        x, truths, preds = self._shown
        spec = self.hparams.preprocess
        with tempfile.TemporaryDirectory() as tmp:
            path = save_grid(x, truths, preds, self.hparams.labels, spec["mean"], spec["std"],
                             Path(tmp) / f"epoch_{self.current_epoch:03d}.jpg", float(self.hparams.score_threshold))
            logger.experiment.log_artifact(logger.run_id, str(path), "val_images")

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError("ObjectDetector needs an optimizer factory to train")
        opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(optimizer=opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def load_detector(ckpt_path: str, map_location: str = "cpu") -> ObjectDetector:
    """Rebuild a trained detector from a checkpoint without downloading pretrained weights."""
    ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=False)
    hp = dict(ckpt["hyper_parameters"])
    hp["net_cfg"] = {**hp["net_cfg"], "weights": None, "weights_backbone": None}
    hp["channels_last"] = False
    model = ObjectDetector(**hp)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
