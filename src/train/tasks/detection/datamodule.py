"""LightningDataModule over the prepared detection splits (`<prepared>/{train,val,test}.json`).

Each split is a `CocoDetectionDataset` (decode, resize to the input size with the boxes, box-aware
augmentation on train only, normalise); batches are (images (B, C, H, W), list of targets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import albumentations as A
import lightning.pytorch as L
from torch.utils.data import DataLoader

from train.tasks.detection.augment import from_config
from train.tasks.detection.dataset import CocoDetectionDataset, collate, label_names, read_split, seed_worker
from visionops.errors import VisionopsError
from visionops.preprocess import PreprocessSpec

SPLITS = ("train", "val", "test")


class DetectionDataModule(L.LightningDataModule):
    def __init__(
        self,
        prepared_dir: str | Path,
        spec: PreprocessSpec,
        augment: A.Compose | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        cache: bool = False,
        pin_memory: bool = False,
    ):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.spec = spec
        self.augment = augment
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache = cache
        self.pin_memory = pin_memory
        self.labels: list[str] = []
        self.datasets: dict[str, CocoDetectionDataset] = {}

    @classmethod
    def from_config(cls, cfg: Any, pin_memory: bool = False) -> DetectionDataModule:
        return cls(
            prepared_dir=cfg.paths.prepared,
            spec=PreprocessSpec.from_data_config(cfg.data),
            augment=from_config(cfg.augment, seed=int(cfg.seed)),
            batch_size=int(cfg.data.batch_size),
            num_workers=int(cfg.data.num_workers),
            cache=bool(cfg.data.cache),
            pin_memory=pin_memory,
        )

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> dict[str, Any]:
        path = self.prepared_dir / f"{name}.json"
        if not path.exists():
            raise VisionopsError(f"{path} not found: {self.prepared_dir} holds no prepared detection data; "
                                 "run the prepare stage with task=detection (`python -m train.prepare task=detection`)")
        return read_split(path)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        splits = {name: self.split(name) for name in SPLITS}
        self.labels = label_names(splits["train"])
        for name, coco in splits.items():
            # the test split is the evaluate stage's: not decoded (or cached) for training
            self.datasets[name] = CocoDetectionDataset(coco, self.spec, self.augment if name == "train" else None,
                                                       cache=self.cache and name != "test")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            worker_init_fn=seed_worker if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
