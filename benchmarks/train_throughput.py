"""Training throughput: Lightning's loop against a minimal hand-written PyTorch loop.

Same model (the config's), same data (the prepared digits, augmentation on), same batch size,
same process. Prints images/s for each and the ratio, plus the data loader alone.

    .venv/bin/python benchmarks/train_throughput.py [epochs=3] [model=small_cnn] [batch_size=64] [workdir=...]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from train.datamodule import ManifestDataModule
from train.module import ImageClassifier
from train.prepare import prepare
from visionops.cli import parse_key_values
from visionops.config import compose
from visionops.preprocess import PreprocessSpec

USAGE = "usage: benchmarks/train_throughput.py [epochs=3] [model=small_cnn] [batch_size=64] [workdir=outputs/bench_train]"
DEFAULTS = {"epochs": "3", "model": "small_cnn", "batch_size": "64", "workdir": "outputs/bench_train"}


def main(argv: list[str] | None = None) -> None:
    try:
        args = parse_key_values(sys.argv[1:] if argv is None else argv, DEFAULTS, USAGE)
        epochs = int(args["epochs"])
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    tmp = Path(str(args["workdir"]))
    cfg = compose([
        "trainer=cpu", f"model={args['model']}", f"data.batch_size={args['batch_size']}",
        f"paths.prepared={tmp / 'prepared'}", f"paths.reports={tmp / 'reports'}",
    ])
    if not (tmp / "prepared" / "labels.json").exists():
        prepare(cfg)
    torch.set_num_threads(os.cpu_count() or 1)

    def make():
        L.seed_everything(0, verbose=False)
        dm = ManifestDataModule.from_config(cfg)
        dm.setup("fit")
        spec = PreprocessSpec.from_data_config(cfg.data)
        model = ImageClassifier(OmegaConf.to_container(cfg.model.net, resolve=True), dm.num_classes, spec.channels,
                                dm.labels, spec.to_dict(), optimizer=instantiate(cfg.model.optimizer))
        return dm, model

    dm, _ = make()
    n_train = len(dm.datasets["train"])

    # 1. data loader alone (decode is cached; augmentation + normalisation + collation per batch)
    loader = dm.train_dataloader()
    for _ in loader:
        pass
    t0 = time.perf_counter()
    for _ in range(epochs):
        for _ in loader:
            pass
    loader_ips = n_train * epochs / (time.perf_counter() - t0)

    # 2. minimal hand-written loop
    dm, model = make()
    opt = model.configure_optimizers()
    loader = dm.train_dataloader()
    model.train()

    def epoch() -> None:
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

    epoch()  # warm-up
    t0 = time.perf_counter()
    for _ in range(epochs):
        epoch()
    plain_ips = n_train * epochs / (time.perf_counter() - t0)

    # 3. Lightning's loop (no validation, no checkpoint I/O: the loop itself); the first epoch
    #    is the warm-up, as for the hand-written loop, and is not timed.
    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.end = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.starts.append(time.perf_counter())

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.end = time.perf_counter()

    dm, model = make()
    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=1 + epochs, accelerator="cpu", devices=1, logger=False, callbacks=[timer],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    lightning_ips = n_train * epochs / (timer.end - timer.starts[1])

    rows = [
        ("data loader alone", loader_ips, loader_ips / plain_ips),
        ("hand-written PyTorch loop (baseline)", plain_ips, 1.0),
        ("Lightning Trainer loop", lightning_ips, lightning_ips / plain_ips),
    ]
    print(f"\nTraining throughput: {cfg.model.arch}, batch {cfg.data.batch_size}, {n_train} train images, "
          f"{epochs} epochs, {torch.get_num_threads()} threads")
    print(f"| {'loop':<38} | {'images/s':>9} | {'vs baseline':>11} |")
    print(f"|{'-' * 40}|{'-' * 11}|{'-' * 13}|")
    for name, ips, ratio in rows:
        print(f"| {name:<38} | {ips:>9.0f} | {ratio:>10.2f}x |")


if __name__ == "__main__":
    main()
