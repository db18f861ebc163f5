"""CuPy (NVRTC) path of the shift-wise operator: fused, deterministic, sparse-aware.

``shift_wise_conv_cuda(x, weight, perm_h, perm_v, identity_pick, big_kernel, kernel_active)``
returns ``(out_h, out_v, out_i)`` exactly as SPEC §1.6 (same contract as
``swconv.ops.functional.shift_wise_conv``). The kernels live in ``kernels/shift_wise.cu`` and are
compiled on first use by NVRTC through ``cupy.RawModule`` for the running GPU (one module per
dtype / small kernel / pixels-per-thread variant, cached per process and by CuPy on disk). They
launch on PyTorch's current stream and read / write torch tensors in place (raw device pointers,
no copies beyond making the input contiguous).

Autograd goes through two ``torch.library.custom_op`` ops (``swconv::shift_wise_fwd`` and
``swconv::shift_wise_bwd``) with fake implementations, so ``torch.compile`` treats them as opaque
nodes. Forward and backward are deterministic: no atomics anywhere; the weight gradient is
reduced per block in a fixed order and the per-block partials are summed by ``torch.sum``.

Storage dtypes: float32, float16, bfloat16 (fp32 accumulation) and float64 (fp64 accumulation,
for gradcheck). Under CUDA autocast a float32 input is cast to the autocast dtype first (as a
convolution would be). Layout and index math: ``kernels/README.md``.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from pathlib import Path

import cupy  # noqa: F401  (import failure = "CUDA path unavailable" for the dispatcher)
import torch

__all__ = ["shift_wise_conv_cuda", "kernel_source_path", "build_tables", "launch_plan", "launch_plan_v2", "kernel_info"]

_KERNEL_FILES = {"v1": "shift_wise.cu", "v2": "shift_wise_v2.cu"}
KERNEL_ENV = "SWCONV_CUDA_KERNEL"  # "v2" (default, register strips) or "v1" (per-pixel gather)
_ZP_BUCKETS = (8, 9, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
# Shared-memory budgets per block (bytes): small enough for 2-3 resident blocks per SM.
_FWD_SMEM_BUDGET = 72 * 1024
_BWD_SMEM_BUDGET = 100 * 1024
_TARGET_PIXELS = 1568  # planes per block are grouped up to about this many output pixels


def kernel_source_path() -> Path:
    """Directory of the .cu sources: $SWCONV_KERNEL_DIR or <repo>/kernels."""
    env = os.environ.get("SWCONV_KERNEL_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "kernels"


_source_cache: dict[str, str] = {}


def kernel_version() -> str:
    v = os.environ.get(KERNEL_ENV, "v2") or "v2"
    if v not in _KERNEL_FILES:
        raise ValueError(f"${KERNEL_ENV} must be one of {sorted(_KERNEL_FILES)}, got {v!r}")
    return v


def _source(version: str) -> str:
    if version not in _source_cache:
        _source_cache[version] = (kernel_source_path() / _KERNEL_FILES[version]).read_text()
    return _source_cache[version]


_modules: dict[tuple, tuple] = {}
_optin: dict[int, int] = {}


def _smem_optin(device_index: int) -> int:
    """Largest dynamic shared memory a block may opt in to (minus a little for static smem)."""
    v = _optin.get(device_index)
    if v is None:
        try:
            v = int(torch.cuda.get_device_properties(device_index).shared_memory_per_block_optin)
        except AttributeError:
            with cupy.cuda.Device(device_index):
                v = int(cupy.cuda.Device(device_index).attributes["MaxSharedMemoryPerBlockOptin"])
        v -= 1024
        _optin[device_index] = v
    return v


def _min_blocks() -> int:
    """Minimum resident blocks per SM asked of the compiler (register cap) for v2; $SWCONV_CUDA_MINB."""
    return int(os.environ.get("SWCONV_CUDA_MINB", "2") or 2)


def _functions(version: str, dtype_code: int, ks: int, ppt: int, lb: int, zp: int, device_index: int):
    minb = _min_blocks() if lb <= 512 else 1
    key = (version, dtype_code, ks, ppt, lb, zp, minb, device_index)
    fns = _modules.get(key)
    if fns is None:
        opts = (
            f"-DDT={dtype_code}",
            f"-DKS={ks}",
            f"-DPPT={ppt}",
            f"-DLB={lb}",
            f"-DZP={zp}",
            f"-DMINB={minb}",
            "-std=c++17",
        )
        with cupy.cuda.Device(device_index):
            mod = cupy.RawModule(code=_source(version), options=opts, backend="nvrtc")
            fwd = mod.get_function("swc_fwd")
            bwd = mod.get_function("swc_bwd")
            optin = _smem_optin(device_index)
            for fn in (fwd, bwd):
                fn.max_dynamic_shared_size_bytes = optin
                fn.preferred_shared_memory_carveout = 100  # max shared memory: 2-3 blocks per SM
        fns = (fwd, bwd, optin)
        _modules[key] = fns
    return fns


_streams: dict[int, object] = {}


def _stream(device: torch.device):
    ptr = torch.cuda.current_stream(device).cuda_stream
    s = _streams.get(ptr)
    if s is None:
        s = cupy.cuda.ExternalStream(ptr, device.index)
        _streams[ptr] = s
    return s


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------
_table_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def build_tables(
    perm_h: torch.Tensor, perm_v: torch.Tensor, identity_pick: torch.Tensor, big_kernel: int, small_kernel: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-kernel device tables: ``offh``/``offv`` int32 (C, nk, N_rep) hold the signed centre
    offset d_s = s*k + r - m of the slot where kernel j sits in group g (inverse permutation);
    ``idc`` int32 (C, nk) counts the groups whose identity pick is j."""
    n_rep, channels, nk = perm_h.shape
    r, m = small_kernel // 2, big_kernel // 2

    def offsets(perm: torch.Tensor) -> torch.Tensor:
        inv = torch.argsort(perm, dim=-1)  # inv[g, c, j] = s with perm[g, c, s] = j
        return (inv * small_kernel + (r - m)).permute(1, 2, 0).contiguous().to(torch.int32)

    idc = (identity_pick.unsqueeze(-1) == torch.arange(nk, device=identity_pick.device)).sum(0)
    return offsets(perm_h), offsets(perm_v), idc.to(torch.int32).contiguous()


