"""Small synthetic datasets in the real on-disk formats."""

from pathlib import Path

import numpy as np

from swconv.data.fashion_mnist import write_idx


def write_fake_fashion_mnist(root, n_train: int = 300, n_test: int = 100, seed: int = 0, gz: bool = True) -> Path:
    """Four IDX files with learnable 28x28 images: class c = a bright horizontal band at row
    2 + 2c plus noise, so tiny models reach high accuracy in a few steps."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 + 2 * c : 4 + 2 * c, 4:24] = 230
        write_idx(root / f"{split}-images-idx3-ubyte{ext}", images)
        write_idx(root / f"{split}-labels-idx1-ubyte{ext}", labels)
    return root


def write_image_folder(root, classes=("a", "b"), per_class: int = 3, size: int = 40, splits=("train", "val")) -> Path:
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(0)
    for split in splits:
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                arr[..., ci % 3] = 255
                Image.fromarray(arr).save(d / f"{i}.png")
    return root
