"""Launch-plan sweep of the tensor-core kernels: GPU time against the images per block P. (GPU)

    PYTHONPATH=src python bench/tc_plan_sweep.py [--out DIR]

For SW-T stages 1-3 in bf16 (B = 128, N_rep = 4, all kernels active) times swc_tc_fwd alone and
swc_tc_bwd + swc_cross_grad for every P whose shared memory fits one block, compiled as shipped
(FWD_MINB 4, BWD_MINB 2) and, for the backward, also with the former 85-register cap
(BWD_MINB 3). Each result is checked against the shipped plan's output. Records the blocks per
SM the occupancy calculator allows, and which P tc_launch_plan picks. Writes
tc_plan_sweep_<GPU>.json to bench/results/ (and to --out) and prints the best and picked P last.
"""

from __future__ import annotations

import argparse
import math
import os

import cupy
import torch
from op_bench import K_SMALL, N_REP, STAGES, B, bench, write_results

from swconv.ops import cuda as swc
from swconv.ops.tables import make_shift_tables


def _kernels(defines: tuple[str, ...]) -> tuple:
    """(cross_grad, fwd, bwd) of shift_wise_tc.cu in bf16 with extra -D options (none: as shipped)."""
    return swc._tc_functions(swc._TC_DTYPES[torch.bfloat16], K_SMALL, 0, defines)


def _blocks_per_sm(kernel, smem: int) -> int:
    return cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(kernel.ptr, swc._TC_THREADS, smem)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def run() -> list[dict]:
    rows = []
    optin = swc._smem_optin(0)
    for C, H, K in STAGES:
        nk = math.ceil(K / K_SMALL)
        L, m = nk * K_SMALL, K // 2
        if swc._kernel_family(H, H, torch.bfloat16, nk, N_REP, K_SMALL, K, 0) != "tc":
            continue  # planes the tensor-core kernels do not take
        tables = swc._tables(*(t.cuda() for t in make_shift_tables(C, nk, N_REP)), K, K_SMALL, torch.device("cuda"))
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(B, C, H, H, device="cuda", dtype=torch.bfloat16, generator=g)
        w = torch.randn(C * nk, 1, K_SMALL, K_SMALL, device="cuda", generator=g)
        grads = [torch.randn(x.shape, device="cuda", dtype=x.dtype, generator=g) for _ in range(3)]
        active = torch.ones(C * nk, dtype=torch.uint8, device="cuda")
        shipped = swc._tc_launches(torch.bfloat16, B, C, H, H, nk, N_REP, K_SMALL, m, 0)
        fwd_args = (x, w, tables.perm_h, tables.perm_v, tables.identity_pick, active, K)
        *ref_fwd, btab = swc._tc_forward(*fwd_args, shipped)
        bwd_args = (x, *grads, btab, K_SMALL, tables.offh, tables.offv, tables.idc, active, K)
        ref_bwd = swc._tc_backward_launch(*bwd_args, shipped)
        shipped_plans = swc._tc_plans(B, H, H, L, m, K_SMALL, 0)
        row = {"C_rep": C, "H": H, "K": K, "picked_P": {"fwd": shipped_plans[0][0], "bwd": shipped_plans[1][0]}}
        row["fwd"], row["bwd_minb2"], row["bwd_minb3"] = [], [], []
        variants = ((False, (), "fwd"), (True, (), "bwd_minb2"), (True, ("-DBWD_MINB=3",), "bwd_minb3"))
        for backward, defines, key in variants:
            fns = _kernels(defines)
            for P in range(1, min(B, 64) + 1):
                smem = swc.tc_smem_bytes(backward, P, H, H, L, m, K_SMALL)
                if smem > optin:
                    break
                plans = ((P, smem), shipped_plans[1]) if not backward else (shipped_plans[0], (P, smem))
                launches = swc._tc_launch_records(fns, B, C, H, H, nk, N_REP, K_SMALL, m, plans)
                if backward:
                    out = swc._tc_backward_launch(*bwd_args, launches)
                    err = max(_rel_err(a, b) for a, b in zip(out, ref_bwd))
                    ms = bench(lambda launches=launches: swc._tc_backward_launch(*bwd_args, launches))
                else:
                    err = max(_rel_err(a, b) for a, b in zip(swc._tc_forward(*fwd_args, launches)[:3], ref_fwd))
                    ms = bench(lambda launches=launches: swc._tc_forward(*fwd_args, launches))
                if err > 1e-5:
                    raise AssertionError(f"{C}@{H} {key} P={P}: relative error {err:.2e} vs the shipped plan")
                occ = _blocks_per_sm(fns[2] if backward else fns[1], smem)
                grid = C * ((B + P - 1) // P)
                row[key].append({"P": P, "smem": smem, "blocks_per_sm": occ, "grid": grid, "ms": ms, "rel_err": err})
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()
    rows = run()
    write_results(
        "tc_plan_sweep",
        "PYTHONPATH=src python bench/tc_plan_sweep.py",
        "bf16, density 1; triton.testing.do_bench median, warmup 25 ms, rep 100 ms; bwd = swc_tc_bwd + swc_cross_grad",
        {"rows": rows},
        args.out,
    )
    print("ms at the picked P (best P: ms) per stage")
    for r in rows:
        cells = []
        for key in ("fwd", "bwd_minb2", "bwd_minb3"):
            best = min(r[key], key=lambda e: e["ms"])
            picked = r["picked_P"]["fwd" if key == "fwd" else "bwd"]
            at = next(e["ms"] for e in r[key] if e["P"] == picked)
            cells.append(f"{key} P={picked}: {at:.3f} (best P={best['P']}: {best['ms']:.3f})")
        print(f"{r['C_rep']:>4}@{r['H']:<3} " + " | ".join(cells))


if __name__ == "__main__":
    main()
