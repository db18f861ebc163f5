"""Study for the density figure of the CUDA op: forward and backward whose work is proportional
to the active small kernels, against the dense default op (GPU).

    PYTHONPATH=src python bench/sparse_tile_study.py [--out DIR] [--profile | --sweep | --check]

The kernels of bench/sparse_tile_study.cu: ``swc_sp_fwd`` / ``swc_sp_bwd`` (CUDA cores: 4 x 4
output tiles per thread, responses stored row-major and transposed so every gather is an aligned
16-byte load), ``study_sp_mma_fwd`` (the same forward with its gathers on the tensor cores) and
``study_tcs_fwd`` (responses and gathers on the tensor cores; compiled per column-tile count).

1. Checks both passes against the float64 PyTorch oracle on random shapes (k 1 / 3 / 5, planes
   1-64, N_rep 1-4, densities 0 / 0.3 / 1, bf16 and fp32; the GPU tests' tolerances), and
   ``study_tcs_fwd`` on the bf16 shapes.
2. Times, in bf16 at the four SW-T stage shapes (B = 128, N_rep = 4) and densities 1.0 / 0.3:
   the default op (tensor cores at stages 1-3, v2 at stage 4), the study forward and
   forward+backward, and the two tensor-core forwards at several images-per-block counts.
Writes sparse_tile_study_<GPU>.json to bench/results/ (and to --out) and prints a table last.
--profile: stage 1, density 0.3, the study kernels only, a few launches (for ncu).
--sweep: study_tcs_fwd over densities 0 / 0.1 / 0.3 / 0.6 / 1.0 at each stage (fixed and
per-kernel cost); writes sparse_tile_study_sweep_<GPU>.json.
--check: the oracle checks only; writes sparse_tile_study_checks_<GPU>.json.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import time
from pathlib import Path

import cupy
import torch
from op_bench import K_SMALL, N_REP, STAGES, B, bench, write_results

from swconv.ops import cuda as swc
from swconv.ops.functional import shift_wise_conv
from swconv.ops.tables import make_shift_tables

SOURCE = (Path(__file__).resolve().parent / "sparse_tile_study.cu").read_text()
DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 2}
MAX_THREADS, MIN_BLOCKS = 256, 2  # MAXT / MINB of swc_sp_fwd / swc_sp_bwd
MMA_MAX_THREADS = 512  # launch bound of study_sp_mma_fwd
TOL = {torch.float32: (2e-6, 1e-5), torch.bfloat16: (1.5e-2, 2.5e-2)}  # outputs, gradients
_modules: dict[tuple, tuple] = {}
TCS_BEST_P = {56: 1, 28: 1, 14: 4, 7: 4}  # images per block of study_tcs_fwd at density 0.3, by plane size


def _functions(dtype: torch.dtype, ks: int) -> tuple:
    key = (dtype, ks)
    if key not in _modules:
        opts = (
            f"-DDT={DTYPE_CODE[dtype]}",
            f"-DKS={ks}",
            f"-DMAXT={MAX_THREADS}",
            f"-DMINB={MIN_BLOCKS}",
            "-std=c++17",
            *(("-lineinfo",) if os.environ.get("STUDY_LINEINFO") else ()),  # source lines for ncu
        )
        mod = cupy.RawModule(code=SOURCE, options=opts, backend="nvrtc")
        names = ("swc_sp_fwd", "swc_sp_bwd") + (("study_sp_mma_fwd",) if dtype == torch.bfloat16 else ())
        _modules[key] = tuple(_prepared(mod.get_function(n)) for n in names)
    return _modules[key]


def _prepared(fn):
    fn.max_dynamic_shared_size_bytes = swc._smem_optin(0)
    fn.preferred_shared_memory_carveout = 100
    return fn


def _tcs_functions(ks: int, ntv: int, nth: int) -> tuple:
    """(study_tcs_fwd, study_tcs_pc_fwd) compiled for column-tile counts ntv = ceil(W / 8),
    nth = ceil(H / 8)."""
    key = ("tcs", ks, ntv, nth)
    if key not in _modules:
        opts = ("-DDT=2", f"-DKS={ks}", f"-DTCS_NTV={ntv}", f"-DTCS_NTH={nth}", "-std=c++17")
        opts += ("-lineinfo",) if os.environ.get("STUDY_LINEINFO") else ()
        mod = cupy.RawModule(code=SOURCE, options=opts, backend="nvrtc")
        _modules[key] = tuple(_prepared(mod.get_function(n)) for n in ("study_tcs_fwd", "study_tcs_pc_fwd"))
    return _modules[key]


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def geometry(H: int, W: int, nk: int, ks: int, m: int, backward: bool) -> tuple[int, int, int, int]:
    """(LOV, RV, LOH, RH): zero rows above and total rows of the staged V plane (image rows) and H
    plane (image columns, transposed), so that every shift the kernels' tables keep stays inside
    its plane. Offsets lie in [r - m, (nk - 1) k + r - m]."""
    r = ks // 2
    dmin, dmax = r - m, (nk - 1) * ks + r - m

    def rows(n: int) -> tuple[int, int]:
        padded = _round_up(n, 4)
        ext = max(padded, n + r)  # rows a thread computes or gathers: [-r, ext)
        if backward:  # gradient rows [-r, ext) read staged rows [row - d] of [0, n)
            lo = min(0, -r - min(dmax, ext - 1))
            hi = max(padded, ext - max(dmin, -(n - 1 + r)))
        else:  # output rows [0, padded) read response rows [row + d] of [-r, n + r)
            lo = min(-r, max(dmin, -(padded - 1 + r)))
            hi = max(ext, padded + min(dmax, n + r - 1))
        return -lo, hi - lo

    return rows(H) + rows(W)


def _table_words(nk: int, nrep: int, ks: int) -> int:
    return nk * _round_up(ks * ks, 4) + 2 * nk * nrep + 2 * nk


def smem_bytes(backward: bool, P: int, H: int, W: int, nk: int, nrep: int, ks: int, m: int, threads: int) -> int:
    """Dynamic shared memory of swc_sp_fwd / swc_sp_bwd (mirrors the kernels' carve-up)."""
    r = ks // 2
    Hp, Wp = _round_up(H, 4), _round_up(W, 4)
    _, rv, _, rh = geometry(H, W, nk, ks, m, backward)
    xp = Wp + 8
    words = P * ((Hp + 4 * r) * xp + rv * _round_up(Wp, 8) + rh * _round_up(Hp, 8)) + _table_words(nk, nrep, ks)
    if backward:
        words += 2 * P * (Hp + 2 * r) * xp + nk * (threads // 32) * ks * ks
    return 4 * words


def plan(Bn: int, H: int, W: int, nk: int, nrep: int, ks: int, m: int, backward: bool) -> tuple[int, int, int]:
    """(P, threads, smem): a thread owns one 4 x 4 tile of each output; as many images per block
    as fill MAX_THREADS threads, fewer when MIN_BLOCKS blocks would not share an SM."""
    tiles = _round_up(H, 4) * _round_up(W, 4) // 16
    P = max(1, min(Bn, MAX_THREADS // tiles))
    limit, per_sm = swc._smem_optin(0), swc._smem_per_sm(0)
    while True:
        threads = _round_up(P * tiles, 32)
        smem = smem_bytes(backward, P, H, W, nk, nrep, ks, m, threads)
        if smem <= limit and (P == 1 or swc._blocks_by_smem(smem, per_sm) >= MIN_BLOCKS):
            return P, threads, smem
        if P == 1:
            raise RuntimeError(f"study kernels: a {H}x{W} plane needs {smem} bytes of shared memory, over {limit}")
        P -= 1


def _bf16_pitch(n: int) -> int:
    """Element pitch of a bf16 plane: n rounded up to an odd multiple of 8 (ldmatrix rows 16 * odd
    bytes apart fall in distinct bank groups)."""
    p = (n + 7) // 8
    return 8 * (p if p % 2 else p + 1)


def _bf16_planes(H: int, W: int, nk: int, ks: int, m: int) -> tuple[int, int, int, int, int, int]:
    """(LOV, RV, LOH, RH, PVB, PHB) of the bf16 V and H planes of the tensor-core forwards: the
    forward geometry with bf16 pitches."""
    return (*geometry(H, W, nk, ks, m, False), _bf16_pitch(_round_up(W, 4)), _bf16_pitch(_round_up(H, 4)))


def _gather_warps(P: int, H: int, W: int) -> int:
    """Warps of 16-line gather stripes: V lines (image rows), then H lines (image columns)."""
    return math.ceil(P * H / 16) + math.ceil(P * W / 16)


def mma_plan(H: int, W: int, nk: int, nrep: int, m: int, P: int) -> tuple[int, int, tuple] | None:
    """(threads, smem, extra ints) of study_sp_mma_fwd with P images per block, or None."""
    r = K_SMALL // 2
    Hp, Wp = _round_up(H, 4), _round_up(W, 4)
    planes = _bf16_planes(H, W, nk, K_SMALL, m)
    _, rv, _, rh, pvb, phb = planes
    threads = max(32 * _gather_warps(P, H, W), _round_up(P * (Hp // 4) * (Wp // 4), 32))
    smem = 4 * P * (Hp + 4 * r) * (Wp + 8) + 2 * P * (rv * pvb + rh * phb) + 4 * _table_words(nk, nrep, K_SMALL)
    if threads > MMA_MAX_THREADS or smem > swc._smem_optin(0):
        return None
    return threads, smem, planes


def tcs_plan(
    H: int, W: int, nk: int, nrep: int, ks: int, m: int, P: int, split: bool = False
) -> tuple[int, int, tuple] | None:
    """(threads, smem, extra ints) of study_tcs_fwd (split: study_tcs_pc_fwd) with P images per
    block, or None. Mirrors the kernel's carve-up: bf16 input planes (row-major and transposed), two
    buffers of bf16 V and H planes, the tables, and the Toeplitz fragment table (nk x 2
    orientations x ks taps x 32 lanes). study_tcs_fwd runs a warp per gather stripe and up to two
    response stripes per warp; study_tcs_pc_fwd a warp per response stripe, then one per gather
    stripe."""
    r = ks // 2
    planes = _bf16_planes(H, W, nk, ks, m)
    _, rv, _, rh, pvb, phb = planes
    xl0 = (H + 4 * r) * _bf16_pitch(_round_up(W, 8) + 8)
    xl1 = (W + 4 * r) * _bf16_pitch(_round_up(H, 8) + 8)
    gather_warps = _gather_warps(P, H, W)
    response_stripes = math.ceil(P * (H + 2 * r) / 16) + math.ceil(P * (W + 2 * r) / 16)
    threads = 32 * (gather_warps + response_stripes if split else gather_warps)
    if not split and response_stripes > 2 * gather_warps:
        return None
    smem = 2 * P * (xl0 + xl1 + 2 * (rv * pvb + rh * phb)) + 4 * _table_words(nk, nrep, ks) + 8 * nk * 2 * ks * 32
    if threads > MMA_MAX_THREADS or smem > swc._smem_optin(0) or max(H, W) > 64:
        return None
    return threads, smem, planes


class Study:
    """Launch records of the study kernels for one shape; ``forward`` / ``backward`` as the op's."""

    def __init__(self, dtype, Bn, C, H, W, nk, nrep, ks, big_kernel):
        self.shape, self.ks, m = (Bn, C, H, W, nk, nrep), ks, big_kernel // 2
        self.fns = _functions(dtype, ks)
        self.launches, self.plans = [], []
        for n_ptr, fn, bwd in ((9, self.fns[0], False), (11, self.fns[1], True)):
            P, threads, smem = plan(Bn, H, W, nk, nrep, ks, m, bwd)
            ints = (Bn, C, H, W, nk, nrep, P, *geometry(H, W, nk, ks, m, bwd))
            self.launches.append(swc._Launch(swc._Kernel(fn), (C, (Bn + P - 1) // P), threads, smem, n_ptr, ints))
            self.plans.append(dict(P=P, threads=threads, smem=smem, regs=fn.attributes["num_regs"]))

    def mma_launch(self, P: int, big_kernel: int):
        """study_sp_mma_fwd (bf16) with P images per block, a forward ``launch`` for ``forward``."""
        Bn, C, H, W, nk, nrep = self.shape
        threads, smem, extra = mma_plan(H, W, nk, nrep, big_kernel // 2, P)
        ints = (Bn, C, H, W, nk, nrep, P, *extra)
        return swc._Launch(swc._Kernel(self.fns[2]), (C, (Bn + P - 1) // P), threads, smem, 9, ints)

    def tcs_launch(self, P: int, big_kernel: int, split: bool = False):
        """study_tcs_fwd (split: study_tcs_pc_fwd; bf16) with P images per block, or None when it
        does not fit."""
        Bn, C, H, W, nk, nrep = self.shape
        planned = tcs_plan(H, W, nk, nrep, self.ks, big_kernel // 2, P, split)
        if planned is None:
            return None
        threads, smem, extra = planned
        ints = (Bn, C, H, W, nk, nrep, P, *extra)
        fn = _tcs_functions(self.ks, math.ceil(W / 8), math.ceil(H / 8))[int(split)]
        return swc._Launch(swc._Kernel(fn), (C, (Bn + P - 1) // P), threads, smem, 9, ints)

    poison = True  # outputs start as NaN (an unwritten element fails the checks); off when timing

    def _empty(self, x):
        return torch.full_like(x, float("nan")) if self.poison else torch.empty_like(x)

    def forward(self, x, w, tables, active, launch=None):
        outs = [self._empty(x) for _ in range(3)]
        (launch or self.launches[0])(0, (x, w, *tables, active, *outs))
        return outs

    def backward(self, x, grads, w, tables, active):
        gx = self._empty(x)
        bwd = self.launches[1]
        part = torch.empty((bwd.grid[1], x.shape[1], tables[0].shape[1], w.shape[-1] ** 2), device=x.device)
        bwd(0, (x, *grads, w, *tables, active, gx, part))
        return gx, part.sum(0).reshape(w.shape)


def _inputs(Bn, C, H, W, ks, K, nrep, density, dtype, seed):
    nk = math.ceil(K / ks)
    perm_h, perm_v, pick = (t.cuda() for t in make_shift_tables(C, nk, nrep, seed=seed))
    tables = swc.build_tables(perm_h.int(), perm_v.int(), pick.int(), K, ks)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(Bn, C, H, W, device="cuda", generator=gen).to(dtype)
    active = torch.rand(C * nk, device="cuda", generator=gen) < density
    w = torch.randn(C * nk, 1, ks, ks, device="cuda", generator=gen) * active.view(-1, 1, 1, 1)
    return x, w, (perm_h, perm_v, pick), tables, active


def stage_case(C: int, H: int, K: int, density: float) -> tuple:
    """bf16 inputs of one SW-T stage shape (B = 128, N_rep = 4) at one density; at density 1.0
    every kernel is active with fresh weights. Returns (x, w, perms, tables, active, uint8 mask,
    cell with the realised density, the fp32 oracle outputs of the first 4 images)."""
    x, w, perms, tables, active = _inputs(B, C, H, H, K_SMALL, K, N_REP, density, torch.bfloat16, 0)
    if density == 1.0:
        active[:] = True
        w = torch.randn_like(w)
    ref = shift_wise_conv(x[:4].float(), w, *perms, K, impl="torch_dense")
    return x, w, perms, tables, active, active.to(torch.uint8), {"density": active.float().mean().item()}, ref


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    nb = float(b.norm())
    return float((a - b).norm()) / nb if nb > 0 else float(a.abs().max())


def check(n_configs: int = 32) -> list[dict]:
    """Forward and backward of the CUDA-core study kernels against the float64 oracle."""
    rng = random.Random(2026)
    results = []
    for i in range(n_configs):
        ks = rng.choice([1, 3, 3, 5])
        cfg = dict(
            Bn=rng.choice([1, 2, 5]),
            C=rng.choice([1, 3, 7]),
            H=rng.choice([1, 2, 5, 7, 14, 17, rng.randrange(1, 65)]),
            W=rng.choice([1, 3, 7, 19, 28, rng.randrange(1, 65)]),
            ks=ks,
            K=max(ks, rng.choice([13, 31, 47, 51, rng.randrange(ks, 80)])),
            nrep=rng.randrange(1, 5),
            density=rng.choice([0.0, 0.3, 1.0]),
            dtype=(torch.bfloat16, torch.float32)[i % 2],
        )
        x, w, perms, tables, active = _inputs(**cfg, seed=100 + i)
        nk = tables[0].shape[1]
        study = Study(cfg["dtype"], cfg["Bn"], cfg["C"], cfg["H"], cfg["W"], nk, cfg["nrep"], ks, cfg["K"])
        act8 = active.to(torch.uint8)
        outs = study.forward(x, w, tables, act8)
        x64 = x.double().requires_grad_(True)
        w64 = w.double().requires_grad_(True)
        refs = shift_wise_conv(x64, w64, *perms, cfg["K"], active, impl="torch_dense")
        grads = [torch.randn_like(x) for _ in range(3)]
        gx, gw = study.backward(x, grads, w, tables, act8)
        rgx, rgw = torch.autograd.grad(refs, (x64, w64), [g.double() for g in grads])
        errs = dict(out=max(_rel(o, r) for o, r in zip(outs, refs)), grad_x=_rel(gx, rgx), grad_w=_rel(gw, rgw))
        tol_out, tol_grad = TOL[cfg["dtype"]]
        ok = errs["out"] <= tol_out and errs["grad_x"] <= tol_grad and errs["grad_w"] <= tol_grad
        if cfg["dtype"] == torch.bfloat16:  # the all-tensor-core forward, one and all images per block
            for P, split in itertools.product(sorted({1, cfg["Bn"]}), (False, True)):
                launch = study.tcs_launch(P, cfg["K"], split)
                if launch is not None:
                    name = f"tcs{'_pc' if split else ''}_out_P{P}"
                    tcs = study.forward(x, w, tables, act8, launch)
                    errs[name] = max(_rel(o, r) for o, r in zip(tcs, refs))
                    ok = ok and errs[name] <= tol_out
        ok = ok and bool((gw[~active] == 0).all())
        results.append({**{k: str(v) if k == "dtype" else v for k, v in cfg.items()}, **errs, "ok": ok})
        if not ok:
            raise AssertionError(f"study kernels off the oracle: {results[-1]}")
    return results


def run(profile: bool) -> list[dict]:
    rows = []
    for C, H, K in STAGES[:1] if profile else STAGES:
        nk = math.ceil(K / K_SMALL)
        mma_Ps = [P for P in (1, 2, 4, 8, 16) if P * H <= 16 * 8 and mma_plan(H, H, nk, N_REP, K // 2, P)][-2:]
        study = Study(torch.bfloat16, B, C, H, H, nk, N_REP, K_SMALL, K)
        variants = {f"mma_fwd_P{P}": study.mma_launch(P, K) for P in mma_Ps}
        for P, split in itertools.product((1, 2, 4, 8, 16), (False, True)):
            launch = study.tcs_launch(P, K, split) if P * H <= 128 else None
            if launch is not None:
                variants[f"tcs{'_pc' if split else ''}_fwd_P{P}"] = launch
        row = {"C_rep": C, "H": H, "K": K, "B": B, "dtype": "bfloat16"}
        row["plans"] = {"fwd": study.plans[0], "bwd": study.plans[1], "variants": list(variants)}
        for density in (0.3,) if profile else (1.0, 0.3):
            x, w, perms, tables, active, act8, cell, ref = stage_case(C, H, K, density)
            for name, launch in variants.items():
                outs = study.forward(x, w, tables, act8, launch)
                err = max(_rel(o[:4], r.double()) for o, r in zip(outs, ref))
                if not err <= TOL[torch.bfloat16][0]:
                    raise AssertionError(f"{name} stage {C}@{H}: relative L2 error {err:.2e}")
                cell[name] = {"rel_l2_err": err}
            grads = [torch.randn_like(x) for _ in range(3)]
            if profile:
                for _ in range(3):
                    study.forward(x, w, tables, act8)
                    study.backward(x, grads, w, tables, act8)
                    for launch in variants.values():
                        study.forward(x, w, tables, act8, launch)
                continue
            study.poison = False  # timings: outputs allocated as the op allocates them
            for name, launch in variants.items():
                cell[name]["fwd_ms"] = bench(lambda launch=launch: study.forward(x, w, tables, act8, launch))
            cell["study"] = {
                "fwd_ms": bench(lambda: study.forward(x, w, tables, act8)),
                "fwdbwd_ms": bench(
                    lambda: (study.forward(x, w, tables, act8), study.backward(x, grads, w, tables, act8))
                ),
            }
            study.poison = True
            xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)

            def default_op(xx=xg, ww=wg, a=active):
                return swc.shift_wise_conv_cuda(xx, ww, *perms, K, a)  # as bench/op_bench.py times it

            def default_fwdbwd():
                return torch.autograd.grad(default_op(), (xg, wg), grads)

            with torch.no_grad():
                t_fwd = bench(default_op)
            cell["default"] = {"fwd_ms": t_fwd, "fwdbwd_ms": bench(default_fwdbwd)}
            row[f"d{density}"] = cell
        rows.append(row)
    torch.cuda.synchronize()
    return rows


def sweep() -> list[dict]:
    """study_tcs_fwd and study_tcs_pc_fwd over densities 0-1 at each stage (study_tcs_fwd's fastest
    P at density 0.3): splits their time into a fixed part and a part per active kernel."""
    rows = []
    for C, H, K in STAGES:
        nk = math.ceil(K / K_SMALL)
        study = Study(torch.bfloat16, B, C, H, H, nk, N_REP, K_SMALL, K)
        study.poison = False
        launches = {name: study.tcs_launch(TCS_BEST_P[H], K, name.endswith("pc")) for name in ("tcs", "tcs_pc")}
        for density in (0.0, 0.1, 0.3, 0.6, 1.0):
            x, w, _, tables, active = _inputs(B, C, H, H, K_SMALL, K, N_REP, density, torch.bfloat16, 0)
            if density == 1.0:
                active[:] = True
            act8 = active.to(torch.uint8)
            row = {"C_rep": C, "H": H, "P": TCS_BEST_P[H], "density": active.float().mean().item()}
            for name, launch in launches.items():
                row[f"{name}_fwd_ms"] = bench(lambda launch=launch: study.forward(x, w, tables, act8, launch))
            rows.append(row)
            print(
                f"{C:>4}@{H:<2} P={TCS_BEST_P[H]} density {row['density']:.3f}: study_tcs_fwd {row['tcs_fwd_ms']:.3f} "
                f"ms, study_tcs_pc_fwd {row['tcs_pc_fwd_ms']:.3f} ms"
            )
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--profile", action="store_true", help="stage 1, density 0.3, study kernels only (for ncu)")
    ap.add_argument("--sweep", action="store_true", help="study_tcs_fwd over densities 0-1 at each stage")
    ap.add_argument("--check", action="store_true", help="the oracle checks only")
    args = ap.parse_args()
    t0 = time.time()
    if args.profile:
        run(True)
        return
    if args.check:
        checks = check()
        write_results(
            "sparse_tile_study_checks",
            "PYTHONPATH=src python bench/sparse_tile_study.py --check",
            "float64 oracle, the GPU tests' tolerances",
            {"checks": checks, "passed": sum(c["ok"] for c in checks), "wall_s": time.time() - t0},
            args.out,
        )
        print(f"oracle checks: {sum(c['ok'] for c in checks)}/{len(checks)} passed")
        return
    if args.sweep:
        write_results(
            "sparse_tile_study_sweep",
            "PYTHONPATH=src python bench/sparse_tile_study.py --sweep",
            "bf16; triton.testing.do_bench median, warmup 25 ms, rep 100 ms; outputs from torch.empty_like",
            {"rows": sweep(), "wall_s": time.time() - t0},
            args.out,
        )
        return
    checks = check()
    rows = run(False)
    write_results(
        "sparse_tile_study",
        "PYTHONPATH=src python bench/sparse_tile_study.py",
        "bf16; triton.testing.do_bench median, warmup 25 ms, rep 100 ms; study outputs from torch.empty_like "
        "(the op's allocation; NaN-filled only for the checks); study forward+backward = "
        "swc_sp_fwd + swc_sp_bwd + the partials' sum",
        {"checks": checks, "rows": rows, "wall_s": time.time() - t0},
        args.out,
    )
    print(f"oracle checks: {sum(c['ok'] for c in checks)}/{len(checks)} passed")
    print("bf16 ms, density 1.0 / 0.3; last column: study forward+backward at 0.3 over the default op at 1.0")
    heads = ("default fwd", "default f+b", "study fwd", "study f+b")
    tail = " | mma fwd (P) | tcs fwd (P) | tcs_pc fwd (P) | ratio"
    print(f"{'stage':>7} | " + " | ".join(f"{h:>11}" for h in heads) + tail)
    for r in rows:
        d1, d3 = r["d1.0"], r["d0.3"]

        def pair(name, key):
            return f"{d1[name][key]:5.3f}/{d3[name][key]:5.3f}"

        def best(prefix):
            keys = [k for k in d3 if k.startswith(prefix)]
            k = min(keys, key=lambda k: d3[k]["fwd_ms"])
            return f"{pair(k, 'fwd_ms')}({k.split('P')[-1]})"

        mma = " | ".join(best(prefix) for prefix in ("mma", "tcs_fwd", "tcs_pc"))
        ratio = d3["study"]["fwdbwd_ms"] / d1["default"]["fwdbwd_ms"]
        cells = " | ".join(
            pair(n, k)
            for n, k in (("default", "fwd_ms"), ("default", "fwdbwd_ms"), ("study", "fwd_ms"), ("study", "fwdbwd_ms"))
        )
        print(f"{r['C_rep']:>4}@{r['H']:<2} | {cells} | {mma} | {ratio:.2f}")


if __name__ == "__main__":
    main()
