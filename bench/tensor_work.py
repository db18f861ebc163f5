"""Tensor-core work of the dense op against the per-active-kernel forward (GPU, Nsight Compute).

    PYTHONPATH=src python bench/tensor_work.py [--out DIR]

The density figure asks the op to take at most 0.5x of its dense time at density 0.3. This
measures how much tensor-core work each formulation issues, at SW-T stages 1-3 (bf16, B = 128,
N_rep = 4), so that a time ratio can be split into "work" and "efficiency":

- the default op's swc_tc_fwd / swc_tc_bwd (folded cross kernels; density 1.0, its work does not
  depend on the masks) through bench/op_profile.py;
- study_tcs_fwd of bench/sparse_tile_study.cu (responses and gathers of the active kernels only,
  at the images-per-block count its density sweep found fastest) at densities 0.3 and 1.0.

Per kernel: HMMA instructions, tensor-pipe active cycles, all instructions and duration (ncu
metrics; durations under ncu run at locked clocks). The HMMA that swc_tc_fwd needs is also
computed from the kernel's loops (``dense_fwd_hmma``), and ``per_kernel_hmma`` counts what the
cheapest per-active-kernel tensor-core forward would issue under the same masks. Writes
tensor_work_<GPU>.json to bench/results/ (and to --out) and prints a table last.

Internal: ``--launch-tcs STAGE DENSITY`` is the process ncu profiles for study_tcs_fwd.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from op_bench import K_SMALL, N_REP, STAGES, B, write_results

from swconv.ops import cuda as swc

HERE = Path(__file__).resolve().parent
PROFILED_STAGES = (1, 2, 3)  # stage 4 runs the CUDA-core v2 kernels, not tc
METRICS = (
    "gpu__time_duration.sum",
    "smsp__inst_executed.sum",
    "smsp__inst_executed_pipe_tensor_op_hmma.sum",  # one of these two names, by ncu version
    "sm__inst_executed_pipe_tensor_op_hmma.sum",
    "sm__pipe_tensor_op_hmma_cycles_active.sum",
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
)


def _tile_hmma(ncol: int, taps: int, tap_offset: int, ks: int) -> tuple[int, int]:
    """(issued, needed) mma.sync of tpass for one 16-row tile of a pass over ncol output columns.
    issued: all NKC x NNT blocks of each tap, as when every band test compiles to a predicate
    (predicated-off HMMA still take tensor-pipe cycles); the compiler branches around some, so
    this is an upper bound. needed: the blocks inside the Toeplitz band."""
    dmin, nd = swc.tc_table_geo(taps, tap_offset)
    nkc, nnt = (ncol + 15) // 16, (ncol + 7) // 8
    needed = sum(1 for kc in range(nkc) for nt in range(nnt) if 0 <= 2 * kc - nt - dmin < nd)
    return ks * nkc * nnt, ks * needed


def dense_fwd_hmma(Bn: int, C: int, H: int, W: int, big_kernel: int, ks: int, P: int) -> tuple[int, int]:
    """(issued, needed) HMMA instructions of one swc_tc_fwd launch with P images per block: per
    block, MH row tiles of the horizontal and identity passes and MV of the vertical pass."""
    nk, r, m = math.ceil(big_kernel / ks), ks // 2, big_kernel // 2
    L = nk * ks
    total = [0, 0]
    for b0 in range(0, Bn, P):
        n_img = min(P, Bn - b0)
        mh, mv = math.ceil(n_img * H / 16), math.ceil(n_img * W / 16)
        passes = ((mh, _tile_hmma(W, L, m, ks)), (mh, _tile_hmma(W, ks, r, ks)), (mv, _tile_hmma(H, L, m, ks)))
        for tiles, counts in passes:
            for i in range(2):
                total[i] += tiles * counts[i]
    return C * total[0], C * total[1]


def per_kernel_hmma(offh, offv, active, Bn: int, H: int, W: int, ks: int) -> tuple[float, float]:
    """(gathers, gathers + responses): mma.sync m16n8k16 that the cheapest per-active-kernel
    tensor-core forward we can construct would issue.

    Gathers: every (active kernel, group, branch) whose shift reaches into the plane adds one
    shifted copy of the kernel's response to each output pixel. An mma reads 16 x 16 A elements
    once each, so it adds at most 256 gathered values: with B = [I8; I8] and two shifted 8-column
    windows in A it does exactly that. This part is a bound for any mma-based gather.
    Responses: im2col with the taps along K (9 <= 16) and the active kernels, plus the summed
    identity kernel, along N: one mma per 16 pixels and 8 kernels."""
    r = ks // 2
    act = active.view(offh.shape[0], offh.shape[1]).bool()
    reach_h = (offh.abs() <= W - 1 + r) & act.unsqueeze(-1)
    reach_v = (offv.abs() <= H - 1 + r) & act.unsqueeze(-1)
    per_px = Bn * H * W
    gathers = (reach_h.sum() + reach_v.sum()).item() * per_px / 256
    n_active = act.sum(1)
    columns = torch.where(n_active > 0, n_active + 1, 0)
    responses = ((columns + 7) // 8).sum().item() * 8 * per_px / 128
    return gathers, gathers + responses


def _available(metrics: tuple[str, ...]) -> list[str]:
    """The metrics this ncu knows (names from ``ncu --query-metrics``, without the roll-up suffix)."""
    listing = subprocess.run(["ncu", "--query-metrics"], capture_output=True, text=True).stdout
    known = {line.split()[0] for line in listing.splitlines() if line.strip()}
    return [mt for mt in metrics if mt.split(".")[0] in known]


def _env() -> dict:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": "src" + (os.pathsep + path if path else "")}


def _ncu(cmd: list[str], kernel: str, skip: int, count: int, metrics: list[str]) -> list[dict]:
    """Runs ``cmd`` under ncu; returns one {kernel, metric: value} dict per profiled launch."""
    full = ["ncu", "--csv", "--print-units", "base", "--kernel-name", f"regex:{kernel}"]
    full += ["--launch-skip", str(skip), "--launch-count", str(count), "--metrics", ",".join(metrics), *cmd]
    proc = subprocess.run(full, capture_output=True, text=True, env=_env())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('"')]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"ncu failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    launches: dict[str, dict] = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        rec = launches.setdefault(row["ID"], {"kernel": row["Kernel Name"].split("(")[0]})
        rec[row["Metric Name"]] = float(row["Metric Value"].replace(",", ""))
    return list(launches.values())


def measure() -> dict:
    from sparse_tile_study import TCS_BEST_P, _inputs

    metrics = _available(METRICS)
    py = sys.executable
    rows = []
    for stage in PROFILED_STAGES:
        C, H, K = STAGES[stage - 1]
        nk, m = math.ceil(K / K_SMALL), K // 2
        (Pf, _), _ = swc._tc_plans(B, H, H, nk * K_SMALL, m, K_SMALL, 0)
        row = {"stage": stage, "C_rep": C, "H": H, "K": K, "tc_fwd_P": Pf, "tcs_P": TCS_BEST_P[H]}
        row["dense_fwd_hmma_model"] = dict(zip(("issued", "needed"), dense_fwd_hmma(B, C, H, H, K, K_SMALL, Pf)))
        _, _, _, (offh, offv, _), active = _inputs(B, C, H, H, K_SMALL, K, N_REP, 0.3, torch.bfloat16, 0)
        row["per_kernel_hmma_d0.3"] = dict(
            zip(("gathers", "total"), per_kernel_hmma(offh, offv, active, B, H, H, K_SMALL))
        )
        dense = _ncu([py, str(HERE / "op_profile.py"), str(stage), "1.0"], "swc_", 3, 3, metrics)
        row["dense"] = {rec.pop("kernel"): rec for rec in dense}
        for density in (0.3, 1.0):
            cmd = [py, str(HERE / "tensor_work.py"), "--launch-tcs", str(stage), str(density)]
            (rec,) = _ncu(cmd, "study_tcs_fwd", 1, 1, metrics)
            rec.pop("kernel")
            row[f"tcs_fwd_d{density}"] = rec
        rows.append(row)
        print(f"stage {stage} done", flush=True)
    return {"metrics": metrics, "rows": rows}


def launch_tcs(stage: int, density: float) -> None:
    """Two study_tcs_fwd launches (compile + profiled) at one stage and density."""
    from sparse_tile_study import TCS_BEST_P, Study, _inputs

    C, H, K = STAGES[stage - 1]
    study = Study(torch.bfloat16, B, C, H, H, math.ceil(K / K_SMALL), N_REP, K_SMALL, K)
    study.poison = False
    launch = study.tcs_launch(TCS_BEST_P[H], K)
    x, w, _, tables, active = _inputs(B, C, H, H, K_SMALL, K, N_REP, density, torch.bfloat16, 0)
    if density == 1.0:
        active[:] = True
    for _ in range(2):
        study.forward(x, w, tables, active.to(torch.uint8), launch)
    torch.cuda.synchronize()


def _summary(rows: list[dict], metrics: list[str]) -> None:
    hm = next(mt for mt in metrics if "inst_executed_pipe_tensor" in mt)
    cyc = "sm__pipe_tensor_op_hmma_cycles_active.sum"
    dur = "gpu__time_duration.sum"
    print("HMMA per pixel (B*C*H*W) and tensor-pipe active cycles; ratios to the dense forward")
    print("(x: tensor-pipe cycles, xT: duration); bound: per-kernel gathers / gathers+responses at d0.3 over the")
    print("HMMA the tc forward needs")
    head = f"{'stage':>7} | {'tc fwd':>14} | {'tc bwd':>14} | {'tcs d0.3':>20} | {'tcs d1.0':>20}"
    print(head + " | bound       | tc fwd HMMA needed per pixel (model)")
    for r in rows:
        px = B * r["C_rep"] * r["H"] ** 2
        f, bw = r["dense"]["swc_tc_fwd"], r["dense"]["swc_tc_bwd"]
        bound, model = r["per_kernel_hmma_d0.3"], r["dense_fwd_hmma_model"]

        def cell(rec, ref=f):
            return f"{rec[hm] / px:5.3f} {rec[cyc] / ref[cyc]:4.2f}x {rec[dur] / ref[dur]:4.2f}xT"

        print(
            f"{r['C_rep']:>4}@{r['H']:<2} | {f[hm] / px:5.3f} {f[dur] * 1e-3:6.1f}us | "
            f"{bw[hm] / px:5.3f} {bw[dur] * 1e-3:6.1f}us | {cell(r['tcs_fwd_d0.3'])} | {cell(r['tcs_fwd_d1.0'])} | "
            f"{bound['gathers'] / model['needed']:4.2f} / {bound['total'] / model['needed']:4.2f} | "
            f"{model['needed'] / px:5.3f} (issued {f[hm] / model['needed']:4.2f}x)"
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--launch-tcs", nargs=2, metavar=("STAGE", "DENSITY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.launch_tcs:
        launch_tcs(int(args.launch_tcs[0]), float(args.launch_tcs[1]))
        return
    t0 = time.time()
    body = measure()
    write_results(
        "tensor_work",
        "PYTHONPATH=src python bench/tensor_work.py",
        "Nsight Compute metrics (locked clocks), one launch per kernel after warm-up; bf16, B = 128, N_rep = 4",
        {**body, "wall_s": time.time() - t0},
        args.out,
    )
    _summary(body["rows"], body["metrics"])


if __name__ == "__main__":
    main()
