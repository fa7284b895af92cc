"""LightningDataModule over the prepared manifests, with albumentations augmentation.

Per sample: decode (visionops.images) -> resize to uint8 (visionops.preprocess.to_uint8)
-> [train only: albumentations] -> normalise (visionops.preprocess.normalize). Evaluation is
exactly the shared preprocessing that serving runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import lightning.pytorch as L
import numpy as np
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset

from visionops.images import decode_image
from visionops.manifest import Record, read_labels, read_manifest
from visionops.preprocess import PreprocessSpec, normalize, to_uint8


def build_augment(transforms_cfg: Sequence[Any] | None, seed: int | None = None) -> A.Compose | None:
    """The augmentation preset (a list of albumentations `_target_` configs) as one Compose.

    albumentations keeps its own RNG, untouched by global seeding: the seed is passed here, and
    each DataLoader worker re-seeds its copy (see `_seed_worker`) so workers do not repeat each other.
    """
    if not transforms_cfg:
        return None
    return A.Compose([instantiate(t) for t in transforms_cfg], seed=seed)


def _seed_worker(worker_id: int) -> None:
    from lightning.fabric.utilities.seed import pl_worker_init_function

    pl_worker_init_function(worker_id)
    info = torch.utils.data.get_worker_info()
    augment = getattr(info.dataset, "augment", None) if info is not None else None
    if augment is not None:
        augment.set_random_seed(torch.initial_seed() % 2**32)  # base seed + worker id: distinct, reproducible


class ManifestDataset(Dataset):
    def __init__(
        self,
        records: list[Record],
        label_to_idx: dict[str, int],
        spec: PreprocessSpec,
        augment: A.Compose | None = None,
        cache: bool = False,
    ):
        self.records = records
        self.targets = [label_to_idx[r.label] for r in records]
        self.spec = spec
        self.augment = augment
        self._cache: list[np.ndarray] | None = None
        if cache:
            self._cache = [self._load(i) for i in range(len(records))]

    def _load(self, i: int) -> np.ndarray:
        img = decode_image(self.records[i].path, channels=self.spec.channels)
        return to_uint8(img, self.spec)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        arr = self._cache[i] if self._cache is not None else self._load(i)
        if self.augment is not None:
            arr = self.augment(image=arr)["image"]
            if arr.ndim == 2:
                arr = arr[:, :, None]
        return torch.from_numpy(normalize(arr, self.spec)), self.targets[i]


class ManifestDataModule(L.LightningDataModule):
    def __init__(
        self,
        prepared_dir: str | Path,
        spec: PreprocessSpec,
        augment: A.Compose | None = None,
        batch_size: int = 64,
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
        self.datasets: dict[str, ManifestDataset] = {}

    @classmethod
    def from_config(cls, cfg: Any, pin_memory: bool = False) -> ManifestDataModule:
        return cls(
            prepared_dir=cfg.paths.prepared,
            spec=PreprocessSpec.from_data_config(cfg.data),
            augment=build_augment(cfg.augment.transforms, seed=int(cfg.seed)),
            batch_size=int(cfg.data.batch_size),
            num_workers=int(cfg.data.num_workers),
            cache=bool(cfg.data.cache),
            pin_memory=pin_memory,
        )

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.labels = read_labels(self.prepared_dir)
        idx = {label: i for i, label in enumerate(self.labels)}
        for split in ("train", "val", "test"):
            records = read_manifest(self.prepared_dir / f"{split}.csv")
            aug = self.augment if split == "train" else None
            self.datasets[split] = ManifestDataset(records, idx, self.spec, aug, cache=self.cache)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            worker_init_fn=_seed_worker if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
