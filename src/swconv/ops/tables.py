"""Channel split and shuffle tables of the shift-wise operator (SPEC §1.2, §1.4, §1.5, §13).

Tables are drawn from private generators seeded 123 in the reference draw order, so a reference
checkpoint means the same thing here, and building a model never touches the global RNGs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

TABLE_SEED = 123
GHOST_SPLITS = ("v1", "v2")


def num_slots(big_kernel: int, small_kernel: int) -> int:
    """Number of small kernels (slots) tiling one long axis: ceil(K / k)."""
    return math.ceil(big_kernel / small_kernel)


def check_kernel_sizes(big_kernel: int, small_kernel: int) -> None:
    if small_kernel < 1 or small_kernel % 2 == 0:
        raise ValueError(f"small_kernel must be odd and >= 1, got {small_kernel} (use 3 or 5)")
    if big_kernel < small_kernel:
        raise ValueError(
            f"big_kernel ({big_kernel}) must be >= small_kernel ({small_kernel}); "
            "for a plain k x k depthwise conv use nn.Conv2d(groups=C)"
        )


def slot_offsets(big_kernel: int, small_kernel: int) -> list[int]:
    """Centre offset d_s = s*k + r - floor(K/2) of slot s along the long axis (SPEC §1.4)."""
    check_kernel_sizes(big_kernel, small_kernel)
    r, m = small_kernel // 2, big_kernel // 2
    return [s * small_kernel + r - m for s in range(num_slots(big_kernel, small_kernel))]


def long_axis_extent(big_kernel: int, small_kernel: int) -> tuple[int, int]:
    """First and last offset covered along the long axis: [-m, nk*k - 1 - m] (SPEC §1.7)."""
    m = big_kernel // 2
    return -m, num_slots(big_kernel, small_kernel) * small_kernel - 1 - m


def split_channels(channels: int, ghost_ratio: float, variant: str = "v2") -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (rep, ghost) channel indices.

    v2: rep = floor(floor(C*(1-ratio)) / 2) * 2; v1: ghost = floor(C*ratio). Ghost channels are a
    ``RandomState(123)`` draw without replacement, as the reference's reseeded global numpy RNG.
    """
    if variant not in GHOST_SPLITS:
        raise ValueError(f"ghost split variant must be one of {GHOST_SPLITS}, got {variant!r}")
    if not 0.0 <= ghost_ratio < 1.0:
        raise ValueError(f"ghost_ratio must be in [0, 1), got {ghost_ratio}")
    if variant == "v2":
        rep_n = (int(channels * (1 - ghost_ratio)) // 2) * 2
    else:
        rep_n = channels - int(channels * ghost_ratio)
    if rep_n < 1:
        raise ValueError(
            f"{channels} channels with ghost_ratio {ghost_ratio} leave no rep channel; "
            "use more channels or a smaller ghost_ratio"
        )
    return ghost_split_from_count(channels, channels - rep_n)


def ghost_split_from_count(channels: int, ghost_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (rep, ghost) indices for a known ghost count (used by checkpoint converters)."""
    if ghost_n > 0:
        ghost = np.sort(np.random.RandomState(TABLE_SEED).choice(channels, ghost_n, replace=False))
    else:
        ghost = np.zeros(0, dtype=np.int64)
    rep = np.setdiff1d(np.arange(channels), ghost)
    return torch.as_tensor(rep, dtype=torch.long), torch.as_tensor(ghost, dtype=torch.long)


def make_shift_tables(
    rep_channels: int, n_slots: int, n_rep: int, seed: int = TABLE_SEED
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(perm_h, perm_v, identity_pick) in the reference draw order.

    perm_h[g, c, s] is the small kernel placed at horizontal slot s of channel c in group g
    (perm_v likewise); identity_pick[g, c] is the kernel group g adds to the identity branch.
    """
    if n_rep < 1:
        raise ValueError(f"n_rep must be >= 1, got {n_rep}")
    gen = torch.Generator().manual_seed(seed)

    def perms() -> torch.Tensor:
        return torch.stack(
            [torch.stack([torch.randperm(n_slots, generator=gen) for _ in range(rep_channels)]) for _ in range(n_rep)]
        )

    perm_h = perms()
    perm_v = perms()
    identity_pick = torch.stack([torch.randint(0, n_slots, (rep_channels,), generator=gen) for _ in range(n_rep)])
    return perm_h, perm_v, identity_pick


def slot_counts(perm: torch.Tensor, n_slots: int) -> torch.Tensor:
    """counts[c, s, j] = number of groups placing kernel j at slot s of channel c (float)."""
    n_rep, channels, _ = perm.shape
    counts = torch.zeros(channels, n_slots, n_slots, dtype=torch.float64)
    ones = torch.ones(channels, n_slots, 1, dtype=torch.float64)
    for g in range(n_rep):
        counts.scatter_add_(2, perm[g].unsqueeze(-1).cpu(), ones)
    return counts


def identity_counts(identity_pick: torch.Tensor, n_slots: int) -> torch.Tensor:
    """counts[c, j] = number of groups whose identity branch uses kernel j of channel c."""
    n_rep, channels = identity_pick.shape
    counts = torch.zeros(channels, n_slots, dtype=torch.float64)
    counts.scatter_add_(1, identity_pick.t().cpu(), torch.ones(channels, n_rep, dtype=torch.float64))
    return counts
