"""CuPy (NVRTC) path of the shift-wise operator: fused, deterministic, sparse-aware.

``shift_wise_conv_cuda(x, weight, perm_h, perm_v, identity_pick, big_kernel, kernel_active)``
returns ``(out_h, out_v, out_i)`` exactly as SPEC §1.6 (same contract as
``swconv.ops.functional.shift_wise_conv``). Kernels (``kernels/``), chosen by
``$SWCONV_CUDA_KERNEL`` (``auto`` by default):

- ``shift_wise_tc.cu``: tensor cores (``mma.sync``), bf16 / fp16 planes from 9x9 to 64x64;
- ``shift_wise_v2.cu``: CUDA cores, every dtype (fp32 / fp64 always land here);
- ``shift_wise.cu`` (v1): the first, simpler CUDA-core version, kept selectable.

They are compiled on first use by NVRTC through ``cupy.RawModule`` for the running GPU (cached per
process and by CuPy on disk), launched with ``cuLaunchKernel`` on PyTorch's current stream, and
read / write torch tensors in place (raw device pointers, no copies beyond making inputs
contiguous).

Eager autograd uses ``torch.autograd.Function`` subclasses (cheapest per call); under
``torch.compile`` the same kernels run as ``torch.library.custom_op`` ops with fake
implementations (``swconv::shift_wise_fwd`` / ``_bwd`` and ``swconv::shift_wise_tc_fwd`` /
``_bwd``), so the compiler treats them as opaque nodes. Forward and backward are deterministic:
no atomics anywhere; every reduction has a fixed order.

Storage dtypes: float32, float16, bfloat16 (fp32 accumulation) and float64 (fp64 accumulation,
for gradcheck). Under CUDA autocast a float32 input is cast to the autocast dtype first (as a
convolution would be). Design, index math and measurements: ``kernels/README.md``.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import struct
import threading
import warnings
import weakref
from pathlib import Path
from typing import NamedTuple

import cupy  # noqa: F401  (import failure = "CUDA path unavailable" for the dispatcher)
import torch
from cupy.cuda import driver as _driver
from torch.fx.experimental.symbolic_shapes import guard_scalar

__all__ = ["shift_wise_conv_cuda", "kernel_source_path", "build_tables", "launch_plan", "launch_plan_v2", "kernel_info"]

_KERNEL_FILES = {"v1": "shift_wise.cu", "v2": "shift_wise_v2.cu", "tc": "shift_wise_tc.cu"}
# "auto" (default): tensor-core kernels for bf16 / fp16 planes up to 64 x 64, v2 otherwise;
# "v2" (CUDA-core register strips, time proportional to the active kernels) or "v1" force those.
KERNEL_ENV = "SWCONV_CUDA_KERNEL"
_KERNEL_CHOICES = ("auto", "tc", "v2", "v1")
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


def kernel_choice() -> str:
    """$SWCONV_CUDA_KERNEL: auto (default), tc, v2 or v1."""
    v = os.environ.get(KERNEL_ENV, "auto") or "auto"
    if v not in _KERNEL_CHOICES:
        raise ValueError(f"${KERNEL_ENV} must be one of {list(_KERNEL_CHOICES)}, got {v!r}")
    return v


def kernel_version() -> str:
    """The CUDA-core kernel version used where the tensor-core path does not apply (v2 or v1)."""
    return "v1" if kernel_choice() == "v1" else "v2"


def _source(version: str) -> str:
    if version not in _source_cache:
        _source_cache[version] = (kernel_source_path() / _KERNEL_FILES[version]).read_text()
    return _source_cache[version]


_modules: dict[tuple, tuple] = {}
_device_attrs: dict[tuple[int, str], int] = {}


def _device_attribute(device_index: int, torch_name: str, cupy_name: str) -> int:
    """A device property from torch (CuPy's device attributes where torch lacks it), cached."""
    key = (device_index, torch_name)
    v = _device_attrs.get(key)
    if v is None:
        try:
            v = int(getattr(torch.cuda.get_device_properties(device_index), torch_name))
        except AttributeError:
            with cupy.cuda.Device(device_index):
                v = int(cupy.cuda.Device(device_index).attributes[cupy_name])
        _device_attrs[key] = v
    return v


def _smem_optin(device_index: int) -> int:
    """Largest dynamic shared memory a block may opt in to (minus a little for static smem)."""
    return _device_attribute(device_index, "shared_memory_per_block_optin", "MaxSharedMemoryPerBlockOptin") - 1024


def _smem_per_sm(device_index: int) -> int:
    """Shared memory of one SM, shared by its resident blocks."""
    return _device_attribute(device_index, "shared_memory_per_multiprocessor", "MaxSharedMemoryPerMultiprocessor")


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
            fns = (_Kernel(fwd), _Kernel(bwd))
        _modules[key] = fns
    return fns


class _Kernel:
    """A compiled kernel and its CUfunction handle (the handle is what ``_Launch`` launches)."""

    def __init__(self, raw):
        self.raw, self.ptr = raw, raw.kernel.ptr


class _Launch:
    """One kernel launch of a fixed shape with its argument block built once: a call writes the
    tensors' addresses (and any late ints) into the block and calls ``cuLaunchKernel`` on
    PyTorch's current stream. Building the ctypes block per call, or CuPy's generic launch path,
    cost tens of microseconds of Python: more than the kernels themselves at 7x7 planes.

    Arguments are ``n_ptr`` pointers followed by int32s: the fixed ``ints``, then ``n_late`` set
    per call."""

    def __init__(self, kernel: _Kernel, grid: tuple[int, int], threads: int, smem: int, n_ptr: int, ints, n_late=0):
        self.kernel, self.grid, self.threads, self.smem = kernel, grid, threads, smem
        self.n_ptr, self._n_late = n_ptr, n_late
        n_int = len(ints) + n_late
        fields = [(f"p{i}", ctypes.c_void_p) for i in range(n_ptr)] + [(f"i{i}", ctypes.c_int32) for i in range(n_int)]
        struct_type = type("KernelArgs", (ctypes.Structure,), {"_fields_": fields})
        self._block = struct_type()  # owns the memory the kernel parameters point into
        base = ctypes.addressof(self._block)
        # pointers first (offsets 0, 8, ...), then the fixed ints, then the late ones
        struct.pack_into(f"={len(ints)}i", self._block, 8 * n_ptr, *ints)
        self._pack_ptrs = struct.Struct(f"={n_ptr}Q").pack_into
        self._pack_late = struct.Struct(f"={n_late}i").pack_into
        self._late_at = 8 * n_ptr + 4 * len(ints)
        self._params = (ctypes.c_void_p * len(fields))(*[base + getattr(struct_type, n).offset for n, _ in fields])
        self._params_at = ctypes.addressof(self._params)
        # the block is shared state: two threads (say autograd's device thread and the main one)
        # must not interleave filling it and launching
        self._lock = threading.Lock()

    def __call__(self, device_index: int, tensors: tuple, late: tuple[int, ...] = ()) -> None:
        if len(tensors) != self.n_ptr or len(late) != self._n_late:
            raise ValueError(
                f"kernel launch: expected {self.n_ptr} tensors and {self._n_late} late ints, "
                f"got {len(tensors)} and {len(late)}"
            )
        if device_index != torch._C._cuda_getDevice():
            with torch.cuda.device(device_index):
                return self(device_index, tensors, late)
        stream = torch._C._cuda_getCurrentRawStream(device_index)
        gx, gy = self.grid
        with self._lock:
            self._pack_ptrs(self._block, 0, *[0 if t is None else t.data_ptr() for t in tensors])
            if late:
                self._pack_late(self._block, self._late_at, *late)
            try:
                self._launch(gx, gy, stream)
            except _driver.CUDADriverError as exc:
                # a thread that has made no CUDA runtime call yet (autograd's device thread, say) has
                # no current context for the driver API: bind the device's primary context, retry once
                if "INVALID_CONTEXT" not in str(exc):
                    raise
                cupy.cuda.runtime.setDevice(device_index)
                cupy.cuda.runtime.free(0)
                self._launch(gx, gy, stream)

    def _launch(self, gx: int, gy: int, stream: int) -> None:
        _driver.launchKernel(self.kernel.ptr, gx, gy, 1, self.threads, 1, 1, self.smem, stream, self._params_at, 0)


_MISSING = object()


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------


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


class _DeviceTables(NamedTuple):
    """Int32 device tables of one layer: the permutations as given (tc kernels) and the inverse
    offsets with the identity counts (v1 / v2 kernels and the tc cross-kernel gradient)."""

    perm_h: torch.Tensor
    perm_v: torch.Tensor
    identity_pick: torch.Tensor
    offh: torch.Tensor
    offv: torch.Tensor
    idc: torch.Tensor


def _device_tables(perm_h, perm_v, identity_pick, big_kernel, ks, device) -> _DeviceTables:
    on_device = [t.to(device=device, dtype=torch.int32).contiguous() for t in (perm_h, perm_v, identity_pick)]
    return _DeviceTables(*on_device, *build_tables(*on_device, big_kernel, ks))


_table_cache: dict[tuple, tuple[tuple, tuple, _DeviceTables]] = {}


def _table_stamp(perm_h, perm_v, identity_pick) -> tuple:
    """What identifies the contents of the table tensors: an in-place edit bumps the version, a
    ``.data`` swap moves the address (or the shape)."""
    return (
        perm_h._version, perm_h.data_ptr(), perm_h.shape,
        perm_v._version, perm_v.data_ptr(), perm_v.shape,
        identity_pick._version, identity_pick.data_ptr(), identity_pick.shape,
    )  # fmt: skip


def _tables(perm_h, perm_v, identity_pick, big_kernel, ks, device) -> _DeviceTables:
    """``_device_tables`` cached per table tensor objects and their contents (``_table_stamp``).
    The entry keeps weak references to the tensors: an id alone could be reused by new tables
    once the old ones are freed, and would hit stale tables."""
    key = (id(perm_h), id(perm_v), id(identity_pick), big_kernel, ks, device)
    hit = _table_cache.get(key)
    if hit is not None:
        refs, stamp, tables = hit
        if (
            refs[0]() is perm_h
            and refs[1]() is perm_v
            and refs[2]() is identity_pick
            and stamp == _table_stamp(perm_h, perm_v, identity_pick)
        ):
            return tables
    if len(_table_cache) > 64:
        _table_cache.clear()
    tensors = (perm_h, perm_v, identity_pick)
    tables = _device_tables(*tensors, big_kernel, ks, device)
    _table_cache[key] = (tuple(weakref.ref(t) for t in tensors), _table_stamp(*tensors), tables)
    return tables


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


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in dtype, contiguous (no op calls when it already is: each costs microseconds)."""
    if t.dtype != dtype:
        t = t.to(dtype)
    return t if t.is_contiguous() else t.contiguous()


def _dev_index(t: torch.Tensor) -> int:
    """The CUDA device index of ``t`` (a CUDA tensor always has one)."""
    return t.get_device()


# os.environ.get encodes the name on every call (0.7 us each on a desktop CPU, three per eager
# call); on POSIX os.environ keeps its bytes store in ``_data``, which setenv / monkeypatch update
_ENVIRON_STORE = (
    os.environ._data if os.name == "posix" and isinstance(getattr(os.environ, "_data", None), dict) else None
)


@functools.cache
def _env_name(name: str) -> bytes:
    return os.fsencode(name)


def _env(*names: str) -> tuple:
    """The values of environment variables ``names`` (None when unset; bytes on POSIX): cache keys."""
    if _ENVIRON_STORE is not None:
        return tuple([_ENVIRON_STORE.get(_env_name(n)) for n in names])
    return tuple([os.environ.get(n) for n in names])


_PLAN_ENV_VARS = ("SWCONV_CUDA_TALL", "SWCONV_CUDA_MINB")


def _plan_env() -> tuple:
    """The environment variables the v2 launch plans read (part of every launch-cache key)."""
    return _env(*_PLAN_ENV_VARS)


_v2_launch_cache: dict[tuple, tuple[_Launch, _Launch] | None] = {}


def _v2_launches(shape: tuple, dtype: torch.dtype, idx: int, nk: int, nrep: int, ks: int):
    """(forward, backward) launches of the v1 / v2 kernels for planes of ``shape`` on device
    ``idx``, or None when a plane does not fit in shared memory. Cached per shape and per kernel
    environment variables."""
    B, C, H, W = shape
    version = kernel_version()
    key = (version, dtype, B, C, H, W, nk, nrep, ks, idx, _plan_env())
    hit = _v2_launch_cache.get(key, _MISSING)
    if hit is not _MISSING:
        return hit
    acc = 8 if dtype == torch.float64 else 4
    plans = [_plan(version, B, C, H, W, nk, nrep, ks, acc, bwd, _smem_optin(idx)) for bwd in (False, True)]
    hit = None
    if None not in plans:
        launches = []
        # pointers: forward x, w, offh, offv, idc, active, 3 outputs; backward adds 3 grads, grad_x, partials
        for n_ptr, plan, which in ((9, plans[0], 0), (11, plans[1], 1)):
            P, nt, ppt, lb, ch, smem, zp, zr = plan
            fn = _functions(version, _DTYPE_CODE[dtype], ks, ppt, lb, zp, idx)[which]
            ints = (B, C, H, W, nk, nrep, P, ch) + ((zr,) if version == "v2" else ())
            launches.append(_Launch(fn, (C, (B + P - 1) // P), nt, smem, n_ptr, ints))
        hit = tuple(launches)
    if len(_v2_launch_cache) > 256:
        _v2_launch_cache.clear()
    _v2_launch_cache[key] = hit
    return hit


def _v2_launches_or_raise(x: torch.Tensor, nk: int, nrep: int, ks: int) -> tuple[_Launch, _Launch]:
    launches = _v2_launches(tuple(x.shape), x.dtype, _dev_index(x), nk, nrep, ks)
    if launches is None:
        raise RuntimeError(f"shift-wise CUDA kernel: a {x.shape[-2]}x{x.shape[-1]} plane does not fit in shared memory")
    return launches


# ----------------------------------------------------------------------------------------------
# custom ops + autograd
# ----------------------------------------------------------------------------------------------
def _v2_forward(x, weight, offh, offv, idc, active, launches=None):
    x = x.contiguous()
    outs = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(3)]
    if x.numel() == 0:
        return tuple(o.zero_() for o in outs)
    fwd, _ = launches or _v2_launches_or_raise(x, offh.shape[1], offh.shape[2], weight.shape[-1])
    fwd(_dev_index(x), (x, weight.contiguous(), offh, offv, idc, active, *outs))
    return tuple(outs)


@torch.library.custom_op("swconv::shift_wise_fwd", mutates_args=())
def _fwd_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    offh: torch.Tensor,
    offv: torch.Tensor,
    idc: torch.Tensor,
    active: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _v2_forward(x, weight, offh, offv, idc, active)


@_fwd_op.register_fake
def _fwd_fake(x, weight, offh, offv, idc, active):
    return tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) for _ in range(3))


def _v2_backward(x, g_h, g_v, g_i, weight, offh, offv, idc, active, launches=None):
    x = x.contiguous()
    C, nk, ks = x.shape[1], offh.shape[1], weight.shape[-1]
    gx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return gx.zero_(), torch.zeros_like(weight)
    _, bwd = launches or _v2_launches_or_raise(x, nk, offh.shape[2], ks)
    part = torch.empty((bwd.grid[1], C, nk, ks * ks), dtype=weight.dtype, device=x.device)  # inactive: 0 in-kernel
    grads = [_as(t, x.dtype) for t in (g_h, g_v, g_i)]
    bwd(_dev_index(x), (x, *grads, weight.contiguous(), offh, offv, idc, active, gx, part))
    gw = part.sum(0).reshape(weight.shape)  # fixed-order reduction over batch blocks
    return gx, gw


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
    return _v2_backward(x, g_h, g_v, g_i, weight, offh, offv, idc, active)


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
# tensor-core path (kernels/shift_wise_tc.cu): bf16 / fp16, planes up to 64 x 64
# ----------------------------------------------------------------------------------------------
_TC_DTYPES = {torch.float16: 1, torch.bfloat16: 2}
_TC_MAX_PLANE = 64
# "auto" leaves planes up to 6 x 6 to v2. At SW-T stage 4 (7 x 7, bf16, H200; op_bench run 11,
# "tc_d1.0") tc takes 0.083 / 0.200 ms forward / backward against v2's 0.129 / 0.286 since its
# tile loops have compile-time n-tile counts (before: 0.094 / 0.336, and v2 was kept). v2 gets
# cheaper with density: interpolating its graph times (0.238 ms at density 0.3, 0.409 at 1.0)
# against tc's 0.283 puts the break-even near density 0.5; the recipe trains at 0.7. Smaller
# planes were not measured.
_TC_MIN_PLANE = 6
_TC_THREADS = 256  # NWARP * 32 in the kernel
# swc_cross_grad: one block per channel, a thread per cross-kernel tap (3 k L = 432-459 at the
# SW-T stages) summing the batch blocks' partials; 256 threads took two rounds
_TC_CROSS_THREADS = 512
# Resident blocks per SM the forward / backward are compiled for (FWD_MINB 4 / BWD_MINB 2 in the
# kernel: register caps 64 / 128) and that their launch plans keep: the forward at 3 of its 4,
# the backward at 2. Measured on an H200 at the SW-T stages (bench/tc_plan_sweep.py): backward
# 0.91 / 0.51 / 0.30 ms at stages 1-3 against 1.09 / 0.62 / 0.35 with the former 128 lines per
# block and an 85-register cap (spills), forward 0.24 / 0.14 / 0.10 against 0.25 / 0.17 / 0.12.
_TC_BLOCKS_PER_SM = {False: 3, True: 2}
_TC_MAX_LINES = 256  # image lines per block; beyond that the forward gains nothing
_SMEM_RESERVED_PER_BLOCK = 1024  # shared memory the driver keeps per resident block (sm_80 on)
_tc_modules: dict[tuple, tuple] = {}


def _blocks_by_smem(smem: int, smem_per_sm: int) -> int:
    """Resident blocks per SM that ``smem`` bytes of shared memory per block allow."""
    return smem_per_sm // (smem + _SMEM_RESERVED_PER_BLOCK)


def _tc_functions(dtype_code: int, ks: int, device_index: int, defines: tuple[str, ...] = ()):
    """(swc_cross_grad, swc_tc_fwd, swc_tc_bwd) compiled for one dtype and k; ``defines``: extra
    ``-D`` options (benchmarks compare register caps with them)."""
    key = (dtype_code, ks, device_index, defines)
    fns = _tc_modules.get(key)
    if fns is None:
        opts = (f"-DDT={dtype_code}", f"-DKS={ks}", *defines, "-std=c++17")
        with cupy.cuda.Device(device_index):
            mod = cupy.RawModule(code=_source("tc"), options=opts, backend="nvrtc")
            raw = [mod.get_function(n) for n in ("swc_cross_grad", "swc_tc_fwd", "swc_tc_bwd")]
            optin = _smem_optin(device_index)
            for fn in raw[1:]:
                fn.max_dynamic_shared_size_bytes = optin
                fn.preferred_shared_memory_carveout = 100
            fns = tuple(_Kernel(fn) for fn in raw)
        _tc_modules[key] = fns
    return fns


def _pitch(n: int) -> int:
    return 16 * ((n + 15) // 16) + 8


def _r16(nbytes: int) -> int:
    return (nbytes + 15) & ~15


def tc_table_geo(taps: int, tap_offset: int) -> tuple[int, int]:
    """(dmin, nd) of the kernel's table_geo: the 16 x 8 Toeplitz blocks of a pass with ``taps``
    long-axis taps starting ``tap_offset`` left of the output are d in [dmin, dmin + nd), block d
    covering the taps 8d + tap_offset - 7 ... 8d + tap_offset + 15 (Python's // is floordiv8)."""
    dmin = -((15 + tap_offset) // 8)
    return dmin, (taps + 6 - tap_offset) // 8 - dmin + 1


def tc_backward_table_words(L: int, m: int, ks: int) -> int:
    """int32 words per channel of the backward's fragment tables (the flipped cross kernels'
    tH, tV, tI), which the forward's first block of each channel writes for the backward."""
    nd_long, nd_id = tc_table_geo(L, L - 1 - m)[1], tc_table_geo(ks, ks // 2)[1]
    return ks * (2 * nd_long + nd_id) * 32 * 2


def _backward_table_shape(C: int, nk: int, ks: int, big_kernel: int) -> tuple[int, int]:
    """Shape of the buffer swc_tc_fwd fills with the backward's fragment tables (int32)."""
    return C, tc_backward_table_words(nk * ks, big_kernel // 2, ks)


# the kernels' calls (plain ints) look the shape up per call; the fake implementation, which may
# see symbolic sizes (unhashable), computes it
_cached_backward_table_shape = functools.lru_cache(maxsize=256)(_backward_table_shape)


def tc_smem_bytes(backward: bool, P: int, H: int, W: int, L: int, m: int, ks: int) -> int:
    """Dynamic shared memory of swc_tc_fwd / swc_tc_bwd (mirrors the kernel's carve-up)."""
    r = ks // 2
    sph, spv = _pitch(W), _pitch(H)
    nd_long = tc_table_geo(L, L - 1 - m if backward else m)[1]
    nd_id = tc_table_geo(ks, r)[1]
    # zero line, the forward's cross kernels (fp32), fragment tables
    cross = 0 if backward else _r16(4 * (2 * ks * L + ks * ks))
    head = _r16(2 * max(sph, spv)) + cross + ks * (2 * nd_long + nd_id) * 256
    rows, cols = P * (H + 2 * r) * sph * 2, P * (W + 2 * r) * spv * 2
    if not backward:
        return head + rows + cols
    nwarp = _TC_THREADS // 32
    return head + nwarp * 128 * 4 + _r16(P * H * W * 4) + _r16(nwarp * 3 * ks * L * 4) + 3 * rows + 2 * cols


@functools.lru_cache(maxsize=4096)
def tc_launch_plan(
    B: int, H: int, W: int, L: int, m: int, ks: int, backward: bool, smem_limit: int, smem_per_sm: int
) -> tuple[int, int] | None:
    """(P images per block, shared memory bytes) of the tensor-core kernels, or None.

    P is the largest count up to _TC_MAX_LINES image lines per block that still lets the
    kernel's resident blocks per SM (_TC_BLOCKS_PER_SM) share the SM's shared memory: more
    images per block spread the per-block set-up (cross kernels, fragment tables, and in the
    backward the per-warp tap buffers) over more work, fewer resident blocks hide less latency.
    The batch is not evened out over the blocks: a block's warps take row tiles and gradient items
    in rounds, so at stage 3 P = 17 (seven full blocks and a short one) beat P = 16 (eight equal
    blocks) by 4-5 % in the backward."""
    if H > _TC_MAX_PLANE or W > _TC_MAX_PLANE or tc_smem_bytes(backward, 1, H, W, L, m, ks) > smem_limit:
        return None
    want = _TC_BLOCKS_PER_SM[backward]
    P = max(1, min(B, _TC_MAX_LINES // max(H, W)))
    while P > 1:
        smem = tc_smem_bytes(backward, P, H, W, L, m, ks)
        if smem <= smem_limit and _blocks_by_smem(smem, smem_per_sm) >= want:
            break
        P -= 1
    return P, tc_smem_bytes(backward, P, H, W, L, m, ks)


def _tc_plans(B: int, H: int, W: int, L: int, m: int, ks: int, device_index: int) -> tuple:
    """tc_launch_plan of the forward and of the backward on one device."""
    limits = _smem_optin(device_index), _smem_per_sm(device_index)
    return tuple(tc_launch_plan(B, H, W, L, m, ks, bwd, *limits) for bwd in (False, True))


def _tc_applies(dtype: torch.dtype, B: int, H: int, W: int, L: int, m: int, ks: int, device_index: int) -> bool:
    """Whether the tensor-core kernels run this call ($SWCONV_CUDA_KERNEL, dtype, plane size)."""
    choice = kernel_choice()
    if choice not in ("auto", "tc") or dtype not in _TC_DTYPES:
        return False
    if choice == "auto" and max(H, W) <= _TC_MIN_PLANE:
        return False
    return all(plan is not None for plan in _tc_plans(B, H, W, L, m, ks, device_index))


def _paired(W: int, *tensors: torch.Tensor) -> int:
    """1 when planes can be staged two elements at a time (even W, 4-byte aligned data)."""
    return int(W % 2 == 0 and all(t.data_ptr() % 4 == 0 for t in tensors))


def _tc_launch_records(fns: tuple, B: int, C: int, H: int, W: int, nk: int, nrep: int, ks: int, m: int, plans):
    """(forward, backward, cross-gradient) launches of the compiled kernels ``fns`` (as
    ``_tc_functions`` returns them) with the (P, shared memory) ``plans`` of forward and backward;
    the forward and backward take one more int at call time (whether the planes can be paired)."""
    cross_grad, fwd, bwd = fns
    (Pf, smem_f), (Pb, smem_b) = plans
    L, gy = nk * ks, (B + Pb - 1) // Pb
    return (
        # x, w, perm_h, perm_v, identity_pick, active, 3 outputs, backward tables (or None)
        _Launch(fwd, (C, (B + Pf - 1) // Pf), _TC_THREADS, smem_f, 10, (B, C, H, W, nk, nrep, m, Pf), n_late=1),
        # x, 3 grads, backward tables, grad_x, partials
        _Launch(bwd, (C, gy), _TC_THREADS, smem_b, 7, (B, C, H, W, nk, m, Pb), n_late=1),
        # partials, offh, offv, idc, active, grad_w
        _Launch(cross_grad, (C, 1), _TC_CROSS_THREADS, 3 * ks * L * 4, 6, (C, nk, nrep, m, gy)),
    )


@functools.lru_cache(maxsize=256)
def _tc_launches(dtype: torch.dtype, B: int, C: int, H: int, W: int, nk: int, nrep: int, ks: int, m: int, idx: int):
    """``_tc_launch_records`` of the shipped kernels and launch plans for one shape."""
    fns = _tc_functions(_TC_DTYPES[dtype], ks, idx)
    return _tc_launch_records(fns, B, C, H, W, nk, nrep, ks, m, _tc_plans(B, H, W, nk * ks, m, ks, idx))


def _tc_forward(x, weight, perm_h, perm_v, identity_pick, active, big_kernel: int, launches=None, for_backward=True):
    """Launches swc_tc_fwd; returns (out_h, out_v, out_i, backward tables). The tables
    (``tc_backward_table_words`` int32 per channel) are the backward's input; with
    ``for_backward=False`` they are not built and None is returned in their place. ``launches``:
    the shape's ``_tc_launches`` when the caller has them."""
    x = x.contiguous()
    B, C, H, W = x.shape
    n_rep, _, nk = perm_h.shape
    ks = weight.shape[-1]
    outs = [torch.empty_like(x) for _ in range(3)]  # x is contiguous: so are they
    btab = None
    if for_backward:
        btab = torch.empty(_cached_backward_table_shape(C, nk, ks, big_kernel), dtype=torch.int32, device=x.device)
    if x.numel() == 0:
        return (*(o.zero_() for o in outs), btab)
    idx = _dev_index(x)
    if launches is None:
        launches = _tc_launches(x.dtype, B, C, H, W, nk, n_rep, ks, big_kernel // 2, idx)
    launches[0](idx, (x, weight, perm_h, perm_v, identity_pick, active, *outs, btab), (_paired(W, x),))
    return (*outs, btab)


@torch.library.custom_op("swconv::shift_wise_tc_fwd", mutates_args=())
def _tc_fwd_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    perm_h: torch.Tensor,
    perm_v: torch.Tensor,
    identity_pick: torch.Tensor,
    offh: torch.Tensor,
    offv: torch.Tensor,
    idc: torch.Tensor,
    active: torch.Tensor,
    big_kernel: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # offh / offv / idc are the backward's tables: inputs here so the traced backward never has
    # to derive them from (fake) permutation tensors
    return _tc_forward(x, weight, perm_h, perm_v, identity_pick, active, big_kernel)


@_tc_fwd_op.register_fake
def _tc_fwd_fake(x, weight, perm_h, perm_v, identity_pick, offh, offv, idc, active, big_kernel):
    shape = _backward_table_shape(x.shape[1], perm_h.shape[-1], weight.shape[-1], big_kernel)
    btab = torch.empty(shape, dtype=torch.int32, device=x.device)
    return (*(torch.empty(x.shape, dtype=x.dtype, device=x.device) for _ in range(3)), btab)


def _tc_backward_launch(x, g_h, g_v, g_i, btab, ks: int, offh, offv, idc, active, big_kernel: int, launches=None):
    """Launches swc_tc_bwd + swc_cross_grad; returns (grad_x, grad of the summed small kernels).
    ``btab``: the backward tables the forward returned for these weights, tables and mask."""
    if btab is None:
        raise RuntimeError(
            "tensor-core backward without its tables: the forward ran with gradients off or with no "
            "input requiring grad, so it did not build them; rerun the forward with gradients enabled"
        )
    x = x.contiguous()
    B, C, H, W = x.shape
    _, nk, n_rep = offh.shape
    gx = torch.empty_like(x, memory_format=torch.contiguous_format)
    gw = torch.empty((C * nk, 1, ks, ks), dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        return gx.zero_(), gw.zero_()
    idx = _dev_index(x)
    if launches is None:
        launches = _tc_launches(x.dtype, B, C, H, W, nk, n_rep, ks, big_kernel // 2, idx)
    _, bwd, cross_grad = launches
    part = torch.empty((bwd.grid[1], C, 3, ks, nk * ks), dtype=torch.float32, device=x.device)
    grads = [_as(t, x.dtype) for t in (g_h, g_v, g_i)]
    bwd(idx, (x, *grads, btab, gx, part), (_paired(W, x, *grads),))
    # the cross-kernel gradients of the gy batch blocks are summed in block order inside
    cross_grad(idx, (part, offh, offv, idc, active, gw))
    return gx, gw


@torch.library.custom_op("swconv::shift_wise_tc_bwd", mutates_args=())
def _tc_bwd_op(
    x: torch.Tensor,
    g_h: torch.Tensor,
    g_v: torch.Tensor,
    g_i: torch.Tensor,
    btab: torch.Tensor,
    ks: int,
    offh: torch.Tensor,
    offv: torch.Tensor,
    idc: torch.Tensor,
    active: torch.Tensor,
    big_kernel: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _tc_backward_launch(x, g_h, g_v, g_i, btab, ks, offh, offv, idc, active, big_kernel)


@_tc_bwd_op.register_fake
def _tc_bwd_fake(x, g_h, g_v, g_i, btab, ks, offh, offv, idc, active, big_kernel):
    gw = torch.empty((offh.shape[0] * offh.shape[1], 1, ks, ks), dtype=torch.float32, device=x.device)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), gw


def _tc_setup_context(ctx, inputs, output):
    x, weight, _, _, _, offh, offv, idc, active, big_kernel = inputs
    ctx.big_kernel, ctx.ks = big_kernel, weight.shape[-1]
    ctx.save_for_backward(x, output[3], offh, offv, idc, active)


def _tc_backward(ctx, g_h, g_v, g_i, _g_tables):
    x, btab, *tables, active = ctx.saved_tensors
    grads = [torch.zeros_like(x) if g is None else g for g in (g_h, g_v, g_i)]
    gx, gw = torch.ops.swconv.shift_wise_tc_bwd(x, *grads, btab, ctx.ks, *tables, active, ctx.big_kernel)
    needs = ctx.needs_input_grad
    return (gx if needs[0] else None, gw if needs[1] else None) + (None,) * 8


_tc_fwd_op.register_autograd(_tc_backward, setup_context=_tc_setup_context)


class _KernelFunction(torch.autograd.Function):
    """Eager autograd of the kernels of one ``family`` ("tc" or "v2"). The custom ops above are
    what torch.compile sees; eager calls skip their Python dispatch (measured about 0.3 ms per
    call on the H100 host). ``launches`` are the caller's launch records, reused by the backward.
    The tables and the mask are buffers without gradient: kept on ctx, not saved (each saved
    tensor costs a pack and an unpack per call)."""

    @staticmethod
    def forward(ctx, x, weight, tables, active, big_kernel, family, launches, for_backward):
        ctx.tables, ctx.active, ctx.big_kernel, ctx.family, ctx.launches = tables, active, big_kernel, family, launches
        t = tables
        if family == "tc":
            # the backward reads the tables this forward builds from the weights, not the weights
            ctx.save_for_backward(x)
            ctx.ks = weight.shape[-1]
            *outs, ctx.btab = _tc_forward(
                x, weight, t.perm_h, t.perm_v, t.identity_pick, active, big_kernel, launches, for_backward
            )
            return tuple(outs)
        ctx.save_for_backward(x, weight)
        return _v2_forward(x, weight, t.offh, t.offv, t.idc, active, launches)

    @staticmethod
    def backward(ctx, g_h, g_v, g_i):
        # grads of unused outputs arrive as zeros (autograd materializes them by default)
        t, active = ctx.tables, ctx.active
        if ctx.family == "tc":
            (x,) = ctx.saved_tensors
            gx, gw = _tc_backward_launch(
                x, g_h, g_v, g_i, ctx.btab, ctx.ks, t.offh, t.offv, t.idc, active, ctx.big_kernel, ctx.launches
            )
        else:
            x, weight = ctx.saved_tensors
            gx, gw = _v2_backward(x, g_h, g_v, g_i, weight, t.offh, t.offv, t.idc, active, ctx.launches)
        needs = ctx.needs_input_grad
        return gx if needs[0] else None, gw if needs[1] else None, None, None, None, None, None, None


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


@torch.compiler.assume_constant_result
def _kernel_family(H: int, W: int, dtype: torch.dtype, nk: int, n_rep: int, ks: int, big_kernel: int, idx: int) -> str:
    """ "tc", "v2" (v1 / v2 kernels) or "torch" (planes too large) for planes of H x W: plans only,
    nothing compiled. Whether a plan exists does not depend on the batch or channel count (plans
    shrink to one plane per block), so neither is an argument. Under torch.compile it is
    evaluated once while tracing and treated as a constant: no environment reads or plan caches
    in the graph, and a dynamic batch size needs no guard."""
    if _tc_applies(dtype, 1, H, W, nk * ks, big_kernel // 2, ks, idx):
        return "tc"
    acc, optin, version = 8 if dtype == torch.float64 else 4, _smem_optin(idx), kernel_version()
    fits = all(_plan(version, 1, 1, H, W, nk, n_rep, ks, acc, bwd, optin) is not None for bwd in (False, True))
    return "v2" if fits else "torch"


_route_cache: dict[tuple, tuple] = {}


def _route(shape, dtype: torch.dtype, nk: int, n_rep: int, ks: int, big_kernel: int, idx: int) -> tuple:
    """(kernel family, its launch records or None) for one eager call's shape, dtype and the
    kernel environment variables, decided once per combination."""
    key = (shape, dtype, nk, n_rep, ks, big_kernel, idx, _env(KERNEL_ENV, *_PLAN_ENV_VARS))
    hit = _route_cache.get(key)
    if hit is None:
        B, C, H, W = shape
        family = _kernel_family(H, W, dtype, nk, n_rep, ks, big_kernel, idx)
        launches = None
        if family == "tc":
            launches = _tc_launches(dtype, B, C, H, W, nk, n_rep, ks, big_kernel // 2, idx)
        elif family == "v2":
            launches = _v2_launches(tuple(shape), dtype, idx, nk, n_rep, ks)
        if len(_route_cache) > 256:
            _route_cache.clear()
        hit = _route_cache[key] = (family, launches)
    return hit


_BYTE_MASK_DTYPES = (torch.bool, torch.uint8)


def _active_bytes(kernel_active: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """The mask as the kernels read it, one byte per small kernel (n) on ``device``: all ones when
    None; in eager, a contiguous bool / uint8 mask already on ``device`` is passed as it is."""
    if kernel_active is None:
        if torch.compiler.is_compiling():
            return torch.ones(n, dtype=torch.uint8, device=device)
        return _all_active(n, device)
    if (
        kernel_active.dtype in _BYTE_MASK_DTYPES
        and kernel_active.device == device
        and kernel_active.is_contiguous()
        and not torch.compiler.is_compiling()
    ):
        # the kernels read the mask's bytes (a bool is one byte, 0 or 1) through its address: no
        # conversion, not even a view (eager only: inductor cannot lower a bool bitcast)
        return kernel_active
    return kernel_active.reshape(-1).to(device=device, dtype=torch.uint8).contiguous()


def _fallback(x, weight, perm_h, perm_v, identity_pick, big_kernel, kernel_active):
    global _warned_fallback
    if not _warned_fallback:
        warnings.warn(
            f"shift-wise CUDA kernels: {x.shape[-2]}x{x.shape[-1]} planes exceed shared memory; "
            "using the PyTorch formulation",
            stacklevel=3,
        )
        _warned_fallback = True
    from .functional import shift_wise_conv

    return shift_wise_conv(x, weight, perm_h, perm_v, identity_pick, big_kernel, kernel_active, impl="torch")


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
    # plain tuples: a torch.Size comparison goes through symbolic-shape helpers
    if x.shape[1] != channels or tuple(weight.shape) != (channels * nk, 1, ks, ks) or ks % 2 == 0:
        raise ValueError(
            f"shape mismatch: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
            f"tables (N_rep, C, nk) = {tuple(perm_h.shape)}"
        )
    if kernel_active is not None and kernel_active.numel() != channels * nk:
        raise ValueError(
            f"kernel_active has {kernel_active.numel()} entries; it needs one per small kernel "
            f"(C * nk = {channels} * {nk} = {channels * nk})"
        )
    dtype = _autocast_dtype(x)
    if dtype not in _DTYPE_CODE:
        raise TypeError(f"shift_wise_conv_cuda supports float32/float16/bfloat16/float64, got {dtype}")
    idx = _dev_index(x)
    w_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if torch.compiler.is_compiling():
        # kernels and plans are chosen per shape: a retrace that made a size dynamic (one compiled
        # block called at several stages) specializes the sizes they depend on again, with guards
        H, W, nk, n_rep, ks, big_kernel = (
            guard_scalar(v) for v in (x.shape[-2], x.shape[-1], nk, n_rep, ks, big_kernel)
        )
        route = _kernel_family(H, W, dtype, nk, n_rep, ks, big_kernel, idx)
        if route == "torch":
            return _fallback(x, weight, perm_h, perm_v, identity_pick, big_kernel, kernel_active)
        # tables built in the graph: the eager cache keys on tensor identity, which tracing cannot read
        tables = _device_tables(perm_h, perm_v, identity_pick, big_kernel, ks, x.device)
        x, w = x.to(dtype), weight.to(w_dtype)
        active = _active_bytes(kernel_active, channels * nk, x.device)
        if route == "tc":
            return torch.ops.swconv.shift_wise_tc_fwd(x, w, *tables, active, big_kernel)[:3]
        return torch.ops.swconv.shift_wise_fwd(x, w, *tables[3:], active)
    route, launches = _route(x.shape, dtype, nk, n_rep, ks, big_kernel, idx)
    if route == "torch":
        return _fallback(x, weight, perm_h, perm_v, identity_pick, big_kernel, kernel_active)
    if x.dtype != dtype:
        x = x.to(dtype)
    w = _as(weight, w_dtype)
    active = _active_bytes(kernel_active, channels * nk, x.device)
    tables = _tables(perm_h, perm_v, identity_pick, big_kernel, ks, x.device)
    for_backward = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    return _KernelFunction.apply(x, w, tables, active, big_kernel, route, launches, for_backward)


def kernel_info(x_shape, dtype=torch.bfloat16, nk=17, nrep=4, ks=3, device_index=0, big_kernel=None) -> dict:
    """Launch plans and compiled resource usage (registers, local memory) for a shape."""
    B, C, H, W = x_shape
    big_kernel = nk * ks if big_kernel is None else big_kernel
    L, m = nk * ks, big_kernel // 2
    if _tc_applies(dtype, B, H, W, L, m, ks, device_index):
        plans = _tc_plans(B, H, W, L, m, ks, device_index)
        fns = _tc_functions(_TC_DTYPES[dtype], ks, device_index)
        info = {"version": "tc"}
        for kind, (P, smem), fn in zip(("fwd", "bwd"), plans, fns[1:]):
            info[kind] = {"P": P, "threads": _TC_THREADS, "smem": smem, "regs": fn.raw.num_regs}
            info[kind]["local_bytes"] = fn.raw.local_size_bytes
        return info
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
            "regs": fn.raw.num_regs,
            "local_bytes": fn.raw.local_size_bytes,
        }
    return info
