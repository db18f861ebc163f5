"""Study for the density figure of the CUDA op: a sparse forward whose gathers run in registers (GPU).

    PYTHONPATH=src python bench/sparse_reg_study.py [--out DIR] [--profile]

``study_reg_fwd`` (bench/sparse_reg_study.cu): a thread owns one column and one row of an image.
Per active kernel it computes the response down its column in registers, adds the N_rep vertical
shifts there (a `switch` on the slot jumps to code compiled for that offset, so no gathered value
passes through shared memory), hands the column to the row owners through one shared plane, and
adds the horizontal shifts of its row the same way. The earlier CUDA-core designs were bound by
shared-memory bytes (kernels/README.md); this one moves 4 bytes per response value through
shared memory, plus the input.

1. Checks it against the float64 PyTorch oracle on random shapes (k 1 / 3 / 5, planes 1-64,
   N_rep 1-4, densities 0 / 0.3 / 1; bf16, the GPU tests' output tolerance).
2. Times it in bf16 at the four SW-T stage shapes (B = 128, N_rep = 4) over densities
   0 / 0.1 / 0.3 / 0.6 / 1.0 at several images-per-block counts, next to the default op's forward
   at densities 1.0 and 0.3 (no gradient: the forward alone).
Writes sparse_reg_study_<GPU>.json to bench/results/ (and to --out) and prints a table last.
--profile: stage 1, density 0.3, a checked launch and three more of each plan, in the order of PS
(for ncu: ``--launch-skip 1 --launch-count 1`` profiles the first plan).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from pathlib import Path

import cupy
import torch
from op_bench import K_SMALL, N_REP, STAGES, B, bench, write_results
from sparse_tile_study import TOL, _inputs, _rel, _round_up, stage_case

from swconv.ops import cuda as swc
from swconv.ops.functional import shift_wise_conv

SOURCE = (Path(__file__).resolve().parent / "sparse_reg_study.cu").read_text()
_modules: dict[tuple, object] = {}


def _first(start: int, ok) -> int:
    while not ok(start):
        start += 1
    return start


def geometry(H: int, W: int, ks: int, K: int, P: int) -> dict:
    """The kernel's compile-time layout (see the .cu header) for H x W planes, P images per block.
    Pitches keep a warp's loads and stores on distinct banks: the column owners' lanes are
    consecutive columns (image strides = the threads per image, mod 32), the row owners' lanes
    consecutive rows (odd input pitch; response rows read ZV floats at a time)."""
    r, m = ks // 2, max(H, W)
    zv = 4 if W % 4 == 0 else 2 if W % 2 == 0 else 1
    xp = _first(W + 4 * r, lambda v: v % 2 == 1)
    xs = _first((H + 4 * r) * xp, lambda v: v % 32 == m % 32)
    zp = _first(W, lambda v: v % zv == 0 and (v // zv) % 2 == 1)
    zs = H * zp
    aligned = [v for v in range(zs, zs + 32 * zv) if v % zv == 0 and v % 32 == m % 32]
    zs = aligned[0] if aligned else _round_up(zs, zv)
    return dict(
        KS=ks, H=H, W=W, P=P, NK=math.ceil(K / ks), MM=K // 2, NT=_round_up(P * m, 32), XP=xp, XS=xs,
        XTOT=_round_up(P * xs, 4), ZP=zp, ZS=zs, ZV=zv, ZBT=_round_up(2 * P * zs, 4),
    )  # fmt: skip


class RegLaunch:
    """study_reg_fwd compiled and planned for one shape; ``forward`` as the op's (no autograd)."""

    def __init__(self, Bn: int, C: int, H: int, W: int, ks: int, K: int, nrep: int, P: int):
        self.g = geometry(H, W, ks, K, P)
        self.smem = 4 * (self.g["ZBT"] + self.g["XTOT"])
        self.threads = self.g["NT"]
        optin = swc._smem_optin(0)
        self.fits = self.smem <= optin and self.threads <= 1024
        self.grid = (C, (Bn + P - 1) // P)
        self.args = (Bn, C, nrep)
        if not self.fits:
            return
        key = tuple(sorted(self.g.items()))
        if key not in _modules:
            opts = tuple(f"-D{k}={v}" for k, v in self.g.items()) + ("-std=c++17",)
            opts += ("-lineinfo",) if os.environ.get("STUDY_LINEINFO") else ()
            fn = cupy.RawModule(code=SOURCE, options=opts, backend="nvrtc").get_function("study_reg_fwd")
            fn.max_dynamic_shared_size_bytes = optin - fn.attributes["shared_size_bytes"]
            fn.preferred_shared_memory_carveout = 100
            _modules[key] = fn
        self.fn = _modules[key]
        self.smem_static = self.fn.attributes["shared_size_bytes"]
        self.fits = self.smem + self.smem_static <= optin
        if not self.fits:
            return
        self.launch = swc._Launch(swc._Kernel(self.fn), self.grid, self.threads, self.smem, 9, self.args)
        self.regs = self.fn.attributes["num_regs"]
        self.local_bytes = self.fn.attributes["local_size_bytes"]
        per_sm = 228 * 1024
        by_regs = 65536 // (self.threads * _round_up(self.regs, 8))
        self.blocks_per_sm = max(0, min(per_sm // (self.smem + self.smem_static + 1024), by_regs, 2048 // self.threads))

    def forward(self, x, w, tables, active, poison: bool = False):
        outs = [torch.full_like(x, float("nan")) if poison else torch.empty_like(x) for _ in range(3)]
        self.launch(x.device.index or 0, (x, w, *tables, active, *outs))
        return outs

    def plan(self) -> dict:
        return dict(
            P=self.g["P"], threads=self.threads, smem=self.smem, regs=self.regs, local_bytes=self.local_bytes,
            blocks_per_sm=self.blocks_per_sm,
        )  # fmt: skip


def check(n_configs: int = 24) -> list[dict]:
    """study_reg_fwd against the float64 oracle, one and all images per block."""
    rng = random.Random(2028)
    results = []
    for i in range(n_configs):
        ks = rng.choice([1, 3, 3, 3, 5])
        cfg = dict(
            Bn=rng.choice([1, 2, 5]),
            C=rng.choice([1, 3, 7]),
            H=rng.choice([1, 2, 5, 7, 14, 17, 28, rng.randrange(1, 65)]),
            W=rng.choice([1, 3, 7, 14, 19, 28, 56, rng.randrange(1, 65)]),
            ks=ks,
            K=max(ks, rng.choice([13, 31, 47, 51, rng.randrange(ks, 80)])),
            nrep=rng.randrange(1, 5),
            density=rng.choice([0.0, 0.3, 1.0]),
        )
        x, w, perms, tables, active = _inputs(**cfg, dtype=torch.bfloat16, seed=400 + i)
        act8 = active.to(torch.uint8)
        refs = shift_wise_conv(x.double(), w.double(), *perms, cfg["K"], active, impl="torch_dense")
        errs, ok = {}, True
        for P in sorted({1, cfg["Bn"]}):
            launch = RegLaunch(cfg["Bn"], cfg["C"], cfg["H"], cfg["W"], ks, cfg["K"], cfg["nrep"], P)
            if not launch.fits:
                continue
            outs = launch.forward(x, w, tables, act8, poison=True)
            errs[f"out_P{P}"] = max(_rel(o, r) for o, r in zip(outs, refs))
            ok = ok and errs[f"out_P{P}"] <= TOL[torch.bfloat16][0]
        results.append({**cfg, **errs, "ok": ok})
        if not ok:
            raise AssertionError(f"study_reg_fwd off the oracle: {results[-1]}")
    return results


PS = (1, 2, 4, 8, 16, 32)
DENSITIES = (0.0, 0.1, 0.3, 0.6, 1.0)


def run(profile: bool) -> list[dict]:
    rows = []
    for C, H, K in STAGES[:1] if profile else STAGES:
        launches = {}
        for P in PS:
            if P * H > 512 or B % P:
                continue
            launch = RegLaunch(B, C, H, H, K_SMALL, K, N_REP, P)
            if launch.fits and launch.blocks_per_sm >= 1:
                launches[P] = launch
        row = {"C_rep": C, "H": H, "K": K, "B": B, "dtype": "bfloat16", "plans": [v.plan() for v in launches.values()]}
        for density in (0.3,) if profile else DENSITIES:
            x, w, perms, tables, active, act8, cell, ref = stage_case(C, H, K, density)
            for P, launch in launches.items():
                outs = launch.forward(x, w, tables, act8, poison=True)
                err = max(_rel(o[:4], r.double()) for o, r in zip(outs, ref))
                if not err <= TOL[torch.bfloat16][0]:
                    raise AssertionError(f"study_reg_fwd P={P} stage {C}@{H}: relative L2 error {err:.2e}")
                if profile:
                    for _ in range(3):
                        launch.forward(x, w, tables, act8)
                    continue
                cell[f"reg_fwd_ms_P{P}"] = bench(lambda launch=launch: launch.forward(x, w, tables, act8))
            if not profile and density in (0.3, 1.0):
                with torch.no_grad():
                    cell["default_fwd_ms"] = bench(lambda: swc.shift_wise_conv_cuda(x, w, *perms, K, active))
            row[f"d{density}"] = cell
            if profile:
                break
        rows.append(row)
    torch.cuda.synchronize()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--profile", action="store_true", help="stage 1, density 0.3, a few launches (for ncu)")
    args = ap.parse_args()
    t0 = time.time()
    if args.profile:
        run(True)
        return
    checks = check()
    print(f"oracle checks: {sum(c['ok'] for c in checks)}/{len(checks)} passed", flush=True)
    rows = run(False)
    write_results(
        "sparse_reg_study",
        "PYTHONPATH=src python bench/sparse_reg_study.py",
        "bf16, forward only; triton.testing.do_bench median, warmup 25 ms, rep 100 ms; study outputs from "
        "torch.empty_like (NaN-filled only for the checks); default op under torch.no_grad",
        {"checks": checks, "passed": sum(c["ok"] for c in checks), "rows": rows, "wall_s": time.time() - t0},
        args.out,
    )
    for r in rows:
        print(f"{r['C_rep']}@{r['H']} plans:", r["plans"])
    print("bf16 forward ms: default op at density 1.0 / 0.3; study_reg_fwd at its best P per density; ratio:")
    print("study at 0.3 over the default op at 1.0")
    print(f"{'stage':>7} | {'default':>11} | " + " | ".join(f"d={d:<4}" + " " * 6 for d in DENSITIES) + " | ratio")
    for r in rows:

        def best(cell):
            k = min((k for k in cell if k.startswith("reg_fwd_ms")), key=lambda k: cell[k])
            return cell[k], k.split("P")[-1]

        cells = " | ".join("{:6.3f} (P{:>2})".format(*best(r[f"d{d}"])) for d in DENSITIES)
        d1, d3 = r["d1.0"]["default_fwd_ms"], r["d0.3"]["default_fwd_ms"]
        print(f"{r['C_rep']:>4}@{r['H']:<2} | {d1:5.3f}/{d3:5.3f} | {cells} | {best(r['d0.3'])[0] / d1:.2f}")


if __name__ == "__main__":
    main()
