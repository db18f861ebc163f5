"""Tests of the CuPy shift-wise kernels (swconv.ops.cuda): the kernels against float64 references
(GPU), their launch planner (CPU).

Two references: an independent dense cross-kernel construction of SPEC §1.6 written here, and the
project's PyTorch oracle ``swconv.ops.functional.shift_wise_conv(..., impl="torch")``.
Run on an H100/H200 whenever kernels/*.cu changes: ``pytest -m gpu tests/test_cuda_op.py``.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from swconv.ops.tables import make_shift_tables

HAS_CUDA = torch.cuda.is_available()
try:
    import cupy  # noqa: F401

    HAS_CUPY = True
except Exception:  # noqa: BLE001
    HAS_CUPY = False


# relative L2 error bounds ||out - ref|| / ||ref|| (ref in float64 from the same rounded inputs)
TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.5e-2, torch.float64: 1e-12}
GRAD_TOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2.5e-2, torch.float64: 1e-12}


def reference(x, weight, perm_h, perm_v, identity_pick, big_kernel, active=None):
    """Float64 dense cross-kernel construction of SPEC §1.6 (differentiable)."""
    x = x.double()
    w = weight.double()
    if active is not None:
        w = w * active.double().view(-1, 1, 1, 1)
    n_rep, C, nk = perm_h.shape
    k = w.shape[-1]
    r, m = k // 2, big_kernel // 2
    w = w.view(C, nk, k, k)
    ci = torch.arange(C, device=w.device).view(1, C, 1)
    th = w[ci, perm_h.to(w.device)].sum(0)  # (C, nk, k, k): tile s of the horizontal bar
    tv = w[ci, perm_v.to(w.device)].sum(0)
    wh = th.permute(0, 2, 1, 3).reshape(C, 1, k, nk * k)
    wv = tv.reshape(C, 1, nk * k, k)
    wi = w[torch.arange(C, device=w.device).view(1, C), identity_pick.to(w.device)].sum(0).view(C, 1, k, k)
    right = nk * k - 1 - m
    out_h = F.conv2d(F.pad(x, (m, right, r, r)), wh, groups=C)
    out_v = F.conv2d(F.pad(x, (r, r, m, right)), wv, groups=C)
    out_i = F.conv2d(x, wi, padding=r, groups=C)
    return out_h, out_v, out_i


def rel(a, b):
    a, b = a.double(), b.double()
    nb = b.norm().item()
    if nb == 0:
        return a.abs().max().item()
    return (a - b).norm().item() / nb


def random_config(rng: random.Random, i: int):
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    k = rng.choice([3, 3, 3, 5, 1]) if i % 7 else 3
    big = rng.choice([k, k + 2, 13, 13, 31, 47, 49, 51, rng.randrange(k, 80)])
    big = max(big, k)
    return dict(
        B=rng.choice([1, 1, 2, 3, 5]),
        C=rng.choice([1, 2, 3, 5, 7, 9, 12]),
        H=rng.choice([1, 2, 3, 5, 7, 14, 17, 28, 33, rng.randrange(1, 65)]),
        W=rng.choice([1, 2, 3, 5, 7, 14, 19, 28, 41, rng.randrange(1, 65)]),
        k=k,
        K=big,
        n_rep=rng.randrange(1, 5),
        n_path=rng.randrange(1, 3),
        density=rng.choice([0.0, 0.3, 0.5, 0.7, 1.0, 1.0]),
        dtype=dtypes[i % 3],
        layout=rng.choice(["contiguous", "channels_last", "strided"]),
    )


def make_inputs(cfg, seed, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    nk = math.ceil(cfg["K"] / cfg["k"])
    C, k = cfg["C"], cfg["k"]
    perm_h, perm_v, ident = make_shift_tables(C, nk, cfg["n_rep"], seed=seed)
    # weight = sum over paths of masked path weights (SPEC §1.6)
    paths = [torch.randn(C * nk, 1, k, k, generator=g) for _ in range(cfg["n_path"])]
    active = torch.rand(C * nk, generator=g) < cfg["density"]
    weight = sum(p * active.view(-1, 1, 1, 1) for p in paths)
    x = torch.randn(cfg["B"], C, cfg["H"], cfg["W"], generator=g)
    x = x.to(device=device, dtype=cfg["dtype"])
    if cfg["layout"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif cfg["layout"] == "strided":
        big = torch.randn(cfg["B"], C, cfg["H"], 2 * cfg["W"], generator=g).to(device=device, dtype=cfg["dtype"])
        big[..., ::2] = x
        x = big[..., ::2]
    return x, weight.to(device), perm_h.to(device), perm_v.to(device), ident.to(device), active.to(device)


CONFIGS = [random_config(random.Random(1234 + i), i) for i in range(216)]


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("i", range(len(CONFIGS)))
def test_random_config_vs_reference(i):
    check_against_reference(CONFIGS[i], 1000 + i)


def check_against_reference(cfg: dict, seed: int) -> None:
    """Outputs and both gradients of the CUDA op against the float64 reference."""
    from swconv.ops.cuda import shift_wise_conv_cuda

    x, weight, ph, pv, ident, active = make_inputs(cfg, seed)
    dt = cfg["dtype"]
    xr = x.detach().clone().requires_grad_(True)
    wr = weight.detach().clone().requires_grad_(True)
    outs = shift_wise_conv_cuda(xr, wr, ph, pv, ident, cfg["K"], active)
    for o in outs:
        assert o.dtype == dt and o.shape == x.shape
    x64 = x.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    refs = reference(x64, w64, ph, pv, ident, cfg["K"], active)
    for name, o, rf in zip("hvi", outs, refs):
        assert torch.isfinite(o.float()).all()
        e = rel(o, rf)
        assert e <= TOL[dt], f"out_{name} rel err {e:.3e} > {TOL[dt]:.1e} for {cfg}"
    grads = [torch.randn(x.shape, device="cuda").to(dt) for _ in range(3)]
    gx, gw = torch.autograd.grad(outs, (xr, wr), grads)
    rgx, rgw = torch.autograd.grad(refs, (x64, w64), [g.double() for g in grads])
    assert gx.dtype == dt and gw.dtype == weight.dtype
    e = rel(gx, rgx)
    assert e <= GRAD_TOL[dt], f"grad_x rel err {e:.3e} for {cfg}"
    e = rel(gw, rgw)
    assert e <= GRAD_TOL[dt], f"grad_w rel err {e:.3e} for {cfg}"
    inactive = ~active
    assert (gw[inactive] == 0).all(), "inactive kernels must get exactly zero gradient"


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("i", range(0, 216, 5))
def test_v1_kernels_random_subset(i, monkeypatch):
    """The v1 (per-pixel gather) kernels stay selectable: SWCONV_CUDA_KERNEL=v1."""
    monkeypatch.setenv("SWCONV_CUDA_KERNEL", "v1")
    test_random_config_vs_reference(i)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("i", [i for i in range(216) if i % 3 and i % 2])
def test_v2_kernels_half_precision(i, monkeypatch):
    """bf16 / fp16 run on the tensor-core kernels by default; the CUDA-core v2 kernels (time
    proportional to the active kernels) stay selectable for them: SWCONV_CUDA_KERNEL=v2."""
    monkeypatch.setenv("SWCONV_CUDA_KERNEL", "v2")
    test_random_config_vs_reference(i)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("i", [i for i in range(216) if i % 3 and max(CONFIGS[i]["H"], CONFIGS[i]["W"]) <= 8][:40])
def test_tc_kernels_small_planes(i, monkeypatch):
    """Planes up to 8 x 8 forced onto the tensor-core kernels (auto gives those up to 6 x 6 to v2)."""
    monkeypatch.setenv("SWCONV_CUDA_KERNEL", "tc")
    test_random_config_vs_reference(i)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("H,K", [(14, 47), (28, 49)])
def test_tc_many_images_per_block(dt, H, K, monkeypatch):
    """SW-T stage 3 / 2 planes with a batch that fills several multi-image blocks, the last one short."""
    from swconv.ops.cuda import kernel_info

    monkeypatch.delenv("SWCONV_CUDA_KERNEL", raising=False)
    B = 37
    info = kernel_info((B, 3, H, H), dt, math.ceil(K / 3), 4, 3, torch.cuda.current_device(), K)
    assert info["version"] == "tc"
    for kind in ("fwd", "bwd"):
        P = info[kind]["P"]
        assert 1 < P < B and B % P, f"{kind} plan P={P} does not exercise a short last block"
    cfg = dict(B=B, C=3, H=H, W=H, k=3, K=K, n_rep=4, n_path=2, density=0.7, dtype=dt, layout="contiguous")
    check_against_reference(cfg, 7000 + H)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16, torch.float32])
def test_kernel_selection(dt, monkeypatch):
    from swconv.ops.cuda import kernel_info

    monkeypatch.delenv("SWCONV_CUDA_KERNEL", raising=False)
    info = kernel_info((8, 60, 56, 56), dt, 17, 4, 3, torch.cuda.current_device(), 51)
    assert info["version"] == ("v2" if dt == torch.float32 else "tc")
    if info["version"] == "tc":
        assert info["fwd"]["local_bytes"] == 0, "tensor-core forward kernel spills registers"
        assert info["bwd"]["local_bytes"] == 0, "tensor-core backward kernel spills registers"
    assert kernel_info((8, 60, 80, 80), dt, 17, 4, 3, torch.cuda.current_device(), 51)["version"] == "v2"
    stage4 = kernel_info((128, 492, 7, 7), dt, 5, 4, 3, torch.cuda.current_device(), 13)["version"]
    assert stage4 == ("v2" if dt == torch.float32 else "tc")
    assert kernel_info((128, 492, 6, 6), dt, 5, 4, 3, torch.cuda.current_device(), 13)["version"] == "v2"
    monkeypatch.setenv("SWCONV_CUDA_KERNEL", "tc")
    small = kernel_info((128, 492, 6, 6), dt, 5, 4, 3, torch.cuda.current_device(), 13)["version"]
    assert small == ("v2" if dt == torch.float32 else "tc")
    monkeypatch.setenv("SWCONV_CUDA_KERNEL", "v2")
    assert kernel_info((8, 60, 56, 56), dt, 17, 4, 3, torch.cuda.current_device(), 51)["version"] == "v2"


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("i", range(0, 216, 9))
def test_vs_torch_oracle(i):
    from swconv.ops.functional import shift_wise_conv

    cfg = dict(CONFIGS[i], dtype=torch.float32)
    x, weight, ph, pv, ident, active = make_inputs(cfg, 5000 + i)
    a = shift_wise_conv(x, weight, ph, pv, ident, cfg["K"], active, impl="cuda")
    b = shift_wise_conv(x.double(), weight.double(), ph, pv, ident, cfg["K"], active, impl="torch")
    for o, rf in zip(a, b):
        assert rel(o, rf) <= TOL[torch.float32]


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16, torch.float16])
def test_bit_identical_on_repeat(dt):
    from swconv.ops.cuda import shift_wise_conv_cuda

    cfg = dict(B=4, C=7, H=28, W=28, k=3, K=49, n_rep=4, n_path=2, density=0.7, dtype=dt, layout="contiguous")
    x, weight, ph, pv, ident, active = make_inputs(cfg, 77)
    runs = []
    for _ in range(3):
        xr = x.clone().requires_grad_(True)
        wr = weight.clone().requires_grad_(True)
        outs = shift_wise_conv_cuda(xr, wr, ph, pv, ident, cfg["K"], active)
        g = torch.autograd.grad(outs, (xr, wr), [torch.ones_like(o) * 0.5 + o.detach() * 0.1 for o in outs])
        runs.append([t.clone() for t in (*outs, *g)])
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("cfgi", range(4))
def test_gradcheck_float64(cfgi):
    from swconv.ops.cuda import shift_wise_conv_cuda

    cfg = [
        dict(B=2, C=3, H=5, W=6, k=3, K=7, n_rep=2),
        dict(B=1, C=2, H=4, W=3, k=3, K=13, n_rep=3),  # K > H, W
        dict(B=2, C=1, H=2, W=7, k=5, K=11, n_rep=1),  # H < k
        dict(B=1, C=2, H=6, W=5, k=1, K=4, n_rep=4),
    ][cfgi]
    cfg.update(n_path=1, density=0.6, dtype=torch.float64, layout="contiguous")
    x, weight, ph, pv, ident, active = make_inputs(cfg, 99 + cfgi)
    x.requires_grad_(True)
    weight = weight.double().requires_grad_(True)

    def f(xx, ww):
        return shift_wise_conv_cuda(xx, ww, ph, pv, ident, cfg["K"], active)

    assert torch.autograd.gradcheck(f, (x, weight), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
def test_autocast_bf16_and_poisoned_outputs():
    from swconv.ops.cuda import shift_wise_conv_cuda

    cfg = dict(
        B=2, C=5, H=14, W=14, k=3, K=47, n_rep=4, n_path=2, density=1.0, dtype=torch.float32, layout="contiguous"
    )
    x, weight, ph, pv, ident, active = make_inputs(cfg, 3)
    wr = weight.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outs = shift_wise_conv_cuda(x, wr, ph, pv, ident, cfg["K"], None)
    assert all(o.dtype == torch.bfloat16 for o in outs)
    refs = reference(x.to(torch.bfloat16), weight, ph, pv, ident, cfg["K"])
    for o, rf in zip(outs, refs):
        assert rel(o, rf) <= TOL[torch.bfloat16]
    sum(o.float().sum() for o in outs).backward()
    assert wr.grad is not None and wr.grad.dtype == torch.float32 and torch.isfinite(wr.grad).all()
    # every output element is written: poison the caching allocator's memory and recompute
    torch.cuda.empty_cache()
    junk = torch.full((1 << 22,), float("nan"), device="cuda")
    del junk
    outs2 = shift_wise_conv_cuda(x, weight, ph, pv, ident, cfg["K"], None)
    for o in outs2:
        assert torch.isfinite(o).all()


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_torch_compile_traces_around_op(dt):
    """torch.compile(fullgraph=True) traces the op without a graph break (v2 kernels for fp32,
    tensor-core kernels for bf16) and gets the eager results and gradients."""
    from swconv.ops.cuda import shift_wise_conv_cuda

    cfg = dict(B=2, C=3, H=9, W=9, k=3, K=13, n_rep=2, n_path=1, density=0.7, dtype=dt, layout="contiguous")
    x, weight, ph, pv, ident, active = make_inputs(cfg, 4)

    def f(xx, ww):
        h, v, i = shift_wise_conv_cuda(xx, ww, ph, pv, ident, cfg["K"], active)
        return (torch.relu(h.float()) + v.float() * 2 + i.float()).sum()

    results = []
    for fn in (f, torch.compile(f, fullgraph=True)):
        xr, wr = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        loss = fn(xr, wr)
        loss.backward()
        results.append((loss.detach(), xr.grad, wr.grad))
    for a, b in zip(*results):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-5)


def _assert_compiled_matches(fn, compiled, x, weight, *args, what: str) -> None:
    """Loss, grad_x and grad_w of ``compiled`` against eager ``fn`` on the same inputs."""
    results = []
    for f in (fn, compiled):
        xr, wr = x.detach().clone().requires_grad_(True), weight.detach().clone().requires_grad_(True)
        loss = f(xr, wr, *args)
        loss.backward()
        results.append((loss.detach().clone(), xr.grad, wr.grad))
    for a, b in zip(*results):
        # relative to the largest entry: the loss squares sums of ~1e3, so single entries cancel
        err = (a.float() - b.float()).abs().max().item() / a.float().abs().max().item()
        assert err <= 1e-5, f"{what}: compiled differs from eager by {err:.2e} (max-relative)"


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_torch_compile_new_batch_size(dt):
    """A second batch size (an epoch's short last batch) makes torch.compile retrace with a dynamic
    batch dimension; the op must trace again and match eager."""
    from swconv.ops.cuda import shift_wise_conv_cuda

    torch._dynamo.reset()
    cfg = dict(B=5, C=3, H=10, W=9, k=3, K=13, n_rep=2, n_path=1, density=0.7, dtype=dt, layout="contiguous")
    x, weight, ph, pv, ident, active = make_inputs(cfg, 6)

    def f(xx, ww):
        h, v, i = shift_wise_conv_cuda(xx, ww, ph, pv, ident, cfg["K"], active)
        return (h.float() * 3 + v.float() - i.float()).square().sum()

    compiled = torch.compile(f, fullgraph=True)
    for batch in (5, 3, 2):
        _assert_compiled_matches(f, compiled, x[:batch], weight, what=f"batch {batch}")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_torch_compile_new_plane_size(dt):
    """One compiled function called at several shapes (a block compiled once and used at every
    stage: plane size, channels and kernel sizes change) retraces with dynamic sizes; the op must
    specialize them again, pick each shape's kernels (tensor cores, CUDA cores, the PyTorch
    fallback) and match eager."""
    from swconv.ops.cuda import shift_wise_conv_cuda

    torch._dynamo.reset()

    def f(xx, ww, ph, pv, ident, active, big_kernel):
        h, v, i = shift_wise_conv_cuda(xx, ww, ph, pv, ident, big_kernel, active)
        return (h.float() * 3 + v.float() - i.float()).square().sum()

    compiled = torch.compile(f, fullgraph=True)
    shapes = ((10, 9, 3, 13), (14, 14, 3, 13), (5, 6, 4, 17), (28, 17, 5, 13), (80, 72, 2, 31))
    for seed, (H, W, C, K) in enumerate(shapes):
        cfg = dict(B=3, C=C, H=H, W=W, k=3, K=K, n_rep=2, n_path=1, density=0.7, dtype=dt, layout="contiguous")
        x, weight, ph, pv, ident, active = make_inputs(cfg, 20 + seed)
        _assert_compiled_matches(f, compiled, x, weight, ph, pv, ident, active, K, what=f"{H}x{W}, C {C}, K {K}")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
def test_torch_compile_reduce_overhead():
    """mode="reduce-overhead" (CUDA graphs, which take the host off the critical path at small
    planes) captures the op's launches; replays match eager, forward and backward."""
    from swconv.ops.cuda import shift_wise_conv_cuda

    torch._dynamo.reset()
    cfg = dict(B=4, C=5, H=14, W=14, k=3, K=13, n_rep=4, n_path=1, density=0.3, dtype=torch.bfloat16)
    x, weight, ph, pv, ident, active = make_inputs({**cfg, "layout": "contiguous"}, 9)

    def f(xx, ww):
        h, v, i = shift_wise_conv_cuda(xx, ww, ph, pv, ident, cfg["K"], active)
        return (h.float() * 3 + v.float() - i.float()).square().sum()

    from torch._dynamo.utils import counters

    counters.clear()
    compiled = torch.compile(f, mode="reduce-overhead", fullgraph=True)
    for step in range(4):  # warm-up, recording, then replays
        _assert_compiled_matches(f, compiled, x + 0.01 * step, weight, what=f"reduce-overhead, step {step}")
    # inductor falls back to plain launches, silently, for graphs it cannot capture
    assert not counters["inductor"]["cudagraph_skips"], "reduce-overhead did not capture the op in a CUDA graph"


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("amp", [False, True])
def test_torch_compile_whole_layer_fullgraph(amp):
    """A whole SW layer (mask, path sum, dispatch, op, branch BNs) compiles without a graph break,
    in fp32 (v2 kernels) and under bf16 autocast (tensor-core kernels), and matches eager."""
    import copy

    from swconv.ops.layer import ShiftWiseConv2d

    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = ShiftWiseConv2d(channels=13, big_kernel=13, n_path=2, n_rep=2).cuda()
    with torch.no_grad():
        layer.kernel_mask[0, ::3] = 0
    x = torch.randn(4, 13, 12, 11, device="cuda")
    results = []
    for module in (layer, torch.compile(copy.deepcopy(layer), fullgraph=True)):
        xr = x.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            y = module(xr)
        y.float().square().mean().backward()
        grads = [p.grad for p in module.parameters()]
        results.append((y.detach().float(), xr.grad, *grads))
    tol = 2e-2 if amp else 1e-4
    for a, b in zip(*results):
        assert torch.allclose(a.float(), b.float(), rtol=tol, atol=tol * a.float().abs().max().item())


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_launch_from_fresh_thread(dt):
    """A thread that has made no CUDA runtime call has no current driver context (autograd's
    device thread can be one); the raw launches must bind it and give the same result."""
    import threading

    from swconv.ops.cuda import shift_wise_conv_cuda

    cfg = dict(B=2, C=5, H=17, W=12, k=3, K=13, n_rep=2, n_path=1, density=0.7, dtype=dt, layout="contiguous")
    x, weight, ph, pv, ident, active = make_inputs(cfg, 11)
    expected = shift_wise_conv_cuda(x, weight, ph, pv, ident, cfg["K"], active)
    result = {}

    def work():
        try:
            result["out"] = shift_wise_conv_cuda(x, weight, ph, pv, ident, cfg["K"], active)
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001  (re-raised in the test thread)
            result["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    for a, b in zip(expected, result["out"]):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
def test_backward_through_one_output(dt):
    """A loss on one branch only: autograd hands the op zero grads for the other two (v2 kernels for
    fp32, tensor-core kernels for bf16), and the gradients match the reference."""
    from swconv.ops.cuda import shift_wise_conv_cuda

    cfg = dict(B=2, C=5, H=16, W=13, k=3, K=13, n_rep=2, n_path=1, density=0.7, dtype=dt, layout="contiguous")
    x, weight, ph, pv, ident, active = make_inputs(cfg, 7)
    xr, wr = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    out_v = shift_wise_conv_cuda(xr, wr, ph, pv, ident, cfg["K"], active)[1]
    gx, gw = torch.autograd.grad(out_v.float().sum(), (xr, wr))
    x64, w64 = x.double().requires_grad_(True), weight.double().requires_grad_(True)
    rgx, rgw = torch.autograd.grad(reference(x64, w64, ph, pv, ident, cfg["K"], active)[1].sum(), (x64, w64))
    assert rel(gx, rgx) <= GRAD_TOL[dt] and rel(gw, rgw) <= GRAD_TOL[dt]


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
def test_mask_of_wrong_size_raises():
    """A mask must have one entry per small kernel: the kernels would read past a shorter one."""
    from swconv.ops.cuda import shift_wise_conv_cuda

    cfg = dict(B=1, C=3, H=9, W=9, k=3, K=13, n_rep=2, n_path=1, density=0.7, dtype=torch.float32, layout="contiguous")
    x, weight, ph, pv, ident, active = make_inputs(cfg, 5)
    with pytest.raises(ValueError, match="one per small kernel"):
        shift_wise_conv_cuda(x, weight, ph, pv, ident, cfg["K"], active[:-1])


def test_cuda_on_cpu_tensor_raises():
    if not HAS_CUPY:
        pytest.skip("cupy not importable")
    from swconv.ops.cuda import shift_wise_conv_cuda

    perm_h, perm_v, ident = make_shift_tables(2, 5, 1)
    x = torch.randn(1, 2, 8, 8)
    w = torch.randn(10, 1, 3, 3)
    with pytest.raises(RuntimeError, match="CUDA"):
        shift_wise_conv_cuda(x, w, perm_h, perm_v, ident, 13)


def test_table_cache_not_fooled_by_reused_address():
    """New table tensors at the address (and id) of freed ones, same shape and version, must not
    hit the freed ones' cached tables."""
    if not HAS_CUPY:
        pytest.skip("cupy not importable")
    import gc

    from swconv.ops.cuda import _tables, build_tables

    perm_h, perm_v, ident = make_shift_tables(3, 5, 2)
    buf = perm_h.numpy().copy()
    old = torch.from_numpy(buf)
    first = _tables(old, perm_v, ident, 13, 3, torch.device("cpu"))
    address = old.data_ptr()
    del old
    gc.collect()
    buf[:] = buf[..., ::-1]  # other permutations in the same memory
    new = torch.from_numpy(buf)
    assert new.data_ptr() == address and new._version == 0
    got = _tables(new, perm_v, ident, 13, 3, torch.device("cpu"))
    assert not torch.equal(got.offh, first.offh)
    assert torch.equal(got.offh, build_tables(new, perm_v, ident, 13, 3)[0])


def test_table_cache_follows_in_place_edits():
    """The device tables are cached per table tensors; an in-place edit of a permutation (version
    bump) must rebuild them, and a repeat call must not."""
    if not HAS_CUPY:
        pytest.skip("cupy not importable")
    from swconv.ops.cuda import _tables, build_tables

    perm_h, perm_v, ident = make_shift_tables(3, 5, 2)
    first = _tables(perm_h, perm_v, ident, 13, 3, torch.device("cpu"))
    assert _tables(perm_h, perm_v, ident, 13, 3, torch.device("cpu")) is first
    perm_h.copy_(perm_h.flip(-1))
    rebuilt = _tables(perm_h, perm_v, ident, 13, 3, torch.device("cpu"))
    assert not torch.equal(rebuilt.offh, first.offh) and not torch.equal(rebuilt.perm_h, first.perm_h)
    assert torch.equal(rebuilt.perm_h, perm_h.to(torch.int32))
    for got, want in zip(rebuilt[3:], build_tables(perm_h, perm_v, ident, 13, 3)):
        assert torch.equal(got, want)


def test_kernel_env_follows_os_environ(monkeypatch):
    """The launch caches key on the kernel environment variables read from os.environ's store:
    a setenv / delenv between calls must show."""
    if not HAS_CUPY:
        pytest.skip("cupy not importable")
    from swconv.ops.cuda import KERNEL_ENV, _env

    monkeypatch.setenv(KERNEL_ENV, "v2")
    monkeypatch.delenv("SWCONV_CUDA_MINB", raising=False)
    got = _env(KERNEL_ENV, "SWCONV_CUDA_MINB")
    assert got in ((b"v2", None), ("v2", None))
    monkeypatch.setenv(KERNEL_ENV, "tc")
    assert _env(KERNEL_ENV)[0] in (b"tc", "tc")
    monkeypatch.delenv(KERNEL_ENV)
    assert _env(KERNEL_ENV) == (None,)


def test_launch_argument_block(monkeypatch):
    """A launch writes the tensors' addresses (0 for None), then keeps the fixed ints and writes the
    late ones, at the offsets the kernel parameter array points to."""
    if not HAS_CUPY:
        pytest.skip("cupy not importable")
    import ctypes
    import struct

    from swconv.ops import cuda

    class FakeKernel:
        ptr = 0

    launch = cuda._Launch(FakeKernel(), (3, 2), 64, 0, 3, (5, -6), n_late=2)
    seen = []
    monkeypatch.setattr(cuda._Launch, "_launch", lambda self, gx, gy, stream: seen.append(bytes(self._block)))
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 0)
    a, b = torch.zeros(4), torch.zeros(2, dtype=torch.int32)
    launch(0, (a, None, b), (7, 8))
    launch(0, (b, a, a), (9, -1))
    assert seen[0] == struct.pack("=3Q4i", a.data_ptr(), 0, b.data_ptr(), 5, -6, 7, 8)
    assert seen[1] == struct.pack("=3Q4i", b.data_ptr(), a.data_ptr(), a.data_ptr(), 5, -6, 9, -1)
    base = ctypes.addressof(launch._block)
    assert list(launch._params) == [base + 8 * i for i in range(3)] + [base + 24 + 4 * i for i in range(4)]
    with pytest.raises(ValueError, match="expected 3 tensors and 2 late ints"):
        launch(0, (a, b), (1, 2))


