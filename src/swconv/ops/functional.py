"""The shift-wise operator: two exact PyTorch formulations and the dispatch to the CUDA kernels.

Both formulations compute SPEC §1.6 for any float dtype, any H, W >= 1 and stride 1:

- ``torch_shift``: the literal algorithm. A grouped k x k conv produces every small-kernel
  response on its full support (padding k-1), the responses are gathered per slot through the
  tables and shifted along the long axis into the horizontal / vertical / identity sums.
- ``torch_dense``: assembles each channel's cross-shaped kernels (a k x nk*k bar, an nk*k x k bar
  and a k x k centre) from the small kernels by a differentiable gather-sum, then runs three
  depthwise convolutions.

``torch_dense`` is the default PyTorch path (see ``DEFAULT_TORCH_IMPL``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .tables import check_kernel_sizes, long_axis_extent, slot_offsets

IMPLS = ("auto", "torch", "torch_dense", "torch_shift", "cuda")
IMPL_ENV = "SWCONV_IMPL"
# Measured on 2 CPU cores (bench/cpu_formulations.py, table in README.md): the dense cross-kernel convs
# avoid the nk-times-wider intermediate and win at every SW-T stage shape.
DEFAULT_TORCH_IMPL = "torch_dense"

Branches = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


_cuda_kernels_loaded: bool | None = None


@torch.compiler.assume_constant_result
def cuda_kernels_available() -> bool:
    """True when CuPy imports and the CUDA kernels module loads; checked once per process.
    torch.compile evaluates it once while tracing (a ``functools.cache`` wrapper here made Dynamo
    trace through the cache with a warning)."""
    global _cuda_kernels_loaded
    if _cuda_kernels_loaded is None:
        try:
            import cupy  # noqa: F401

            from . import cuda  # noqa: F401

            _cuda_kernels_loaded = True
        except Exception:  # noqa: BLE001 - any import failure means "use PyTorch"
            _cuda_kernels_loaded = False
    return _cuda_kernels_loaded


def resolve_impl(impl: str, x: torch.Tensor) -> str:
    """Concrete formulation for ``impl`` on tensor ``x``; ``SWCONV_IMPL`` overrides ``auto``."""
    if impl == "auto":
        impl = os.environ.get(IMPL_ENV, "auto") or "auto"
    if impl not in IMPLS:
        raise ValueError(f"unknown shift-wise impl {impl!r} (from argument or ${IMPL_ENV}); choose one of {IMPLS}")
    if impl == "auto":
        impl = "cuda" if x.is_cuda and cuda_kernels_available() else "torch"
    if impl == "cuda":
        if not x.is_cuda:
            raise RuntimeError(
                f"shift-wise impl 'cuda' was forced but the input is on {x.device}; move the model "
                f"to a CUDA device or use impl='torch' (unset {IMPL_ENV})"
            )
        if not cuda_kernels_available():
            raise RuntimeError("shift-wise impl 'cuda' needs CuPy: pip install 'swconv[cuda]'")
    if impl == "torch":
        impl = DEFAULT_TORCH_IMPL
    return impl


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, perm_h: torch.Tensor, big_kernel: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"input must be (B, C, H, W), got shape {tuple(x.shape)}")
    n_rep, channels, n_slots = perm_h.shape
    if x.shape[1] != channels:
        raise ValueError(f"input has {x.shape[1]} channels but the tables are for {channels} rep channels")
    k = weight.shape[-1]
    if weight.shape != (channels * n_slots, 1, k, k):
        raise ValueError(
            f"weight must have shape ({channels * n_slots}, 1, k, k) for {channels} channels x "
            f"{n_slots} slots, got {tuple(weight.shape)}"
        )
    check_kernel_sizes(big_kernel, k)
    if len(slot_offsets(big_kernel, k)) != n_slots:
        raise ValueError(f"tables have {n_slots} slots but ceil({big_kernel}/{k}) differs")


def _apply_active(weight: torch.Tensor, kernel_active: torch.Tensor | None) -> torch.Tensor:
    if kernel_active is None:
        return weight
    return weight * kernel_active.to(weight.dtype).view(-1, 1, 1, 1)


def cross_kernels(
    weight: torch.Tensor, perm_h: torch.Tensor, perm_v: torch.Tensor, identity_pick: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel (k x nk*k, nk*k x k, k x k) kernels assembled from the small kernels."""
    n_rep, channels, n_slots = perm_h.shape
    k = weight.shape[-1]
    small = weight.view(channels, n_slots, k, k)
    counts_h = F.one_hot(perm_h, n_slots).sum(0).to(weight.dtype)  # (C, slot, kernel)
    counts_v = F.one_hot(perm_v, n_slots).sum(0).to(weight.dtype)
    counts_i = F.one_hot(identity_pick, n_slots).sum(0).to(weight.dtype)  # (C, kernel)
    tiles_h = torch.einsum("csj,cjuv->csuv", counts_h, small)
    tiles_v = torch.einsum("csj,cjuv->csuv", counts_v, small)
    kernel_h = tiles_h.permute(0, 2, 1, 3).reshape(channels, 1, k, n_slots * k)
    kernel_v = tiles_v.reshape(channels, 1, n_slots * k, k)
    kernel_i = torch.einsum("cj,cjuv->cuv", counts_i, small).unsqueeze(1)
    return kernel_h, kernel_v, kernel_i


