"""Host (CPU) cost of one eager forward+backward of the CUDA op, next to PyTorch's own ops (GPU).

    PYTHONPATH=src python bench/host_cost.py [--out DIR]

With one image per call (B = 1) the kernels take microseconds, so the wall time per call of a
loop of calls is the host's cost: Python, dispatch, autograd and launches. At 7 x 7 planes (SW-T
stage 4) that cost is of the order of the GPU time, so it decides eager speed there. Per SW-T
stage shape, bf16, microseconds per forward+backward (``torch.autograd.grad``, as op_bench.py):

- ``ours``: ``shift_wise_conv_cuda``;
- ``empty_function``: a Python ``autograd.Function`` with the same inputs and three outputs that
  only allocates its outputs and gradients: the floor of any op with a Python autograd node;
- ``cudnn_dw``: the three cuDNN depthwise convolutions of the same extents (C++ autograd nodes);
- ``ours_forward_only`` / ``ours_backward_only``: our forward call, and our backward called
  directly (no autograd engine): our own share of the host time.

Also: where our host time goes at stage 4 (cProfile, microseconds per call of the top functions)
and five ``do_bench`` medians of the stage-4 eager forward+backward at B = 128, which show how
much the host's speed moves that figure. Writes ``host_cost_<device>.json`` to bench/results/
(and to --out) and prints a table last.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import importlib.util
import json
import math
import os
import pstats
import statistics
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from op_bench import K_SMALL, N_REP, STAGES, B, bench, write_results

from swconv.ops.cuda import shift_wise_conv_cuda
from swconv.ops.tables import make_shift_tables


class _EmptyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return tuple(torch.empty_like(x) for _ in range(3))

    @staticmethod
    def backward(ctx, g_h, g_v, g_i):
        x, weight = ctx.saved_tensors
        return torch.empty_like(x), torch.empty_like(weight)


def host_us(fn, calls: int = 300, trials: int = 7) -> float:
    """Median over trials of the wall microseconds per call of ``calls`` back-to-back calls."""
    for _ in range(20):
        fn()
    times = []
    for _ in range(trials):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def stage_calls(C: int, H: int, K: int, batch: int):
    """(ours, empty_function, cudnn_dw, ours_forward, ours_backward) closures for one stage shape:
    forward+backward, then our forward alone and our backward alone (the backward of the eager
    autograd Function, called directly on one saved forward: no autograd engine)."""
    nk = math.ceil(K / K_SMALL)
    L, r = nk * K_SMALL, K_SMALL // 2
    ph, pv, ident = (t.cuda() for t in make_shift_tables(C, nk, N_REP))
    x = torch.randn(batch, C, H, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(C * nk, 1, K_SMALL, K_SMALL, device="cuda", requires_grad=True)
    grads = [torch.randn_like(x) for _ in range(3)]
    dw = [
        torch.randn(C, 1, *shape, device="cuda", dtype=x.dtype, requires_grad=True)
        for shape in ((K_SMALL, L), (L, K_SMALL), (K_SMALL, K_SMALL))
    ]
    pads = ((r, L // 2), (L // 2, r), r)
    # an even L gives the long-axis convs one extra output column / row, as in op_bench.py
    dw_grads = [torch.randn_like(F.conv2d(x.detach(), wk.detach(), padding=p, groups=C)) for wk, p in zip(dw, pads)]

    def ours():
        return torch.autograd.grad(shift_wise_conv_cuda(x, w, ph, pv, ident, K), (x, w), grads)

    def empty_function():
        return torch.autograd.grad(_EmptyFunction.apply(x, w), (x, w), grads)

    def cudnn_dw():
        outs = [F.conv2d(x, wk, padding=p, groups=C) for wk, p in zip(dw, pads)]
        return torch.autograd.grad(outs, (x, *dw), dw_grads)

    def ours_forward():
        return shift_wise_conv_cuda(x, w, ph, pv, ident, K)

    node = ours_forward()[0].grad_fn
    backward = node._forward_cls.backward
    # the node's context as its backward reads it, with what _KernelFunction saves per family: not
    # node.saved_tensors, which are freed with the outputs (RuntimeError on the H200)
    saved = (x.detach(),) if vars(node)["family"] == "tc" else (x.detach(), w.detach())
    ctx = types.SimpleNamespace(saved_tensors=saved, needs_input_grad=node.needs_input_grad, **vars(node))

    def ours_backward():
        return backward(ctx, *grads)

    return ours, empty_function, cudnn_dw, ours_forward, ours_backward


def compare_host_paths(baseline: str, rounds: int = 9) -> list[dict]:
    """Our eager forward+backward through the working tree's ``swconv.ops.cuda`` against the same
    module loaded from ``baseline`` (that file of another revision, e.g. ``git show
    REV:src/swconv/ops/cuda.py > base.py``; both run the kernels in kernels/), at 70 % density.
    B = 1: wall time per call (host), rounds interleaved; B = 128: do_bench medians, interleaved.
    Both must give bit-identical gradients."""
    import swconv.ops.cuda as tree

    os.environ.setdefault("SWCONV_KERNEL_DIR", str(tree.kernel_source_path()))
    spec = importlib.util.spec_from_file_location("swconv_cuda_baseline", baseline)
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    rows = []
    for C, H, K in STAGES:
        nk = math.ceil(K / K_SMALL)
        ph, pv, ident = (t.cuda() for t in make_shift_tables(C, nk, N_REP))
        active = torch.rand(C * nk, device="cuda") < 0.7
        row = {"C_rep": C, "H": H, "K": K}
        for batch in (1, B):
            x = torch.randn(batch, C, H, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            w = torch.randn(C * nk, 1, K_SMALL, K_SMALL, device="cuda", requires_grad=True)
            grads = [torch.randn_like(x) for _ in range(3)]

            def fwd_bwd(module, x=x, w=w, grads=grads):
                out = module.shift_wise_conv_cuda(x, w, ph, pv, ident, K, active)
                return torch.autograd.grad(out, (x, w), grads)

            calls = {"baseline": functools.partial(fwd_bwd, base), "tree": functools.partial(fwd_bwd, tree)}
            if not all(torch.equal(a, b) for a, b in zip(calls["baseline"](), calls["tree"]())):
                raise RuntimeError("the baseline and the tree's host paths give different gradients")
            times = {name: [] for name in calls}
            for _ in range(rounds if batch == 1 else 5):
                for name, fn in calls.items():
                    times[name].append(host_us(fn, trials=1) if batch == 1 else bench(fn))
            for name, ts in times.items():
                if batch == 1:
                    row[f"{name}_B1_us"] = statistics.median(ts)
                else:
                    row[f"{name}_B{B}_ms"] = ts
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def profile_us(fn, calls: int = 500, top: int = 12) -> list[tuple[str, float]]:
    """The ``top`` functions by own time under cProfile, as (name, microseconds per call of fn)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    stats = pstats.Stats(prof).stats
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return [(f"{Path(f).name}:{line}({name})", round(v[2] / calls * 1e6, 1)) for (f, line, name), v in rows]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--baseline", help="a cuda.py of another revision: compare its host path with the tree's")
    args = ap.parse_args()
    if args.baseline:
        rows = compare_host_paths(args.baseline)
        write_results(
            "host_path_ab",
            f"PYTHONPATH=src python bench/host_cost.py --baseline {Path(args.baseline).name}",
            "bf16, density 0.7; B = 1: median over 9 interleaved rounds of 300 back-to-back forward+backward "
            f"calls, wall us per call; B = {B}: five interleaved do_bench medians (ms)",
            {"rows": rows},
            args.out,
        )
        print(
            f"\n{'stage':>11} | {'baseline B1 us':>14} | {'tree B1 us':>10} | B{B} eager ms, baseline / tree (median)"
        )
        for r in rows:
            print(
                f"{r['C_rep']:>3}@{r['H']:>2} K{r['K']:>2} | {r['baseline_B1_us']:14.1f} | {r['tree_B1_us']:10.1f} | "
                f"{statistics.median(r[f'baseline_B{B}_ms']):.3f} / {statistics.median(r[f'tree_B{B}_ms']):.3f}"
            )
        return
    rows = []
    for C, H, K in STAGES:
        calls = stage_calls(C, H, K, batch=1)
        row = {"C_rep": C, "H": H, "K": K, "B": 1, "dtype": "bfloat16"}
        for name, fn in zip(("ours", "empty_function", "cudnn_dw", "ours_forward_only", "ours_backward_only"), calls):
            row[f"{name}_us"] = host_us(fn)
        rows.append(row)
        print(json.dumps(row), flush=True)
    C, H, K = STAGES[-1]
    stage4_ours = stage_calls(C, H, K, batch=1)[0]
    stage4_profile = profile_us(stage4_ours)
    stage4_trials = [host_us(stage4_ours, calls=200, trials=1) for _ in range(12)]
    ours_b128 = stage_calls(C, H, K, batch=B)[0]
    stage4_eager_ms = [bench(ours_b128) for _ in range(5)]
    write_results(
        "host_cost",
        "PYTHONPATH=src python bench/host_cost.py",
        "B = 1: median over 7 trials of 300 back-to-back forward+backward calls, wall time per call",
        {
            "cpu_count": os.cpu_count(),
            "rows": rows,
            "stage4_profile_us_per_call": stage4_profile,
            "stage4_B1_ours_us_12_trials": stage4_trials,
            f"stage4_B{B}_eager_fwdbwd_ms_5_runs": stage4_eager_ms,
        },
        args.out,
    )
    print("\nstage 4 host time by function (us per forward+backward):")
    for fn_name, us in stage4_profile:
        print(f"  {us:7.1f}  {fn_name}")
    medians = [round(t, 3) for t in stage4_eager_ms]
    print(f"stage 4, B = 1, ours, twelve trials (us per call): {[round(t) for t in stage4_trials]}")
    print(f"stage 4, B = {B}, eager forward+backward, five do_bench medians (ms): {medians}")
    head = f"{'stage':>11} | {'ours us':>7} | {'fwd only':>8} | {'bwd only':>8}"
    print(f"\n{head} | {'empty Function':>14} | {'cuDNN dw':>8}")
    for r in rows:
        print(
            f"{r['C_rep']:>3}@{r['H']:>2} K{r['K']:>2} | {r['ours_us']:7.1f} | {r['ours_forward_only_us']:8.1f}"
            f" | {r['ours_backward_only_us']:8.1f} | {r['empty_function_us']:14.1f} | {r['cudnn_dw_us']:8.1f}"
        )


if __name__ == "__main__":
    main()
