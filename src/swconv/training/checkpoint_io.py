"""Crash-safe checkpoint writes.

Lightning 2.6's ``TorchCheckpointIO`` serialises to memory and writes through an fsspec
transaction; for local files fsspec first writes a ``tempfile.mkstemp()`` file in the *system*
temp dir and then ``shutil.move``s it, which degrades to copy+delete across filesystems (a crash
mid-copy leaves a truncated file under the final name) and never fsyncs. ``AtomicCheckpointIO``
writes ``<name>.tmp-<pid>`` next to the target, fsyncs it, ``os.replace``s it over the target (atomic
on POSIX within one filesystem) and fsyncs the directory: after a crash the target is either the old
complete checkpoint or the new complete one.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems do not support fsync on directories
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path)  # remote: fsspec transaction
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))
