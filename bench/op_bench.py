"""Shift-wise operator benchmark at the four SW-T stage shapes (GPU).

    PYTHONPATH=src python bench/op_bench.py [--out DIR] [--quick]

Times forward, backward and forward+backward of the CuPy kernels (swconv.ops.cuda) in bf16 and
fp32 at densities 1.0 / 0.7 / 0.3, and in the same process: the cuDNN depthwise convolutions of
the same extents (k x nk*k, nk*k x k, k x k), the reference-style decomposition (grouped conv to
nk*C_rep channels + shift-add in PyTorch: impl="torch_shift") and the default PyTorch oracle
(impl="torch_dense"). Medians of triton.testing.do_bench (BASELINES.md §5). Writes JSON to
bench/results/ (and to --out) and prints a table with ratios last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from swconv.ops.functional import shift_wise_conv
from swconv.ops.tables import make_shift_tables

STAGES = [(60, 56, 51), (122, 28, 49), (246, 14, 47), (492, 7, 13)]  # (C_rep, H=W, K), SW-T
B, K_SMALL, N_REP = 128, 3, 4
DENSITIES = (1.0, 0.7, 0.3)
H100_FP32_FLOPS = 67e12
H100_BW = 3.0e12


def bench(fn, warmup=25, rep=100):
    import triton.testing as tt

    return tt.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def graph_ms(fn, n: int = 20) -> float:
    """GPU time of one ``fn()``: a CUDA graph of n calls, captured after 3 warm-up calls on a side
    stream, replayed (no Python or launch overhead, which bounds eager times at small planes)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            fn()
    return bench(graph.replay) / n


def versions():
    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
    for m in ("cupy", "triton", "numpy"):
        try:
            v[m] = __import__(m).__version__
        except Exception as exc:  # noqa: BLE001
            v[m] = f"missing ({type(exc).__name__})"
    return v


def write_results(stem: str, command: str, protocol: str, body: dict, out: str | None) -> None:
    """Writes the device, versions, command, date and protocol followed by ``body`` as
    <stem>_<GPU name>.json to bench/results/ and, when given, to ``out`` (``command`` then gets
    ``--out $OUT`` appended)."""
    res = {
        "device": torch.cuda.get_device_name(),
        "versions": versions(),
        "command": command + (" --out $OUT" if out else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "protocol": protocol,
        **body,
    }
    save_results(f"{stem}_" + torch.cuda.get_device_name().replace(" ", "_") + ".json", res, out)


def save_results(name: str, res: dict, out: str | None) -> None:
    """Writes ``res`` as JSON file ``name`` to bench/results/ and, when given, to ``out``."""
    paths = [Path(__file__).resolve().parent / "results" / name] + ([Path(out) / name] if out else [])
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(res, indent=1))


