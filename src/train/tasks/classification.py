"""Classification as a task: one label per image. Its code is where it always was (the prepare
stage, train.datamodule, train.module, train.metrics); this only points the shared stages at it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from train.tasks.base import Evaluation, GateEvaluation, Task
from visionops.errors import VisionopsError

VALIDATION_PLOT = "confusion_val.png"


class ClassificationTask(Task):
    name = "classification"
    history = ("train/loss", "val/loss", "train/acc", "val/acc")
    last_epoch = ("train/loss", "val/loss", "val/acc", "val/f1_macro")
    headline = ("test/acc", "test/f1_macro", "test/ece")
    gate_metric = "test/acc"

    def prepare(self, cfg: DictConfig) -> dict[str, Any]:
        from train.prepare import prepare

        return prepare(cfg)

    def datamodule(self, cfg: DictConfig, pin_memory: bool = False) -> Any:
        from train.datamodule import ManifestDataModule

        return ManifestDataModule.from_config(cfg, pin_memory=pin_memory)

    def module(self, cfg: DictConfig, datamodule: Any, channels_last: bool = False) -> Any:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from train.module import ImageClassifier
        from visionops.preprocess import PreprocessSpec

        spec = PreprocessSpec.from_data_config(cfg.data)
        return ImageClassifier(
            net_cfg=OmegaConf.to_container(cfg.model.net, resolve=True),
            num_classes=datamodule.num_classes,
            in_channels=spec.channels,
            labels=datamodule.labels,
            preprocess=spec.to_dict(),
            optimizer=instantiate(cfg.model.optimizer),
            scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
            channels_last=channels_last,
        )

    def load(self, ckpt_path: str, map_location: str = "cpu") -> Any:
        from train.module import load_classifier

        return load_classifier(ckpt_path, map_location=map_location)

    def evaluate(self, cfg: DictConfig, model: Any, out: Path) -> Evaluation:
        """Test split: accuracy, macro F1, ECE, per class, the confusion matrix (confusion.csv for
        `dvc plots`, confusion.png) and predictions.csv; validation split: calibration and its
        confusion matrix (confusion_val.png)."""
        from train.metrics import evaluate_split

        prepared = Path(cfg.paths.prepared)
        labels = list(model.hparams["labels"])
        png = out / "confusion.png"
        m, probs, records, y = evaluate_split(model, prepared, "test", labels, png)
        pred = probs.argmax(1)
        with open(out / "confusion.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["actual", "predicted"])
            for a, p in zip(y, pred):
                w.writerow([labels[a], labels[p]])
        with open(out / "predictions.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "predicted", "confidence"])
            for r, p, pr in zip(records, pred, probs):
                w.writerow([r.path, r.label, labels[p], f"{pr.max():.6f}"])
        val_png = out / VALIDATION_PLOT
        val, *_ = evaluate_split(model, prepared, "val", labels, val_png)
        summary = (f"Test accuracy {m['test/acc']:.4f}, macro F1 {m['test/f1_macro']:.4f}, ECE {m['test/ece']:.4f} "
                   f"on {m['test/n']} images (validation ECE {val['val/ece']:.4f})")
        return Evaluation(
            metrics=m, headline={k: m[k] for k in self.headline}, validation=val, summary=summary,
            # Validation: calibration only. val/acc, val/loss and val/f1_macro are training's
            # per-epoch curves (step = epoch); another point would land on them at step 0.
            mlflow_extra={"val/ece": val["val/ece"]},
            artifacts=[(png, "plots"), (val_png, "plots")],
        )

    def export(self, cfg: DictConfig) -> dict[str, Any]:
        from train.export import export_classifier

        return export_classifier(cfg)

    def pyfunc_example(self, cfg: DictConfig, export_dir: Path) -> tuple[Any, Any]:
        """Two test images (a batch of 2 keeps the batch axis dynamic) and their probabilities."""
        from visionops.bundle import ModelBundle
        from visionops.manifest import read_manifest
        from visionops.onnx_runtime import OnnxModel
        from visionops.preprocess import load_batch

        spec = ModelBundle.load(export_dir).preprocess
        test = read_manifest(Path(cfg.paths.prepared) / "test.csv")[:2]
        example = load_batch([r.path for r in test], spec)
        return example, OnnxModel(export_dir / "model.onnx").predict_proba(example)

    def gate_evaluate(self, local: Any, prepared: Path, metric: str, cache: dict[str, Any]) -> GateEvaluation:
        from train.gate import evaluate_version

        if metric != "accuracy":
            raise VisionopsError(f"registry.gate.primary_metric={metric} is not a classification metric "
                                 "(accuracy); a detection project's commands take task=detection")
        ev = evaluate_version(local, prepared, cache)
        return GateEvaluation(ev.version, ev.accuracy, ev.correct, len(ev.correct))

    def resampled(self, per_image: Any, idx: Any) -> Any:
        from train.gate import mean_of_resamples

        return mean_of_resamples(per_image, idx)

    def parity_summary(self, parity: dict[str, Any]) -> dict[str, Any]:
        return {"top1_agreement": parity.get("top1_agreement")}

    def model_card(self, verdict: dict[str, Any], local: Any) -> str:
        from train.decision import classification_card

        return classification_card(verdict, local)


TASK = ClassificationTask()
