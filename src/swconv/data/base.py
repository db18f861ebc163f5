"""Shared LightningDataModule logic: a *global* batch size split across ranks, deterministic
per-epoch samplers, and loaders with their own RNG (so the global RNG is never consumed by data
loading)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .samplers import EpochShuffleSampler, ShardSampler


class BaseDataModule(L.LightningDataModule):
    """Subclasses set ``self.data_train``, ``self.data_val`` and ``self.data_test`` in ``setup``.

    Args:
        batch_size: global batch size per optimizer micro-step, summed over all ranks
            (the effective batch is ``batch_size * trainer.accumulate_grad_batches``).
        eval_batch_size: global eval batch size; ``None`` = ``1.5 * batch_size`` (reference).
        num_workers: loader workers per rank.
        seed: shuffling seed (the order is a function of seed, epoch and rank only).
    """

    num_classes: int = 0
    in_chans: int = 3
    img_size: int = 224

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = True,
        persistent_workers: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size else int(1.5 * batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.drop_last = bool(drop_last)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.seed = int(seed)
        self.data_train: Dataset | None = None
        self.data_val: Dataset | None = None
        self.data_test: Dataset | None = None

    # ------------------------------------------------------------------ ranks
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def per_device(self, global_batch: int) -> int:
        world, _ = self._world()
        if global_batch % world:
            raise ValueError(
                f"data.batch_size={global_batch} (global) is not divisible by the world size {world} (devices x nodes)"
            )
        return global_batch // world

    # ---------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        world, rank = self._world()
        gen = torch.Generator()
        gen.manual_seed(self.seed + rank)
        if train:
            sampler = EpochShuffleSampler(
                dataset, num_replicas=world, rank=rank, seed=self.seed, drop_last=False, loader_generator=gen
            )
            bs = self.per_device(self.batch_size)
        else:
            sampler = ShardSampler(dataset, num_replicas=world, rank=rank)
            bs = max(1, self.eval_batch_size // world)
        return DataLoader(
            dataset,
            batch_size=bs,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=self.drop_last and train,
            persistent_workers=self.persistent_workers,
            generator=gen,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
