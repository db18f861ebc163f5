"""The shift-wise operator: tables, PyTorch formulations, CUDA dispatch and the SW layer."""

from .functional import IMPLS, cross_kernels, resolve_impl, shift_wise_conv
from .layer import ShiftWiseConv2d
from .tables import make_shift_tables, num_slots, slot_offsets, split_channels

__all__ = [
    "IMPLS",
    "ShiftWiseConv2d",
    "cross_kernels",
    "make_shift_tables",
    "num_slots",
    "resolve_impl",
    "shift_wise_conv",
    "slot_offsets",
    "split_channels",
]
