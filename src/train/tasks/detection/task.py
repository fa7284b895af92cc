"""Detection as a task: the steps the shared stages ask for (see `train.tasks.base`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from train.tasks.base import Evaluation, GateEvaluation, Task
from visionops.errors import VisionopsError

PICTURE = "predictions.jpg"


def _metric_name(label: str) -> str:
    """A class name as MLflow accepts it in a metric name."""
    return re.sub(r"[^A-Za-z0-9_. /-]", "_", label)


class DetectionTask(Task):
    name = "detection"
    history = ("train/loss", "val/loss", "val/map", "val/map_50")
    last_epoch = ("train/loss", "val/loss", "val/map", "val/map_50", "val/map_75")
    headline = ("test/map", "test/map_50", "test/map_75", "test/mar_100")
    gate_metric = "test/map_50"

    def prepare(self, cfg: DictConfig) -> dict[str, Any]:
        from train.runs import SOURCE_FILE, data_source
        from train.tasks.detection.prepare import prepare

        summary = prepare(cfg)
        # Which data config these splits come from: an ad-hoc run with other data prepares its own.
        (Path(cfg.paths.prepared) / SOURCE_FILE).write_text(json.dumps(data_source(cfg.data), indent=2) + "\n")
        return summary

    def datamodule(self, cfg: DictConfig, pin_memory: bool = False) -> Any:
        from train.tasks.detection.datamodule import DetectionDataModule

        return DetectionDataModule.from_config(cfg, pin_memory=pin_memory)

    def module(self, cfg: DictConfig, datamodule: Any, channels_last: bool = False) -> Any:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from train.tasks.detection.models import DETECTORS
        from train.tasks.detection.module import ObjectDetector
        from visionops.preprocess import PreprocessSpec

        if cfg.model.arch not in DETECTORS:
            raise VisionopsError(f"model={cfg.model.arch} is not a detector: task=detection trains one of "
                                 f"{', '.join(DETECTORS)} (model=centernet is the default)")
        spec = PreprocessSpec.from_data_config(cfg.data)
        return ObjectDetector(
            net_cfg=OmegaConf.to_container(cfg.model.net, resolve=True),
            num_classes=datamodule.num_classes,
            in_channels=spec.channels,
            labels=datamodule.labels,
            preprocess=spec.to_dict(),
            optimizer=instantiate(cfg.model.optimizer),
            scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
            channels_last=channels_last,
            log_images=int(cfg.task.get("log_images", 8)),
            score_threshold=float(cfg.task.get("score_threshold", 0.3)),
        )

    def load(self, ckpt_path: str, map_location: str = "cpu") -> Any:
        from train.tasks.detection.module import load_detector

        return load_detector(ckpt_path, map_location=map_location)

    def evaluate(self, cfg: DictConfig, model: Any, out: Path) -> Evaluation:
        """Test split: COCO metrics (headline and per class), precision-recall curves per class
        (pr_curves.csv), the confusion matrix with background (confusion.csv, confusion.png) and a
        picture of the first test images with true and predicted boxes; validation split: the
        same COCO metrics for the best checkpoint (validation.json)."""
        from train.metrics import plot_confusion
        from train.tasks.detection.dataset import read_split
        from train.tasks.detection.draw import save_grid
        from train.tasks.detection.evaluation import (
            BACKGROUND,
            coco_metrics,
            confusion,
            ground_truth,
            pr_curves,
            predict_split,
            write_csv,
        )
        from visionops.preprocess import PreprocessSpec

        prepared = Path(cfg.paths.prepared)
        spec = PreprocessSpec.from_dict(model.hparams["preprocess"])
        labels = list(model.hparams["labels"])
        threshold = float(cfg.task.get("score_threshold", 0.3))
        iou = float(cfg.task.get("match_iou", 0.5))

        test = read_split(prepared / "test.json")
        preds, first = predict_split(model, test, spec, keep_first=8)
        truth = ground_truth(test)
        m, raw = coco_metrics(preds, truth, labels, "test")
        curves = write_csv(out / "pr_curves.csv", ["class", "recall", "precision"], pr_curves(raw, labels))
        actual, predicted = confusion(preds, truth, len(labels), threshold, iou)
        names = [*labels, BACKGROUND]
        write_csv(out / "confusion.csv", ["actual", "predicted"],
                  [(names[a], names[p]) for a, p in zip(actual, predicted)])
        png = plot_confusion(actual, predicted, names, out / "confusion.png",
                             f"test detections (score >= {threshold:g}, IoU >= {iou:g})")
        m["confusion"] = {"score_threshold": threshold, "iou_threshold": iou,
                          "matched": int(((actual != len(labels)) & (predicted != len(labels))).sum()),
                          "missed": int((predicted == len(labels)).sum()),
                          "spurious": int((actual == len(labels)).sum())}
        pictures = []
        if first is not None:
            x, targets, dets = first
            pictures.append(save_grid(x, targets, dets, labels, spec.mean, spec.std, out / PICTURE, threshold))

        val = read_split(prepared / "val.json")
        val_preds, _ = predict_split(model, val, spec)
        v, _ = coco_metrics(val_preds, ground_truth(val), labels, "val")
        per_class = {f"test/ap_50/{_metric_name(k)}": c["ap_50"] for k, c in m["per_class"].items()
                     if c["ap_50"] is not None}
        per_class |= {f"test/ap/{_metric_name(k)}": c["ap"] for k, c in m["per_class"].items() if c["ap"] is not None}
        summary = (f"Test mAP@[.5:.95] {m['test/map']:.4f}, mAP@0.5 {m['test/map_50']:.4f}, mAP@0.75 "
                   f"{m['test/map_75']:.4f}, AR@100 {m['test/mar_100']:.4f} on {m['test/n']} images with "
                   f"{m['test/objects']} objects (validation mAP@0.5 {v['val/map_50']:.4f})")
        return Evaluation(
            metrics=m, headline={k: m[k] for k in self.headline}, validation=v, summary=summary,
            mlflow_extra=per_class,
            artifacts=[(png, "plots"), (curves, "plots"), *((p, "plots") for p in pictures)],
        )

    # -- export and registry: train.tasks.detection.export and .registry -------------------------

    def export(self, cfg: DictConfig) -> dict[str, Any]:
        from train.tasks.detection.export import export

        return export(cfg)

    def pyfunc_example(self, cfg: DictConfig, export_dir: Path) -> tuple[Any, Any]:
        from train.tasks.detection.registry import pyfunc_example

        return pyfunc_example(cfg, export_dir)

    def gate_evaluate(self, local: Any, prepared: Path, metric: str, cache: dict[str, Any]) -> GateEvaluation:
        from train.tasks.detection.registry import gate_evaluate

        return gate_evaluate(local, prepared, metric, cache)

    def resampled(self, per_image: Any, idx: Any) -> Any:
        from train.tasks.detection.registry import resampled

        return resampled(per_image, idx)

    def parity_summary(self, parity: dict[str, Any]) -> dict[str, Any]:
        from train.tasks.detection.registry import parity_summary

        return parity_summary(parity)

    def model_card(self, verdict: dict[str, Any], local: Any) -> str:
        from train.tasks.detection.registry import model_card

        return model_card(verdict, local)


TASK = DetectionTask()
