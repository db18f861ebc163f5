"""ImageNet-layout folders (``root/train/<class>/*.JPEG``, ``root/val/<class>/*.JPEG``) with the
reference transforms built by ``timm.data.create_transform``:

- train: RandomResizedCrop(224, bicubic) + hflip + RandAugment ``rand-m9-mstd0.5-inc1`` +
  random erasing p=0.25 (mode pixel, count 1) + ImageNet mean/std;
- eval: resize the shorter side to ``int(224 / crop_pct)`` = 256 (bicubic), centre crop 224.

Mixup/CutMix run on the batch in the LightningModule (timm ``Mixup``).
"""

from __future__ import annotations

from pathlib import Path

from .base import BaseDataModule


class ImageFolderDataModule(BaseDataModule):
    def __init__(
        self,
        root: str = "data/imagenet",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        img_size: int = 224,
        num_classes: int = 1000,
        in_chans: int = 3,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        color_jitter: float = 0.4,
        reprob: float = 0.25,
        remode: str = "pixel",
        recount: int = 1,
        interpolation: str = "bicubic",
        hflip: float = 0.5,
        crop_pct: float = 0.875,
        scale: tuple = (0.08, 1.0),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = root
        self.splits = (train_split, val_split, test_split or val_split)
        self.img_size, self.num_classes, self.in_chans = int(img_size), int(num_classes), int(in_chans)
        self.aug = dict(
            auto_augment=auto_augment,
            color_jitter=color_jitter,
            re_prob=reprob,
            re_mode=remode,
            re_count=recount,
            interpolation=interpolation,
            hflip=hflip,
            scale=tuple(scale),
        )
        self.crop_pct, self.interpolation = float(crop_pct), interpolation

    def transforms(self):
        from timm.data import create_transform

        train = create_transform(self.img_size, is_training=True, **self.aug)
        evalt = create_transform(
            self.img_size, is_training=False, interpolation=self.interpolation, crop_pct=self.crop_pct
        )
        return train, evalt

    def _folder(self, split: str, transform):
        from torchvision.datasets import ImageFolder

        path = Path(self.root).expanduser() / split
        if not path.is_dir():
            raise FileNotFoundError(
                f"ImageFolder split not found: '{path}'. Expected the ImageNet layout "
                f"<data.root>/{split}/<class>/<image>; set data.root=<dir>."
            )
        return ImageFolder(str(path), transform=transform)

    def setup(self, stage: str | None = None) -> None:
        train_t, eval_t = self.transforms()
        if stage in (None, "fit", "validate") and self.data_train is None:
            self.data_train = self._folder(self.splits[0], train_t)
            self.data_val = self._folder(self.splits[1], eval_t)
            found = len(self.data_train.classes)
            if found != self.num_classes:
                raise ValueError(
                    f"{self.root}/{self.splits[0]} has {found} class folders but data.num_classes={self.num_classes}"
                )
        if stage in (None, "test", "predict") and self.data_test is None:
            self.data_test = self._folder(self.splits[2], eval_t)
