"""Kernel-granular dynamic sparsity: mask algorithms, prune-rate schedule, Lightning callback."""

from . import masks, schedule
from .masks import find_sw_layers
from .schedule import CosineDecay, make_schedule

__all__ = [
    "SparsityCallback",
    "SparsityMismatchError",
    "CosineDecay",
    "find_sw_layers",
    "make_schedule",
    "masks",
    "schedule",
]


def __getattr__(name):  # import Lightning lazily: the algorithms must not need it
    if name in ("SparsityCallback", "SparsityMismatchError"):
        from . import callback

        return getattr(callback, name)
    raise AttributeError(name)
