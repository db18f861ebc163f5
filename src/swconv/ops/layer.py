"""``ShiftWiseConv2d``: the SW layer of SPEC §1.6 (large cross-shaped depthwise kernel emulated by
shifted small kernels, three branch BNs, identity shortcut, ghost channels)."""

from __future__ import annotations

import torch
from torch import nn

from .functional import IMPLS, shift_wise_conv
from .tables import check_kernel_sizes, make_shift_tables, num_slots, split_channels


class ShiftWiseConv2d(nn.Module):
    """Shift-wise large-kernel depthwise block operator.

    Args:
        channels: input = output channels.
        big_kernel: K, the long extent of the emulated kernel (e.g. 51).
        small_kernel: k, odd size of the small kernels (3 for SW v2, 5 for v1).
        ghost_ratio: fraction of channels that bypass the operator untouched.
        n_path: parallel small-kernel convs summed before the shift (training-time
            over-parameterisation; ``merge_paths`` folds them).
        n_rep: independent shuffled shift-add groups.
        ghost_split: "v2" (even rep count) or "v1" channel split formula.
        impl: operator implementation, see ``swconv.ops.functional.IMPLS``.
    """

    def __init__(
        self,
        channels: int,
        big_kernel: int,
        small_kernel: int = 3,
        ghost_ratio: float = 0.23,
        n_path: int = 2,
        n_rep: int = 4,
        ghost_split: str = "v2",
        impl: str = "auto",
    ) -> None:
        super().__init__()
        check_kernel_sizes(big_kernel, small_kernel)
        if n_path < 1:
            raise ValueError(f"n_path must be >= 1, got {n_path}")
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; choose one of {IMPLS}")
        self.channels = channels
        self.big_kernel = big_kernel
        self.small_kernel = small_kernel
        self.n_rep = n_rep
        self.impl = impl
        self.n_slots = num_slots(big_kernel, small_kernel)

        rep_index, ghost_index = split_channels(channels, ghost_ratio, ghost_split)
        self.rep_channels = rep_index.numel()
        self.ghost_channels = ghost_index.numel()
        self.register_buffer("rep_index", rep_index)
        self.register_buffer("ghost_index", ghost_index)
        perm_h, perm_v, identity_pick = make_shift_tables(self.rep_channels, self.n_slots, n_rep)
        self.register_buffer("perm_h", perm_h)
        self.register_buffer("perm_v", perm_v)
        self.register_buffer("identity_pick", identity_pick)

        rep, kernels = self.rep_channels, self.rep_channels * self.n_slots
        self.paths = nn.ModuleList(
            nn.Conv2d(rep, kernels, small_kernel, padding=small_kernel // 2, groups=rep, bias=False)
            for _ in range(n_path)
        )
        self.register_buffer("kernel_mask", torch.ones(n_path, kernels))
        self.bn_h = nn.BatchNorm2d(rep)
        self.bn_v = nn.BatchNorm2d(rep)
        self.bn_i = nn.BatchNorm2d(rep)

    @property
    def n_path(self) -> int:
        return len(self.paths)

    def effective_weight(self) -> torch.Tensor:
        """Small kernels summed over paths, each path masked: (rep*nk, 1, k, k)."""
        masks = self.kernel_mask.to(self.paths[0].weight.dtype)
        weight = self.paths[0].weight * masks[0].view(-1, 1, 1, 1)
        for q in range(1, self.n_path):
            weight = weight + self.paths[q].weight * masks[q].view(-1, 1, 1, 1)
        return weight

    def kernel_active(self) -> torch.Tensor:
        """Bool (rep*nk,): small kernels active in at least one path."""
        return self.kernel_mask.amax(0) > 0

    def branches(self, x_rep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw (horizontal, vertical, identity) sums before the branch BNs."""
        return shift_wise_conv(
            x_rep,
            self.effective_weight(),
            self.perm_h,
            self.perm_v,
            self.identity_pick,
            self.big_kernel,
            kernel_active=self.kernel_active(),
            impl=self.impl,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__} expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        x_rep = x.index_select(1, self.rep_index)
        out_h, out_v, out_i = self.branches(x_rep)
        y = self.bn_h(out_h) + self.bn_v(out_v) + self.bn_i(out_i) + x_rep
        if self.ghost_channels == 0:
            return y
        return torch.cat([y, x.index_select(1, self.ghost_index)], dim=1)

    @torch.no_grad()
    def merge_paths(self) -> None:
        """Fold the masked paths into one conv (exact); the merged mask is their union."""
        if self.n_path == 1:
            return
        merged = self.effective_weight()
        mask = self.kernel_active().to(self.kernel_mask.dtype).unsqueeze(0)
        del self.paths[1:]
        self.paths[0].weight.copy_(merged)
        self.kernel_mask = mask

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, big_kernel={self.big_kernel}, small_kernel={self.small_kernel}, "
            f"rep={self.rep_channels}, ghost={self.ghost_channels}, n_slots={self.n_slots}, "
            f"n_path={self.n_path}, n_rep={self.n_rep}, impl={self.impl!r}"
        )
