"""Samplers that are deterministic per epoch and shard across ranks.

Both subclass :class:`torch.utils.data.DistributedSampler` so that Lightning leaves them alone
(it only injects its own distributed sampler when the loader's sampler is not one already). The
data modules build them with the trainer's world size and rank, so the same code runs on one
process and under DDP.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler


class EpochShuffleSampler(DistributedSampler):
    """Shuffled, rank-sharded sampler whose order depends only on ``(seed, epoch)``.

    ``set_epoch`` (called by Lightning before every epoch) also re-seeds ``loader_generator``, the
    generator handed to the ``DataLoader``: worker seeds are drawn from it, so per-sample random
    augmentation is a function of ``(seed, epoch, rank)`` too. This is what makes a run resumed
    from an epoch-end checkpoint see the same batches as an uninterrupted one.
    """

    def __init__(
        self,
        dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = False,
        loader_generator: torch.Generator | None = None,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.loader_generator = loader_generator
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(
                (self.seed * 1_000_003 + epoch * 7919 + self.rank * 104_729) % (2**63 - 1)
            )


class ShardSampler(DistributedSampler):
    """Sequential, rank-sharded sampler without padding (``indices[rank::world]``).

    Lightning's default distributed eval sampler pads the last batch with duplicates, which makes a
    DDP test accuracy differ from a single-process one; this one visits every sample exactly once.
    """

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        n = len(dataset)
        self.num_samples = max(0, math.ceil((n - rank) / num_replicas))
        self.total_size = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
