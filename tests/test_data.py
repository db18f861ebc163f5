"""Data modules: IDX reading, splits/subsets, global batch split across ranks, samplers, errors."""

import gzip
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from swconv.data import (
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MissingDataError,
    SyntheticDataModule,
    read_idx,
    write_idx,
)
from swconv.data.samplers import EpochShuffleSampler, ShardSampler


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("x.idx" + (".gz" if gz else ""))
    write_idx(p, a)
    np.testing.assert_array_equal(read_idx(p), a)
    raw = gzip.open(p).read() if gz else p.read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and int.from_bytes(raw[4:8], "big") == 2


def test_idx_truncated(tmp_path):
    p = tmp_path / "bad"
    write_idx(p, np.zeros((4, 2), np.uint8))
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)


def test_fashion_mnist_datamodule(fake_fmnist):
    dm = FashionMNISTDataModule(root=str(fake_fmnist), val_size=50, batch_size=32, eval_batch_size=40, limit_test=60)
    dm.prepare_data()
    dm.setup("fit"), dm.setup("test")
    assert len(dm.data_train) == 250 and len(dm.data_val) == 50 and len(dm.data_test) == 60
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape[0] == 40
    # eval loader visits every test sample exactly once, in order
    ys = torch.cat([b[1] for b in dm.test_dataloader()])
    assert len(ys) == 60
    # 3 channels / upscale for ImageNet-style stems
    dm3 = FashionMNISTDataModule(
        root=str(fake_fmnist), val_size=50, in_chans=3, img_size=32, augment=False, batch_size=8
    )
    dm3.setup("fit")
    assert dm3.data_train[0][0].shape == (3, 32, 32)


def test_fashion_mnist_torchvision_layout(tmp_path):
    from tests.helpers.data import write_fake_fashion_mnist

    write_fake_fashion_mnist(tmp_path / "FashionMNIST" / "raw", 20, 10, gz=False)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=5, limit_train=7)
    dm.setup()
    assert len(dm.data_train) == 7 and len(dm.data_test) == 10


def test_missing_data_dir_message(tmp_path):
    missing = tmp_path / "nowhere"
    dm = FashionMNISTDataModule(root=str(missing))
    with pytest.raises(MissingDataError) as e:
        dm.prepare_data()
    msg = str(e.value)
    assert str(missing) in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "data.root=" in msg


def _fake_trainer(world, rank):
    return SimpleNamespace(world_size=world, global_rank=rank)


def test_global_batch_split_across_ranks(fake_fmnist):
    seen = []
    for rank in range(2):
        dm = FashionMNISTDataModule(
            root=str(fake_fmnist), val_size=50, batch_size=32, eval_batch_size=20, augment=False
        )
        dm.trainer = _fake_trainer(2, rank)
        dm.setup()
        dl = dm.train_dataloader()
        assert dl.batch_size == 16  # global 32 over 2 ranks
        idx = list(dl.sampler)
        seen.append(set(idx))
        assert dm.test_dataloader().batch_size == 10
    assert not (seen[0] & seen[1]) and len(seen[0] | seen[1]) == 250
    dm = FashionMNISTDataModule(root=str(fake_fmnist), batch_size=33)
    dm.trainer = _fake_trainer(2, 0)
    with pytest.raises(ValueError, match="not divisible"):
        dm.per_device(33)


def test_epoch_sampler_deterministic():
    ds = list(range(100))
    g1, g2 = torch.Generator(), torch.Generator()
    a, b = EpochShuffleSampler(ds, seed=3, loader_generator=g1), EpochShuffleSampler(ds, seed=3, loader_generator=g2)
    a.set_epoch(4), b.set_epoch(4)
    assert list(a) == list(b) and g1.initial_seed() == g2.initial_seed()
    b.set_epoch(5)
    assert list(a) != list(b)
    shards = [list(ShardSampler(ds, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == ds and [len(s) for s in shards] == [34, 33, 33]


def test_synthetic_datamodule():
    dm = SyntheticDataModule(num_classes=4, in_chans=3, img_size=16, num_train=20, num_val=8, batch_size=4)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and int(y.max()) < 4
    assert torch.equal(dm.data_train[3][0], dm.data_train[3][0])  # deterministic per index


def test_imagefolder_reference_transforms(tmp_path):
    from tests.helpers.data import write_image_folder

    dm = ImageFolderDataModule(root=str(tmp_path), num_classes=2, batch_size=2, num_workers=0)
    train_t, eval_t = dm.transforms()
    tr, ev = repr(train_t), repr(eval_t)
    assert "RandomResizedCrop" in tr and "bicubic" in tr.lower() and "RandomHorizontalFlip" in tr
    assert "RandAugment" in tr and "RandomErasing" in tr
    assert "Resize(size=256" in ev and "CenterCrop(size=(224, 224))" in ev
    write_image_folder(tmp_path, per_class=2)
    dm = ImageFolderDataModule(
        root=str(tmp_path),
        num_classes=2,
        img_size=32,
        batch_size=2,
        eval_batch_size=4,
        num_workers=0,
        persistent_workers=False,
    )
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32)
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="data.root"):
        ImageFolderDataModule(root=str(tmp_path / "no"), num_classes=2).setup()