def _dense(x, weight, perm_h, perm_v, identity_pick, big_kernel) -> Branches:
    channels = x.shape[1]
    k = weight.shape[-1]
    r = k // 2
    lo, hi = long_axis_extent(big_kernel, k)
    kernel_h, kernel_v, kernel_i = cross_kernels(weight, perm_h, perm_v, identity_pick)
    out_h = F.conv2d(F.pad(x, (-lo, hi, r, r)), kernel_h, groups=channels)
    out_v = F.conv2d(F.pad(x, (r, r, -lo, hi)), kernel_v, groups=channels)
    out_i = F.conv2d(x, kernel_i, padding=r, groups=channels)
    return out_h, out_v, out_i


def _shift(x, weight, perm_h, perm_v, identity_pick, big_kernel) -> Branches:
    batch, channels, height, width = x.shape
    n_rep, _, n_slots = perm_h.shape
    k = weight.shape[-1]
    r = k // 2
    offsets = slot_offsets(big_kernel, k)
    # Full-support responses: padded index i holds Z[i - r] for i in [0, H + 2r).
    z = F.conv2d(x, weight, padding=k - 1, groups=channels)
    base = torch.arange(channels, device=x.device).unsqueeze(-1) * n_slots

    def group_sum(perm: torch.Tensor) -> torch.Tensor:
        rows = (base + perm).reshape(n_rep, channels * n_slots)
        return sum(z[:, rows[g]] for g in range(n_rep))

    before, after = max(0, -(offsets[0] + r)), max(0, offsets[-1] - r)
    per_slot_h = F.pad(group_sum(perm_h)[:, :, r : r + height, :], (before, after))
    per_slot_h = per_slot_h.view(batch, channels, n_slots, height, -1)
    out_h = sum(per_slot_h[:, :, s, :, d + r + before : d + r + before + width] for s, d in enumerate(offsets))
    per_slot_v = F.pad(group_sum(perm_v)[:, :, :, r : r + width], (0, 0, before, after))
    per_slot_v = per_slot_v.view(batch, channels, n_slots, -1, width)
    out_v = sum(per_slot_v[:, :, s, d + r + before : d + r + before + height, :] for s, d in enumerate(offsets))
    identity_rows = base.squeeze(-1) + identity_pick  # (n_rep, C)
    out_i = sum(z[:, identity_rows[g], r : r + height, r : r + width] for g in range(n_rep))
    return out_h, out_v, out_i


_TORCH_FORMULATIONS = {"torch_dense": _dense, "torch_shift": _shift}


def shift_wise_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    perm_h: torch.Tensor,
    perm_v: torch.Tensor,
    identity_pick: torch.Tensor,
    big_kernel: int,
    kernel_active: torch.Tensor | None = None,
    impl: str = "auto",
) -> Branches:
    """Horizontal, vertical and identity branch sums of SPEC §1.6, each (B, C, H, W).

    ``weight`` (C*nk, 1, k, k) holds the small kernels already summed over paths and masked.
    ``kernel_active`` (bool, C*nk) marks kernels that may be non-zero: inactive ones are treated as
    zero and get zero gradient (the CUDA path skips them).
    """
    _check_inputs(x, weight, perm_h, big_kernel)
    impl = resolve_impl(impl, x)
    if impl == "cuda":
        from .cuda import shift_wise_conv_cuda

        return shift_wise_conv_cuda(x, weight, perm_h, perm_v, identity_pick, big_kernel, kernel_active)
    weight = _apply_active(weight, kernel_active)
    return _TORCH_FORMULATIONS[impl](x, weight.to(x.dtype), perm_h, perm_v, identity_pick, big_kernel)
