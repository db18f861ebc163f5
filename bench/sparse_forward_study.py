"""Study for the density figure of the CUDA op: can a CUDA-core sparse forward beat the dense
tensor-core forward at density 0.3? (GPU)

    PYTHONPATH=src python bench/sparse_forward_study.py [--out DIR] [--profile]

Times, in bf16 at the four SW-T stage shapes (B = 128, N_rep = 4) and densities 1.0 / 0.3, the
forward of: the op as routed by default (tensor cores at stages 1-3), v2 (CUDA cores) and the two
study kernels of bench/sparse_forward_study.cu (fp32 responses in padded tall planes; responses
as aligned bf16 pairs). Each study kernel is checked against the PyTorch oracle first. Writes
sparse_forward_study_<GPU>.json to bench/results/ (and to --out) and prints a table last.
--profile runs only the two study kernels at stage 1, density 0.3, a few launches (for ncu).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import cupy
import torch
from op_bench import K_SMALL, N_REP, STAGES, B, bench, forced_kernel, write_results

from swconv.ops import cuda as swc
from swconv.ops.functional import shift_wise_conv
from swconv.ops.tables import make_shift_tables

HERE = Path(__file__).resolve().parent
SOURCE = (HERE.parent / "kernels" / "shift_wise_v2.cu").read_text() + (HERE / "sparse_forward_study.cu").read_text()
PPT_PADDED, PPT_PAIRED = 8, 4
_functions: dict[tuple, object] = {}


def _function(name: str, zp: int, ppt: int, extra: tuple[str, ...] = ()):
    key = (name, zp, ppt, extra)
    if key not in _functions:
        opts = (
            "-DDT=2",
            f"-DKS={K_SMALL}",
            f"-DPPT={ppt}",
            "-DLB=512",
            f"-DZP={zp}",
            "-DMINB=2",
            f"-DNREP={N_REP}",
            *extra,
        )
        fn = cupy.RawModule(code=SOURCE, options=(*opts, "-std=c++17"), backend="nvrtc").get_function(name)
        fn.max_dynamic_shared_size_bytes = swc._smem_optin(0)
        fn.preferred_shared_memory_carveout = 100
        _functions[key] = fn
    return _functions[key]


def _r4(v: int) -> int:
    return (v + 3) // 4 * 4


def padded_launch(C: int, H: int, W: int, nk: int, max_offset: int):
    """study_fwd_padded: one thread per PPT-row strip of a response column, P images per block."""
    r = K_SMALL // 2
    eh, ew = H + 2 * r, W + 2 * r
    nzb = math.ceil(eh / PPT_PADDED)
    P = max(1, min(B, 512 // (ew * nzb)))
    threads = 32 * math.ceil(P * ew * nzb / 32)
    padr = min(max_offset, H + r - 1)
    si = max(nzb * PPT_PADDED, eh + padr)
    xr, xp, zp = nzb * PPT_PADDED + 2 * r, ew + 2 * r, ew
    smem = 4 * (nk * 9 + P * xr * xp + 2 * (padr + P * si + PPT_PADDED) * zp) + 4 * (2 * nk * N_REP + 2 * nk)
    fn = _function("study_fwd_padded", zp, PPT_PADDED)
    launch = swc._Launch(swc._Kernel(fn), (C, (B + P - 1) // P), threads, smem, 9, (B, C, H, W, nk, P, padr, si))
    return launch, dict(P=P, threads=threads, smem=smem, regs=fn.attributes["num_regs"])


def paired_launch(C: int, H: int, W: int, nk: int, max_offset: int):
    """study_fwd_paired_bf16: one thread per PPT-row strip of a column pair, P images per block."""
    ppt = PPT_PAIRED
    eh, ew = H + 2, W + 2
    nzb, nqz = math.ceil(eh / ppt), ew // 2 + 1
    P = max(1, min(B, 512 // (nqz * nzb)))
    threads = 32 * math.ceil(P * nqz * nzb / 32)
    padr = min(max_offset, H)
    si = max(nzb * ppt, eh + padr)
    xpw, zpw = nqz + 2, nqz + 1
    xpl, zl = _r4((nzb * ppt + 2) * xpw), _r4((padr + P * si + ppt) * zpw)
    smem = 4 * (nk * 12 + P * xpl + 4 * zl + 3 * nk * 4 + 2 * nk)
    fn = _function("study_fwd_paired_bf16", 8, ppt, (f"-DPZPW={zpw}", f"-DPXPW={xpw}"))
    launch = swc._Launch(swc._Kernel(fn), (C, (B + P - 1) // P), threads, smem, 9, (B, C, H, W, nk, P, padr, si))
    return launch, dict(P=P, threads=threads, smem=smem, regs=fn.attributes["num_regs"])


def run(profile: bool) -> list[dict]:
    rows = []
    for C, H, K in STAGES[:1] if profile else STAGES:
        nk = math.ceil(K / K_SMALL)
        perm_h, perm_v, pick = (t.cuda() for t in make_shift_tables(C, nk, N_REP))
        offh, offv, idc = swc.build_tables(perm_h.int(), perm_v.int(), pick.int(), K, K_SMALL)
        max_offset = int(max(offh.abs().max(), offv.abs().max()))
        launches = {
            "padded_fp32": padded_launch(C, H, H, nk, max_offset),
            "paired_bf16": paired_launch(C, H, H, nk, max_offset),
        }
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(B, C, H, H, device="cuda", dtype=torch.bfloat16, generator=gen)
        w = torch.randn(C * nk, 1, K_SMALL, K_SMALL, device="cuda", generator=gen)
        row = {"C_rep": C, "H": H, "K": K, "B": B, "dtype": "bfloat16", "plans": {k: v[1] for k, v in launches.items()}}
        for density in (0.3,) if profile else (1.0, 0.3):
            active = torch.rand(C * nk, device="cuda", generator=gen) < density
            if density == 1.0:
                active[:] = True
            act8 = active.to(torch.uint8)
            ref = shift_wise_conv(
                x[:8].float(), w * active.view(-1, 1, 1, 1), perm_h, perm_v, pick, K, impl="torch_dense"
            )
            cell = {"density": active.float().mean().item()}
            for name, (launch, _) in launches.items():
                outs = [torch.empty_like(x) for _ in range(3)]
                args = (x, w, offh, offv, idc, act8, *outs)
                launch(0, args)
                torch.cuda.synchronize()
                err = max(float((o[:8].float() - r).norm() / r.norm()) for o, r in zip(outs, ref))
                if not err < 1.5e-2:  # the GPU tests' bf16 bound
                    raise AssertionError(f"{name} stage {C}@{H} density {density}: relative L2 error {err:.2e}")
                if profile:
                    for _ in range(3):
                        launch(0, args)
                    continue
                cell[name] = {"fwd_ms": bench(lambda launch=launch, args=args: launch(0, args)), "rel_l2_err": err}
            if not profile:
                with torch.no_grad():
                    for label, family in (("default", "auto"), ("v2", "v2")):
                        with forced_kernel(family):
                            t = bench(lambda: shift_wise_conv(x, w, perm_h, perm_v, pick, K, active, impl="cuda"))
                        cell[label] = {"fwd_ms": t}
            row[f"d{density}"] = cell
        rows.append(row)
    torch.cuda.synchronize()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--profile", action="store_true", help="stage 1, density 0.3, study kernels only (for ncu)")
    args = ap.parse_args()
    t0 = time.time()
    rows = run(args.profile)
    if args.profile:
        return
    write_results(
        "sparse_forward_study",
        "PYTHONPATH=src python bench/sparse_forward_study.py",
        "bf16 forward only; triton.testing.do_bench median, warmup 25 ms, rep 100 ms",
        {"rows": rows, "wall_s": time.time() - t0},
        args.out,
    )
    names = ("default", "v2", "padded_fp32", "paired_bf16")
    print("bf16 forward ms, density 1.0 / 0.3; last column: best sparse d0.3 over the default op at d1.0")
    print(f"{'stage':>9} | " + " | ".join(f"{n:>15}" for n in names) + " | ratio")
    for r in rows:
        d1, d3 = r["d1.0"], r["d0.3"]
        cells = " | ".join(f"{d1[n]['fwd_ms']:6.3f} / {d3[n]['fwd_ms']:6.3f}" for n in names)
        best = min(d3[n]["fwd_ms"] for n in names[1:])
        print(f"{r['C_rep']:>5}@{r['H']:<3} | {cells} | {best / d1['default']['fwd_ms']:.2f}")


if __name__ == "__main__":
    main()
