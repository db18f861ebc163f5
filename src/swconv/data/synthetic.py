"""Synthetic data: random images and labels (benchmarks, smoke tests). Deterministic given
``seed``. With ``learnable=True`` each class gets a fixed random template, so a model can
actually fit it (useful to check that loss goes down)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .base import BaseDataModule


class SyntheticDataset(Dataset):
    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        in_chans: int,
        img_size: int,
        seed: int,
        learnable: bool = False,
        noise: float = 1.0,
    ):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, num_classes, (num_samples,), generator=g)
        self.seeds = torch.randint(0, 2**31 - 1, (num_samples,), generator=g)
        self.shape = (in_chans, img_size, img_size)
        self.templates = torch.randn(num_classes, *self.shape, generator=g) if learnable else None
        self.noise = float(noise)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(int(self.seeds[i]))
        x = torch.randn(self.shape, generator=g) * self.noise
        y = int(self.labels[i])
        if self.templates is not None:
            x = x + self.templates[y]
        return x, y


class SyntheticDataModule(BaseDataModule):
    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int = 32,
        num_train: int = 256,
        num_val: int = 64,
        num_test: int | None = None,
        learnable: bool = True,
        noise: float = 1.0,
        data_seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes, self.in_chans, self.img_size = int(num_classes), int(in_chans), int(img_size)
        self.sizes = (int(num_train), int(num_val), int(num_test if num_test is not None else num_val))
        self.learnable, self.noise, self.data_seed = bool(learnable), float(noise), int(data_seed)

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is None:
            common = dict(
                num_classes=self.num_classes,
                in_chans=self.in_chans,
                img_size=self.img_size,
                learnable=self.learnable,
                noise=self.noise,
            )
            # same templates for all splits (same seed for the template draw)
            self.data_train = SyntheticDataset(self.sizes[0], seed=self.data_seed, **common)
            self.data_val = SyntheticDataset(self.sizes[1], seed=self.data_seed, **common)
            self.data_test = SyntheticDataset(self.sizes[2], seed=self.data_seed, **common)
            # distinct samples per split: re-draw labels/noise seeds, keep templates
            for k, ds in enumerate((self.data_val, self.data_test), start=1):
                g = torch.Generator().manual_seed(self.data_seed + 1000 * k)
                ds.labels = torch.randint(0, self.num_classes, (len(ds),), generator=g)
                ds.seeds = torch.randint(0, 2**31 - 1, (len(ds),), generator=g)