def _tables(perm_h, perm_v, identity_pick, big_kernel, ks, device):
    key = tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in (perm_h, perm_v, identity_pick))
    key = key + (big_kernel, ks, str(device))
    hit = _table_cache.get(key)
    if hit is None:
        if len(_table_cache) > 64:
            _table_cache.clear()
        hit = tuple(
            t.to(device)
            for t in build_tables(perm_h.to(device), perm_v.to(device), identity_pick.to(device), big_kernel, ks)
        )
        _table_cache[key] = hit
    return hit


_ones_cache: dict[tuple, torch.Tensor] = {}


def _all_active(n: int, device) -> torch.Tensor:
    key = (n, str(device))
    t = _ones_cache.get(key)
    if t is None:
        t = torch.ones(n, dtype=torch.uint8, device=device)
        _ones_cache[key] = t
    return t


# ----------------------------------------------------------------------------------------------
# launch planning
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def launch_plan(
    B: int,
    C: int,
    H: int,
    W: int,
    nk: int,
    nrep: int,
    ks: int,
    acc_bytes: int,
    backward: bool,
    smem_limit: int = 227 * 1024,
):
    """(P planes per block, threads, pixels per thread, launch bound, chunk CH, smem bytes) or None
    when one plane does not fit in shared memory."""
    r = ks // 2
    hw = H * W
    ehw = (H + 2 * r) * (W + 2 * r)
    xhw = (H + 4 * r) * (W + 4 * r)
    P = max(1, min(B, _TARGET_PIXELS // hw, 64))
    while True:
        npix = P * hw
        nt = ppt = 0
        for ppt in (4, 8, 16):
            nt = max(32, 32 * math.ceil(math.ceil(npix / ppt) / 32))
            if nt <= 512:
                break
        if nt > 1024:
            return None
        lb = 512 if nt <= 512 else 1024
        nwarp = nt // 32
        kk = ks * ks
        ints = 4 * (2 * nk * nrep + 2 * nk) + 16
        fixed = acc_bytes * (nk * kk + P * xhw + (3 * P * hw if backward else 0)) + ints
        per_ch = acc_bytes * (P * ehw + (nwarp * kk if backward else 0))
        budget = _BWD_SMEM_BUDGET if backward else _FWD_SMEM_BUDGET
        ch = max(1, min(nk, (budget - fixed) // per_ch))
        smem = fixed + ch * per_ch
        if smem <= smem_limit:
            return P, nt, ppt, lb, ch, smem
        if P == 1:
            return None
        P = max(1, P // 2)


def launch_plan_v2(*args):
    """v2 plan: (P, threads, PPT, launch bound, CH, smem bytes, ZP, ZR) or None.
    $SWCONV_CUDA_TALL=0 selects 4-row strips and ~1568 pixels per block for every plane size."""
    return _launch_plan_v2(os.environ.get("SWCONV_CUDA_TALL", "1") != "0", *args)


@functools.lru_cache(maxsize=4096)
def _launch_plan_v2(
    tall: bool,
    B: int,
    C: int,
    H: int,
    W: int,
    nk: int,
    nrep: int,
    ks: int,
    acc_bytes: int,
    backward: bool,
    smem_limit: int = 227 * 1024,
):
    r = ks // 2
    eh, ew = H + 2 * r, W + 2 * r
    zp = next((b for b in _ZP_BUCKETS if b >= ew), None)
    if zp is None:
        return None
    # tall planes: strips of 8 rows and ~3136 output pixels per block; short planes (H < 12): strips
    # of 4 rows (less padding of the ext rows) and ~1568 pixels per block
    big = H >= 12 and tall
    P = max(1, min(B, (2 * _TARGET_PIXELS if big else _TARGET_PIXELS) // (H * W), 64))
    while True:
        nt = ppt = 0
        for ppt in (8, 16) if big else (4, 8, 16):
            nt = max(64, 32 * math.ceil(P * W * math.ceil(H / ppt) / 32))
            if nt <= 512:
                break
        if nt <= 1024:
            lb = next(b for b in (256, 448, 512, 1024) if b >= nt)
            nhb, nzb = math.ceil(H / ppt), math.ceil(eh / ppt)
            zr = max(nzb * ppt, nhb * ppt + 2 * r)
            kk = ks * ks
            ints = 4 * (2 * nk * nrep + 2 * nk) + 16
            zpl = zr * zp
            fixed = acc_bytes * (nk * kk + P * (zr + 2 * r) * (zp + 2 * r) + (3 * P * zpl if backward else 0)) + ints
            per_ch = acc_bytes * (P * zpl + ((nt // 32) * kk if backward else 0))
            budget = _BWD_SMEM_BUDGET if backward else _FWD_SMEM_BUDGET
            ch = max(1, min(nk, (budget - fixed) // per_ch))
            smem = fixed + ch * per_ch
            if smem <= smem_limit:
                return P, nt, ppt, lb, ch, smem, zp, zr
        if P == 1:
            return None
        P = max(1, P // 2)


def _plan(version, *args):
    if version == "v2":
        return launch_plan_v2(*args)
    plan = launch_plan(*args)
    return None if plan is None else plan + (8, 0)


def _dev_index(t: torch.Tensor) -> int:
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def _ptr(t: torch.Tensor):
    return cupy.uint64(t.data_ptr())


def _launch(kind: str, x: torch.Tensor, weight: torch.Tensor, offh, offv, idc, active, extra_in, outs):
    B, C, H, W = x.shape
    nk, nrep = offh.shape[1], offh.shape[2]
    ks = weight.shape[-1]
    dev = x.device
    idx = _dev_index(x)
    acc_bytes = 8 if x.dtype == torch.float64 else 4
    optin = _smem_optin(idx)
    version = kernel_version()
    plan = _plan(version, B, C, H, W, nk, nrep, ks, acc_bytes, kind == "bwd", optin)
    if plan is None:
        raise RuntimeError(f"shift-wise CUDA kernel: a {H}x{W} plane does not fit in shared memory")
    P, nt, ppt, lb, ch, smem, zp, zr = plan
    fwd, bwd, _ = _functions(version, _DTYPE_CODE[x.dtype], ks, ppt, lb, zp, idx)
    fn = fwd if kind == "fwd" else bwd
    grid = (C, (B + P - 1) // P)
    ints = [cupy.int32(v) for v in (B, C, H, W, nk, nrep, P, ch)] + ([cupy.int32(zr)] if version == "v2" else [])
    args = (
        [_ptr(x)]
        + [_ptr(t) for t in extra_in]
        + [_ptr(weight), _ptr(offh), _ptr(offv), _ptr(idc), _ptr(active)]
        + [_ptr(t) for t in outs]
        + ints
    )
    with cupy.cuda.Device(idx), _stream(dev):
        fn(grid, (nt,), tuple(args), shared_mem=smem)
    return grid


def _plane_fits(x: torch.Tensor, nk: int, nrep: int, ks: int) -> bool:
    B, C, H, W = x.shape
    acc = 8 if x.dtype == torch.float64 else 4
    optin = _smem_optin(_dev_index(x))
    v = kernel_version()
    return (
        _plan(v, B, C, H, W, nk, nrep, ks, acc, False, optin) is not None
        and _plan(v, B, C, H, W, nk, nrep, ks, acc, True, optin) is not None
    )


# ----------------------------------------------------------------------------------------------
# custom ops + autograd
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("swconv::shift_wise_fwd", mutates_args=())
def _fwd_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    offh: torch.Tensor,
    offv: torch.Tensor,
    idc: torch.Tensor,
    active: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    outs = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(3)]
    if x.numel() == 0:
        return tuple(o.zero_() for o in outs)
    _launch("fwd", x, weight.contiguous(), offh, offv, idc, active, [], outs)
    return tuple(outs)


@_fwd_op.register_fake
def _fwd_fake(x, weight, offh, offv, idc, active):
    return tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) for _ in range(3))


@torch.library.custom_op("swconv::shift_wise_bwd", mutates_args=())
def _bwd_op(
    x: torch.Tensor,
    g_h: torch.Tensor,
    g_v: torch.Tensor,
    g_i: torch.Tensor,
    weight: torch.Tensor,
    offh: torch.Tensor,
    offv: torch.Tensor,
    idc: torch.Tensor,
    active: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    B, C, H, W = x.shape
    nk, ks = offh.shape[1], weight.shape[-1]
    gx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return gx.zero_(), torch.zeros_like(weight)
    acc = 8 if x.dtype == torch.float64 else 4
    optin = _smem_optin(_dev_index(x))
    plan = _plan(kernel_version(), B, C, H, W, nk, offh.shape[2], ks, acc, True, optin)
    if plan is None:
        raise RuntimeError(f"shift-wise CUDA kernel: a {H}x{W} plane does not fit in shared memory")
    gy = (B + plan[0] - 1) // plan[0]
    part = torch.zeros((gy, C, nk, ks * ks), dtype=weight.dtype, device=x.device)
    grads = [t.to(x.dtype).contiguous() for t in (g_h, g_v, g_i)]
    _launch("bwd", x, weight.contiguous(), offh, offv, idc, active, grads, [gx, part])
    gw = part.sum(0).reshape(weight.shape)  # fixed-order reduction over batch blocks
    return gx, gw


@_bwd_op.register_fake
def _bwd_fake(x, g_h, g_v, g_i, weight, offh, offv, idc, active):
    return (
        torch.empty(x.shape, dtype=x.dtype, device=x.device),
        torch.empty(weight.shape, dtype=weight.dtype, device=weight.device),
    )


def _setup_context(ctx, inputs, output):
    x, weight, offh, offv, idc, active = inputs
    ctx.save_for_backward(x, weight, offh, offv, idc, active)


def _backward(ctx, g_h, g_v, g_i):
    x, weight, offh, offv, idc, active = ctx.saved_tensors
    grads = [torch.zeros_like(x) if g is None else g for g in (g_h, g_v, g_i)]
    gx, gw = torch.ops.swconv.shift_wise_bwd(x, *grads, weight, offh, offv, idc, active)
    return (gx if ctx.needs_input_grad[0] else None, gw if ctx.needs_input_grad[1] else None, None, None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# public entry
# ----------------------------------------------------------------------------------------------
_warned_fallback = False


def _autocast_dtype(x: torch.Tensor) -> torch.dtype:
    try:
        enabled = torch.is_autocast_enabled("cuda")
    except TypeError:  # older torch
        enabled = torch.is_autocast_enabled()
    if enabled and x.dtype == torch.float32:
        try:
            return torch.get_autocast_dtype("cuda")
        except (AttributeError, TypeError):
            return torch.get_autocast_gpu_dtype()
    return x.dtype


def shift_wise_conv_cuda(
    x: torch.Tensor,
    weight: torch.Tensor,
    perm_h: torch.Tensor,
    perm_v: torch.Tensor,
    identity_pick: torch.Tensor,
    big_kernel: int,
    kernel_active: torch.Tensor | None = None,
):
    """SPEC §1.6 on CUDA tensors through the fused kernels; returns (out_h, out_v, out_i)."""
    if not x.is_cuda:
        raise RuntimeError(
            f"shift_wise_conv_cuda needs a CUDA tensor, got one on {x.device} (use impl='torch' for CPU tensors)"
        )
    if x.dim() != 4:
        raise ValueError(f"input must be (B, C, H, W), got shape {tuple(x.shape)}")
    n_rep, channels, nk = perm_h.shape
    ks = weight.shape[-1]
    if x.shape[1] != channels or weight.shape != (channels * nk, 1, ks, ks) or ks % 2 == 0:
        raise ValueError(
            f"shape mismatch: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
            f"tables (N_rep, C, nk) = {tuple(perm_h.shape)}"
        )
    dtype = _autocast_dtype(x)
    if dtype not in _DTYPE_CODE:
        raise TypeError(f"shift_wise_conv_cuda supports float32/float16/bfloat16/float64, got {dtype}")
    if not _plane_fits(x, nk, n_rep, ks):
        global _warned_fallback
        if not _warned_fallback:
            warnings.warn(
                f"shift-wise CUDA kernels: {x.shape[-2]}x{x.shape[-1]} planes exceed shared memory; "
                "using the PyTorch formulation",
                stacklevel=2,
            )
            _warned_fallback = True
        from .functional import shift_wise_conv

        return shift_wise_conv(x, weight, perm_h, perm_v, identity_pick, big_kernel, kernel_active, impl="torch")
    x = x.to(dtype)
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    w = weight.to(acc_dtype)
    offh, offv, idc = _tables(perm_h, perm_v, identity_pick, big_kernel, ks, x.device)
    if kernel_active is None:
        active = _all_active(channels * nk, x.device)
    else:
        active = kernel_active.reshape(-1).to(device=x.device, dtype=torch.uint8).contiguous()
    return torch.ops.swconv.shift_wise_fwd(x, w, offh, offv, idc, active)


def kernel_info(x_shape, dtype=torch.bfloat16, nk=17, nrep=4, ks=3, device_index=0) -> dict:
    """Launch plans and compiled resource usage (registers, local memory) for a shape."""
    B, C, H, W = x_shape
    acc = 8 if dtype == torch.float64 else 4
    version = kernel_version()
    info = {"version": version}
    for kind in ("fwd", "bwd"):
        plan = _plan(version, B, C, H, W, nk, nrep, ks, acc, kind == "bwd", _smem_optin(device_index))
        if plan is None:
            info[kind] = None
            continue
        P, nt, ppt, lb, ch, smem, zp, zr = plan
        fns = _functions(version, _DTYPE_CODE[dtype], ks, ppt, lb, zp, device_index)
        fn = fns[0] if kind == "fwd" else fns[1]
        info[kind] = {
            "P": P,
            "threads": nt,
            "PPT": ppt,
            "CH": ch,
            "smem": smem,
            "ZP": zp,
            "ZR": zr,
            "regs": fn.num_regs,
            "local_bytes": fn.local_size_bytes,
        }
    return info
