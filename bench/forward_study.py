"""The harness the sparse forward studies share (sparse_tcr_study, sparse_reg_study; GPU).

A study supplies a launch class: ``Launch(Bn, C, H, W, ks, K, nrep, P)``, a ``StudyLaunch`` that
sets ``fits`` and ``launch`` through ``StudyLaunch.build`` and has a ``plan()``, and which
images-per-block plans to time per stage. This module checks it against the float64 oracle,
times it over densities next to the default op's forward, writes the JSON and prints the table.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import cupy
import torch
from op_bench import K_SMALL, N_REP, STAGES, B, bench, graph_ms, write_results
from sparse_tile_study import TOL, _inputs, _rel, stage_case

from swconv.ops import cuda as swc
from swconv.ops.functional import shift_wise_conv

DENSITIES = (0.0, 0.1, 0.3, 0.6, 1.0)
PS = (1, 2, 4, 8, 16, 32)
_kernels: dict[tuple, object] = {}
HERE = Path(__file__).resolve().parent


def study_source(file_name: str) -> str:
    """The CUDA source of the study in bench/``file_name``, after the helpers they share
    (bench/study_common.cuh)."""
    return (HERE / "study_common.cuh").read_text() + (HERE / file_name).read_text()


def compile_study(source: str, entry: str, defines: dict) -> object:
    """``entry`` of ``source`` compiled through NVRTC with ``-D`` ``defines`` (cached per source,
    entry and compile options), its dynamic shared memory allowed up to what its static part
    leaves of the opt-in limit. STUDY_LINEINFO=1 adds source lines (for ncu)."""
    opts = tuple(f"-D{k}={v}" for k, v in sorted(defines.items())) + ("-std=c++17",)
    opts += ("-lineinfo",) if os.environ.get("STUDY_LINEINFO") else ()
    key = (source, entry, opts)
    if key not in _kernels:
        fn = cupy.RawModule(code=source, options=opts, backend="nvrtc").get_function(entry)
        fn.max_dynamic_shared_size_bytes = swc._smem_optin(0) - fn.attributes["shared_size_bytes"]
        fn.preferred_shared_memory_carveout = 100
        _kernels[key] = fn
    return _kernels[key]


class StudyLaunch:
    """What the study launch classes share: ``build`` (compile, check the fit, make the launch) and
    ``forward``, ``self.launch`` (a swconv ``_Launch`` taking x, w, the 7 tables, the mask, then the
    three outputs) called as the op's forward, no autograd."""

    launch: object

    def build(self, source: str, entry: str, defines: dict, smem: int, threads: int, grid, args) -> bool:
        """Sets ``fits`` (dynamic plus static shared memory within the opt-in limit, at most 1024
        threads) and, when it fits, ``fn``, ``launch``, ``regs`` and ``blocks_per_sm`` (the driver's
        occupancy calculator, as Nsight Compute reports it); returns ``fits``. Compiles only when the
        dynamic part alone fits."""
        self.smem, self.threads = smem, threads
        optin = swc._smem_optin(0)
        self.fits = smem <= optin and threads <= 1024
        if self.fits:
            self.fn = compile_study(source, entry, defines)
            self.fits = smem + self.fn.attributes["shared_size_bytes"] <= optin
        if self.fits:
            kernel = swc._Kernel(self.fn)
            self.launch = swc._Launch(kernel, grid, threads, smem, 9, args)
            self.regs = self.fn.attributes["num_regs"]
            self.blocks_per_sm = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(kernel.ptr, threads, smem)
        return self.fits

    def forward(self, x, w, tables, active, poison: bool = False) -> list[torch.Tensor]:
        outs = [torch.full_like(x, float("nan")) if poison else torch.empty_like(x) for _ in range(3)]
        self.launch(swc._dev_index(x), (x, w, *tables, active, *outs))
        return outs


def check(launch_class, name: str, rng_seed: int, seed0: int, n_configs: int = 24) -> list[dict]:
    """study_<name>_fwd against the float64 oracle on random shapes (k 1 / 3 / 5, planes 1-64,
    N_rep 1-4, densities 0 / 0.3 / 1; bf16, the GPU tests' output tolerance), one and all images
    per block."""
    rng = random.Random(rng_seed)
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
        x, w, perms, tables, active = _inputs(**cfg, dtype=torch.bfloat16, seed=seed0 + i)
        act8 = active.to(torch.uint8)
        refs = shift_wise_conv(x.double(), w.double(), *perms, cfg["K"], active, impl="torch_dense")
        errs, ok = {}, True
        for P in sorted({1, cfg["Bn"]}):
            launch = launch_class(cfg["Bn"], cfg["C"], cfg["H"], cfg["W"], ks, cfg["K"], cfg["nrep"], P)
            if not launch.fits:
                continue
            outs = launch.forward(x, w, tables, act8, poison=True)
            errs[f"out_P{P}"] = max(_rel(o, r) for o, r in zip(outs, refs))
            ok = ok and errs[f"out_P{P}"] <= TOL[torch.bfloat16][0]
        results.append({**cfg, **errs, "ok": ok})
        if not ok:
            raise AssertionError(f"study_{name}_fwd off the oracle: {results[-1]}")
    return results


