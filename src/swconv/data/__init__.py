"""LightningDataModules, one per data source. ``batch_size`` is global (split across ranks)."""

from .base import BaseDataModule
from .fashion_mnist import FashionMNISTDataModule, MissingDataError, read_idx, write_idx
from .imagefolder import ImageFolderDataModule
from .synthetic import SyntheticDataModule

__all__ = [
    "BaseDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "SyntheticDataModule",
    "MissingDataError",
    "read_idx",
    "write_idx",
]