def test_tc_table_geometry_brute_force():
    """tc_table_geo (the kernels' table_geo) and the size of the backward's table buffer (written by
    the forward, copied by the backward) against a count of the 16 x 8 Toeplitz blocks that meet
    the taps: block d covers taps 8d + offset - 7 ... 8d + offset + 15."""
    if not HAS_CUPY:
        pytest.skip("cupy not importable")
    from swconv.ops.cuda import tc_backward_table_words, tc_table_geo

    def blocks(taps: int, offset: int) -> list[int]:
        return [d for d in range(-40, 40) if 8 * d + offset + 15 >= 0 and 8 * d + offset - 7 <= taps - 1]

    for taps in range(1, 72):
        for offset in range(0, taps + 1):
            b = blocks(taps, offset)
            assert tc_table_geo(taps, offset) == (b[0], len(b)), (taps, offset)
    for ks in (1, 3, 5):
        for nk in (1, 5, 17):
            L = nk * ks
            for big in range(max(1, L - ks + 1), L + 1):
                m = big // 2
                # tH and tV over the flipped long kernels (offset L - 1 - m), tI over the k x k one;
                # 32 lanes x 2 words per block and short-axis tap
                frags = ks * (2 * len(blocks(L, L - 1 - m)) + len(blocks(ks, ks // 2))) * 32
                assert tc_backward_table_words(L, m, ks) == 2 * frags, (ks, nk, big)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA GPU and CuPy")
@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float16])
def test_tc_forward_without_gradients(dt):
    """Without gradients the tensor-core forward neither allocates nor writes the backward's tables
    (a null pointer in the kernel) and its outputs are bit-identical to those of a forward that
    builds them; gradients after a forward with them still match the reference."""
    from swconv.ops.cuda import _tables, _tc_forward, shift_wise_conv_cuda

    cfg = dict(B=5, C=6, H=20, W=18, k=3, K=49, n_rep=3, n_path=1, density=0.6, dtype=dt, layout="contiguous")
    x, weight, ph, pv, ident, active = make_inputs(cfg, 11)
    t = _tables(ph, pv, ident, cfg["K"], 3, x.device)
    act = active.to(torch.uint8)
    *outs_tab, btab = _tc_forward(x, weight, t.perm_h, t.perm_v, t.identity_pick, act, cfg["K"])
    *outs_none, none = _tc_forward(x, weight, t.perm_h, t.perm_v, t.identity_pick, act, cfg["K"], for_backward=False)
    assert none is None and btab is not None and btab.dtype == torch.int32
    for a, b in zip(outs_tab, outs_none):
        assert torch.equal(a, b)
    with torch.no_grad():
        plain = shift_wise_conv_cuda(x, weight.requires_grad_(True), ph, pv, ident, cfg["K"], active)
    for a, b in zip(plain, outs_none):
        assert torch.equal(a, b)
    check_against_reference(cfg, 12)


# H200 limits: 227 KiB opt-in per block (less the 1 KiB swconv keeps for static memory), 228 KiB per SM
_H200_SMEM = (232448 - 1024, 233472)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
@pytest.mark.parametrize("C,H,K", [(60, 56, 51), (122, 28, 49), (246, 14, 47), (492, 7, 13), (5, 33, 31)])
def test_tc_launch_plan_is_the_largest_that_keeps_residency(C, H, K, backward):
    """CPU: the tensor-core plan fits the block limit and keeps the wanted resident blocks per SM
    (or is one image), and one image more would not."""
    from swconv.ops import cuda as swc

    ks, B = 3, 128
    L, m = math.ceil(K / ks) * ks, K // 2
    limit, per_sm = _H200_SMEM
    P, smem = swc.tc_launch_plan(B, H, H, L, m, ks, backward, limit, per_sm)
    assert smem == swc.tc_smem_bytes(backward, P, H, H, L, m, ks) <= limit
    want = swc._TC_BLOCKS_PER_SM[backward]

    def keeps(p):
        s = swc.tc_smem_bytes(backward, p, H, H, L, m, ks)
        return s <= limit and per_sm // (s + 1024) >= want

    assert P == 1 or keeps(P)
    if P < min(B, swc._TC_MAX_LINES // H):
        assert not keeps(P + 1)