def run(plans: Callable[[int, int, int], dict], name: str, profile: bool) -> list[dict]:
    """Times every plan ``plans(C, H, K) -> {label: launch}`` at the SW-T stages over DENSITIES
    (bf16, B = 128, N_rep = 4), each output checked first. profile: stage 1, density 0.3, a
    checked launch and three more per plan, in the plans' order (for ncu's --launch-skip)."""
    rows = []
    for C, H, K in STAGES[:1] if profile else STAGES:
        launches = plans(C, H, K)
        row = {"C_rep": C, "H": H, "K": K, "B": B, "dtype": "bfloat16", "plans": [v.plan() for v in launches.values()]}
        for density in (0.3,) if profile else DENSITIES:
            x, w, perms, tables, active, act8, cell, ref = stage_case(C, H, K, density)
            for P, launch in launches.items():
                outs = launch.forward(x, w, tables, act8, poison=True)
                err = max(_rel(o[:4], r.double()) for o, r in zip(outs, ref))
                if not err <= TOL[torch.bfloat16][0]:
                    raise AssertionError(f"study_{name}_fwd P={P} stage {C}@{H}: relative L2 error {err:.2e}")
                if profile:
                    for _ in range(3):
                        launch.forward(x, w, tables, act8)
                    continue
                cell[f"{name}_fwd_ms_P{P}"] = bench(lambda launch=launch: launch.forward(x, w, tables, act8))
                if density in (0.3, 1.0):
                    cell[f"{name}_fwd_graph_ms_P{P}"] = graph_ms(
                        lambda launch=launch: launch.forward(x, w, tables, act8)
                    )
            if not profile and density in (0.3, 1.0):
                with torch.no_grad():
                    cell["default_fwd_ms"] = bench(lambda: swc.shift_wise_conv_cuda(x, w, *perms, K, active))
                    cell["default_fwd_graph_ms"] = graph_ms(lambda: swc.shift_wise_conv_cuda(x, w, *perms, K, active))
            row[f"d{density}"] = cell
        rows.append(row)
    torch.cuda.synchronize()
    return rows


def main(launch_class, plans: Callable[[int, int, int], dict], name: str, rng_seed: int, seed0: int) -> None:
    """The command line of bench/sparse_<name>_study.py: checks, timings, JSON, table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--profile", action="store_true", help="stage 1, density 0.3, a few launches (for ncu)")
    args = ap.parse_args()
    t0 = time.time()
    if args.profile:
        run(plans, name, True)
        return
    checks = check(launch_class, name, rng_seed, seed0)
    print(f"oracle checks: {sum(c['ok'] for c in checks)}/{len(checks)} passed", flush=True)
    rows = run(plans, name, False)
    write_results(
        f"sparse_{name}_study",
        f"PYTHONPATH=src python bench/sparse_{name}_study.py",
        "bf16, forward only; triton.testing.do_bench median, warmup 25 ms, rep 100 ms; study outputs from "
        "torch.empty_like (NaN-filled only for the checks); default op under torch.no_grad",
        {"checks": checks, "passed": sum(c["ok"] for c in checks), "rows": rows, "wall_s": time.time() - t0},
        args.out,
    )
    for r in rows:
        print(f"{r['C_rep']}@{r['H']} plans:", r["plans"])
    print(f"bf16 forward ms: default op at density 1.0 / 0.3; study_{name}_fwd at its best P per density; ratio:")
    print("study at 0.3 over the default op at 1.0, eager and in GPU time (CUDA graphs)")
    print(f"{'stage':>7} | {'default':>11} | " + " | ".join(f"d={d:<4}" + " " * 6 for d in DENSITIES) + " | ratio")

    def best(cell):
        k = min((k for k in cell if k.startswith(f"{name}_fwd_ms")), key=lambda k: cell[k])
        return cell[k], k.split("P")[-1]

    for r in rows:
        cells = " | ".join("{:6.3f} (P{:>2})".format(*best(r[f"d{d}"])) for d in DENSITIES)
        d1, d3 = r["d1.0"]["default_fwd_ms"], r["d0.3"]["default_fwd_ms"]
        g1 = r["d1.0"]["default_fwd_graph_ms"]
        g3 = min(v for k, v in r["d0.3"].items() if k.startswith(f"{name}_fwd_graph_ms"))
        print(
            f"{r['C_rep']:>4}@{r['H']:<2} | {d1:5.3f}/{d3:5.3f} | {cells} | {best(r['d0.3'])[0] / d1:.2f}"
            f" (GPU time: {g3:.3f} / {g1:.3f} = {g3 / g1:.2f})"
        )


def stage_plans(launch_class, keep: Callable[[int, int, object], bool]) -> Callable[[int, int, int], dict]:
    """plans(C, H, K): the launches for P in PS that fit and that ``keep(P, H, launch)`` accepts."""

    def plans(C: int, H: int, K: int) -> dict:
        out = {}
        for P in PS:
            launch = launch_class(B, C, H, H, K_SMALL, K, N_REP, P)
            if launch.fits and keep(P, H, launch):
                out[P] = launch
        return out

    return plans