def block_slot_cover(nk: int, big_kernel: int, ks: int = K_SMALL) -> torch.Tensor:
    """(nd, nk) bool: slot s has a tap in the tensor-core forward's 16 x 8 Toeplitz block d, which
    covers the long-axis taps 8d + m - 7 ... 8d + m + 15 (kernels/shift_wise_tc.cu, table_geo)."""
    from swconv.ops.cuda import tc_table_geo

    L, m = nk * ks, big_kernel // 2
    dmin, nd = tc_table_geo(L, m)
    cover = torch.zeros(nd, nk, dtype=torch.bool)
    for i, d in enumerate(range(dmin, dmin + nd)):
        lo, hi = max(8 * d + m - 7, 0), min(8 * d + m + 15, L - 1)
        cover[i, lo // ks : hi // ks + 1] = True
    return cover


def toeplitz_block_occupancy(perm: torch.Tensor, active: torch.Tensor, big_kernel: int) -> float:
    """Fraction of the tensor-core forward's 16 x 8 Toeplitz blocks (one per channel, short-axis
    tap and block diagonal) that hold a non-zero tap under the mask ``active`` (C * nk): the most a
    kernel that skips all-zero blocks could save."""
    n_rep, channels, nk = perm.shape
    on = active.view(channels, nk).cpu()
    slot_on = torch.zeros(channels, nk, dtype=torch.bool)
    for g in range(n_rep):  # slot s of group g holds kernel perm[g, c, s]
        slot_on |= torch.gather(on, 1, perm[g].long().cpu())
    return (slot_on[:, None, :] & block_slot_cover(nk, big_kernel)[None]).any(2).float().mean().item()


@contextlib.contextmanager
def forced_kernel(name: str):
    """$SWCONV_CUDA_KERNEL=name for the block, restored afterwards even on an error."""
    before = os.environ.get("SWCONV_CUDA_KERNEL")
    os.environ["SWCONV_CUDA_KERNEL"] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SWCONV_CUDA_KERNEL", None)
        else:
            os.environ["SWCONV_CUDA_KERNEL"] = before


def fwd_bwd_timer(fn, inputs):
    """(fwd ms, bwd ms, fwd+bwd ms) of fn(*inputs) -> tuple of outputs, grads wrt inputs."""

    def f():
        with torch.no_grad():
            return fn(*inputs)

    t_f = bench(f)
    outs = fn(*inputs)
    grads = [torch.randn_like(o) for o in outs]

    def b():
        return torch.autograd.grad(outs, inputs, grads, retain_graph=True)

    t_b = bench(b)

    def fb():
        o = fn(*inputs)
        return torch.autograd.grad(o, inputs, grads)

    # forward+backward is host-bound at small planes, so it is the number most exposed to host
    # jitter: the median of three independent measurements
    t_fb = statistics.median(bench(fb) for _ in range(3))
    return t_f, t_b, t_fb


def run(quick: bool):
    from swconv.ops.cuda import shift_wise_conv_cuda

    torch.backends.cudnn.benchmark = True
    rows = []
    dtypes = [torch.bfloat16, torch.float32]
    for C, H, K in STAGES:
        nk = math.ceil(K / K_SMALL)
        ph, pv, ident = make_shift_tables(C, nk, N_REP)
        ph, pv, ident = ph.cuda(), pv.cuda(), ident.cuda()
        for dt in dtypes:
            g = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(B, C, H, H, device="cuda", dtype=dt, generator=g).requires_grad_(True)
            w = torch.randn(C * nk, 1, K_SMALL, K_SMALL, device="cuda", generator=g).requires_grad_(True)
            npx = B * C * H * H
            es = x.element_size()
            row = {
                "C_rep": C,
                "H": H,
                "K": K,
                "k": K_SMALL,
                "nk": nk,
                "B": B,
                "N_rep": N_REP,
                "dtype": str(dt).replace("torch.", ""),
            }
            masks = {
                d: torch.rand(C * nk, device="cuda", generator=g) < d
                if d < 1
                else torch.ones(C * nk, dtype=torch.bool, device="cuda")
                for d in DENSITIES
            }

            def time_ours(active, x=x, w=w):
                return fwd_bwd_timer(lambda xx, ww: shift_wise_conv_cuda(xx, ww, ph, pv, ident, K, active), (x, w))

            for d, active in masks.items():
                rho = active.float().mean().item()
                tf, tb, tfb = time_ours(active)
                flops_f = npx * rho * nk * (2 * K_SMALL * K_SMALL + 2 * N_REP + 1)
                flops_b = npx * rho * nk * (4 * K_SMALL * K_SMALL + 2 * N_REP + 1)
                row[f"ours_d{d}"] = {
                    "density": rho,
                    "fwd_ms": tf,
                    "bwd_ms": tb,
                    "fwdbwd_ms": tfb,
                    "fwd_TFLOPs": flops_f / tf / 1e9,
                    "bwd_TFLOPs": flops_b / tb / 1e9,
                    "fwd_GBs": 4 * npx * es / tf / 1e6,
                    "bwd_GBs": 5 * npx * es / tb / 1e6,
                    "fwd_frac_fp32_peak": flops_f / tf / 1e-3 / H100_FP32_FLOPS,
                    "fwd_frac_bw": 4 * npx * es / tf / 1e-3 / H100_BW,
                }
            row["tc_nonzero_toeplitz_blocks_d0.3"] = statistics.mean(
                toeplitz_block_occupancy(p, masks[0.3], K) for p in (ph, pv)
            )
            from swconv.ops.cuda import kernel_info

            row["kernel_info"] = kernel_info(tuple(x.shape), dt, nk, N_REP, K_SMALL, torch.cuda.current_device(), K)
            if dt != torch.float32:
                # the CUDA-core kernels (time proportional to the active kernels), same shape and masks
                with forced_kernel("v2"):
                    for d in (1.0, 0.3):
                        row[f"v2_d{d}"] = dict(zip(("fwd_ms", "bwd_ms", "fwdbwd_ms"), time_ours(masks[d])))
                row["v2_density0.3_over_dense_fwdbwd"] = row["v2_d0.3"]["fwdbwd_ms"] / row["v2_d1.0"]["fwdbwd_ms"]
                if row["kernel_info"]["version"] != "tc":
                    # auto leaves planes up to 6 x 6 to v2 (cuda._TC_MIN_PLANE): the tensor-core kernels forced
                    with forced_kernel("tc"):
                        row["tc_d1.0"] = dict(zip(("fwd_ms", "bwd_ms", "fwdbwd_ms"), time_ours(masks[1.0])))
            # GPU-only forward+backward time, dense and at density 0.3: replay a captured CUDA graph
            # (no Python / launch overhead, which bounds the eager time at 7 x 7 planes)
            gout = [torch.randn_like(x) for _ in range(3)]
            for key, act in (("ours_fwdbwd_graph_ms", masks[1.0]), ("ours_d0.3_fwdbwd_graph_ms", masks[0.3])):
                try:

                    def step(xx=x, ww=w, gg=gout, a=act):
                        o = shift_wise_conv_cuda(xx, ww, ph, pv, ident, K, a)
                        return torch.autograd.grad(o, (xx, ww), gg)

                    row[key] = graph_ms(step, n=1)
                except Exception as exc:  # noqa: BLE001
                    row[key] = f"failed: {type(exc).__name__}: {exc}"
            # cuDNN depthwise of the same extents
            L = nk * K_SMALL
            wh = torch.randn(C, 1, K_SMALL, L, device="cuda", dtype=dt, requires_grad=True)
            wv = torch.randn(C, 1, L, K_SMALL, device="cuda", dtype=dt, requires_grad=True)
            wi = torch.randn(C, 1, K_SMALL, K_SMALL, device="cuda", dtype=dt, requires_grad=True)
            r = K_SMALL // 2

            def cudnn3(xx, a, b_, c_):
                return (
                    F.conv2d(xx, a, padding=(r, L // 2), groups=C),
                    F.conv2d(xx, b_, padding=(L // 2, r), groups=C),
                    F.conv2d(xx, c_, padding=r, groups=C),
                )

            tf, tb, tfb = fwd_bwd_timer(cudnn3, (x, wh, wv, wi))
            row["cudnn_dw"] = {"fwd_ms": tf, "bwd_ms": tb, "fwdbwd_ms": tfb}
            for name, impl in (("ref_style", "torch_shift"), ("oracle", "torch_dense")):
                if quick and name == "oracle":
                    continue
                try:
                    tf, tb, tfb = fwd_bwd_timer(
                        lambda xx, ww, impl=impl: shift_wise_conv(
                            xx, ww.to(xx.dtype), ph, pv, ident, K, None, impl=impl
                        ),  # noqa: E501
                        (x, w),
                    )
                    row[name] = {"fwd_ms": tf, "bwd_ms": tb, "fwdbwd_ms": tfb}
                except torch.OutOfMemoryError:
                    row[name] = {"error": "OOM"}
                torch.cuda.empty_cache()
            o = row["ours_d1.0"]
            row["ratio_fwdbwd_vs_cudnn"] = row["cudnn_dw"]["fwdbwd_ms"] / o["fwdbwd_ms"]
            row["ratio_fwd_vs_cudnn"] = row["cudnn_dw"]["fwd_ms"] / o["fwd_ms"]
            if "fwdbwd_ms" in row.get("ref_style", {}):
                row["ratio_fwdbwd_vs_ref_style"] = row["ref_style"]["fwdbwd_ms"] / o["fwdbwd_ms"]
            row["density0.3_over_dense_fwdbwd"] = row["ours_d0.3"]["fwdbwd_ms"] / o["fwdbwd_ms"]
            row["density0.3_over_dense_fwd"] = row["ours_d0.3"]["fwd_ms"] / o["fwd_ms"]
            if not isinstance(row["ours_d0.3_fwdbwd_graph_ms"], str) and not isinstance(
                row["ours_fwdbwd_graph_ms"], str
            ):
                row["density0.3_over_dense_fwdbwd_graph"] = (
                    row["ours_d0.3_fwdbwd_graph_ms"] / row["ours_fwdbwd_graph_ms"]
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
            del x, w
            torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--quick", action="store_true", help="skip the PyTorch oracle timings")
    args = ap.parse_args()
    t0 = time.time()
    rows = run(args.quick)
    write_results(
        "op_bench",
        "PYTHONPATH=src python bench/op_bench.py" + (" --quick" if args.quick else ""),
        "triton.testing.do_bench median, warmup 25 ms, rep 100 ms, cudnn.benchmark on",
        {
            "floors": {"fp32_cuda_core_flops": H100_FP32_FLOPS, "copy_bw": H100_BW},
            "rows": rows,
            "wall_s": time.time() - t0,
        },
        args.out,
    )
    print()
    hdr = (
        f"{'stage':>14} {'dtype':>8} | {'ours f/b/fb ms':>20} | {'cuDNN fb':>8} {'x':>5} | {'refsty fb':>9} {'x':>5}"
        f" | {'oracle fb':>9} | d0.7 d0.3 (fb/dense) | v2 fb d1 d0.3/d1 | graph fb d0.3/d1 | fwd TF/s GB/s | kernels"
    )
    print(hdr)
    for r in rows:
        o = r["ours_d1.0"]
        rs = r.get("ref_style", {}).get("fwdbwd_ms", float("nan"))
        orc = r.get("oracle", {}).get("fwdbwd_ms", float("nan"))
        graph_ms = r["ours_fwdbwd_graph_ms"]
        graph_ms = graph_ms[:20] if isinstance(graph_ms, str) else f"{graph_ms:.3f}"
        graph_ms += (
            f" {r['density0.3_over_dense_fwdbwd_graph']:.2f}" if "density0.3_over_dense_fwdbwd_graph" in r else "  -"
        )
        v2 = f"{r['v2_d1.0']['fwdbwd_ms']:6.3f} {r['v2_density0.3_over_dense_fwdbwd']:.2f}" if "v2_d1.0" in r else "  -"
        ki = r["kernel_info"]
        print(
            f"{r['C_rep']:>4}@{r['H']:>2} K{r['K']:>2} {r['dtype']:>8} | {o['fwd_ms']:6.3f} {o['bwd_ms']:6.3f} {o['fwdbwd_ms']:6.3f}"  # noqa: E501
            f" | {r['cudnn_dw']['fwdbwd_ms']:8.3f} {r['ratio_fwdbwd_vs_cudnn']:5.1f} | {rs:9.3f}"
            f" {r.get('ratio_fwdbwd_vs_ref_style', float('nan')):5.1f} | {orc:9.3f} |"
            f" {r['ours_d0.7']['fwdbwd_ms'] / o['fwdbwd_ms']:.2f} {r['density0.3_over_dense_fwdbwd']:.2f}"
            f" | {v2} | {graph_ms} | {o['fwd_TFLOPs']:5.1f} {o['fwd_GBs']:4.0f}"
            f" | {ki['version']} regs {ki['fwd']['regs']}/{ki['bwd']['regs']}"
            f" lmem {ki['fwd']['local_bytes']}/{ki['bwd']['local_bytes']}"
        )


if __name__ == "__main__":
    main()
