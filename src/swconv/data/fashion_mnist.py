"""Fashion-MNIST from the IDX files (Debian package ``dataset-fashion-mnist``).

The IDX format is read directly (big-endian header: magic ``0x0000 08 ndim``, one uint32 per
dimension, then uint8 data); ``.gz`` and plain files are both accepted, in ``root`` itself or in
``root/FashionMNIST/raw`` (torchvision's layout).
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .base import BaseDataModule

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class MissingDataError(FileNotFoundError):
    pass


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise ValueError(f"{path}: unsupported IDX element type 0x{dtype_code:02x} (want uint8)")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated IDX file ({data.size} of {int(np.prod(dims))} bytes)")
    return data.reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip if the name ends in .gz). Used by tests/tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _find(root: Path, stem: str) -> Path | None:
    for d in (root, root / "FashionMNIST" / "raw"):
        for name in (stem + ".gz", stem):
            if (d / name).is_file():
                return d / name
    return None


def missing_message(root: Path, missing: Sequence[str]) -> str:
    return (
        f"Fashion-MNIST not found in data.root='{root}' (missing: {', '.join(missing)}). "
        f"Fix: install the Debian package with `sudo apt-get install dataset-fashion-mnist` "
        f"(it puts the IDX files in {DEFAULT_ROOT}), or pass data.root=<dir holding the four "
        f"IDX files>, or data.download=true when online (torchvision download into data.root)."
    )


def load_split(root: str | os.PathLike, split: str, download: bool = False):
    """Return ``(images uint8 (N, 28, 28), labels int64 (N,))`` for split ``train`` or ``test``."""
    root = Path(root).expanduser()
    stems = FILES[split]
    paths = [_find(root, s) for s in stems]
    if any(p is None for p in paths) and download:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(root), train=(split == "train"), download=True)
        except Exception as e:  # offline, no torchvision, ...
            raise MissingDataError(missing_message(root, stems) + f" (download failed: {e})") from e
        paths = [_find(root, s) for s in stems]
    if any(p is None for p in paths):
        raise MissingDataError(missing_message(root, [s for s, p in zip(stems, paths) if p is None]))
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{root}: inconsistent IDX shapes {images.shape} / {labels.shape}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class TensorImageDataset(Dataset):
    """uint8 images (N, H, W) in memory -> normalised float (C, S, S), with optional light
    augmentation (random crop with ``pad`` pixels of zero padding + horizontal flip)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        in_chans: int = 1,
        img_size: int = 28,
        augment: bool = False,
        pad: int = 2,
        hflip: bool = True,
        mean: float = MEAN,
        std: float = STD,
    ):
        self.images, self.labels = images, labels
        self.in_chans, self.img_size = int(in_chans), int(img_size)
        self.augment, self.pad, self.hflip = bool(augment), int(pad), bool(hflip)
        self.mean, self.std = float(mean), float(std)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].to(torch.float32).div_(255.0).unsqueeze(0)  # (1, H, W)
        if self.augment:
            h, w = x.shape[-2:]
            if self.pad:
                x = F.pad(x, (self.pad,) * 4)
                dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
                x = x[:, dy : dy + h, dx : dx + w]
            if self.hflip and torch.rand(()) < 0.5:
                x = x.flip(-1)
        if x.shape[-1] != self.img_size:
            x = F.interpolate(x[None], size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)[0]
        x = (x - self.mean) / self.std
        if self.in_chans != 1:
            x = x.expand(self.in_chans, -1, -1).contiguous()
        return x, int(self.labels[i])


def _subset(images, labels, n: int | None, seed: int):
    if n is None or n >= len(labels):
        return images, labels
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[: int(n)]
    idx, _ = idx.sort()
    return images[idx], labels[idx]


class FashionMNISTDataModule(BaseDataModule):
    """Fashion-MNIST: train = 60k minus ``val_size`` (held out with a fixed seed), val = the held
    out part, test = the official 10k test set. ``limit_train``/``limit_val``/``limit_test`` take
    fixed random subsets (for fast runs and tests)."""

    num_classes = 10

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        download: bool = False,
        val_size: int = 5000,
        limit_train: int | None = None,
        limit_val: int | None = None,
        limit_test: int | None = None,
        in_chans: int = 1,
        img_size: int = 28,
        augment: bool = True,
        split_seed: int = 12345,
        num_classes: int = 10,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_classes) != 10:
            raise ValueError(f"Fashion-MNIST has 10 classes, data.num_classes={num_classes}")
        self.root, self.download = root, bool(download)
        self.val_size = int(val_size)
        self.limit_train, self.limit_val, self.limit_test = limit_train, limit_val, limit_test
        self.in_chans, self.img_size, self.augment = int(in_chans), int(img_size), bool(augment)
        self.split_seed = int(split_seed)

    def prepare_data(self) -> None:
        # only checks/downloads; fails early with the fix in the message
        for split in ("train", "test"):
            stems = FILES[split]
            root = Path(self.root).expanduser()
            if any(_find(root, s) is None for s in stems):
                load_split(root, split, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        ds = dict(in_chans=self.in_chans, img_size=self.img_size)
        if stage in (None, "fit", "validate") and self.data_train is None:
            images, labels = load_split(self.root, "train", self.download)
            perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
            val_idx, train_idx = perm[: self.val_size].sort()[0], perm[self.val_size :].sort()[0]
            tr = _subset(images[train_idx], labels[train_idx], self.limit_train, self.split_seed + 1)
            va = _subset(images[val_idx], labels[val_idx], self.limit_val, self.split_seed + 2)
            self.data_train = TensorImageDataset(*tr, augment=self.augment, **ds)
            self.data_val = TensorImageDataset(*va, **ds)
        if stage in (None, "test", "predict") and self.data_test is None:
            images, labels = load_split(self.root, "test", self.download)
            te = _subset(images, labels, self.limit_test, self.split_seed + 3)
            self.data_test = TensorImageDataset(*te, **ds)
