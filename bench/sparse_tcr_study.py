"""Study for the density figure of the CUDA op: a sparse forward with its responses on the tensor
cores and its gathers on the CUDA cores (GPU).

    PYTHONPATH=src python bench/sparse_tcr_study.py [--out DIR] [--profile]

``study_tcr_fwd`` (bench/sparse_tcr_study.cu) computes, per active kernel, the response on the
tensor cores (fp32, stored row-major and transposed) and adds its N_rep shifted copies per branch
with aligned 16-byte loads on the CUDA cores; the identity branch is one response of the folded
identity kernel. Its plane geometry is compiled in, one module per plane shape and images per block.

The shared harness (bench/forward_study.py) checks it against the float64 PyTorch oracle on random
shapes and times it in bf16 at the four SW-T stage shapes over densities and images-per-block
counts, next to the default op's forward.
Writes sparse_tcr_study_<GPU>.json to bench/results/ (and to --out) and prints a table last.
--profile: stage 1, density 0.3, a checked launch and three more of each plan, P = 1 first (for
ncu: ``--launch-skip 1 --launch-count 1`` profiles P = 1).
"""

from __future__ import annotations

import math

import forward_study
from op_bench import K_SMALL, N_REP, B
from sparse_tile_study import _bf16_pitch, _round_up

from swconv.ops import cuda as swc

SOURCE = forward_study.study_source("sparse_tcr_study.cu")
REGS_PER_THREAD = 96  # registers per thread the kernel may always use (fewer spill at stage 1)


def geometry(H: int, W: int, ks: int, P: int) -> dict:
    """The kernel's compile-time layout (see the .cu header) for H x W planes, P images per block:
    3 zero lines beyond the response's support [-r, n + r) on either side, and the lines the
    response tiles write."""
    r = ks // 2
    Hp, Wp = _round_up(H, 4), _round_up(W, 4)
    nlt, nct = math.ceil((H + 2 * r) / 16), math.ceil((W + 2 * r) / 8)
    rv = max(H + 2 * r + 6, 16 * nlt + 3, Hp + r + 3)
    rh = max(W + 2 * r + 6, 8 * nct + 3, Wp + r + 3)
    pv = _round_up(max(8 * nct - r + 4, Wp + 4), 4)
    while pv % 32 not in (8, 24):  # row-major 16-byte gathers and the fragment stores: few conflicts
        pv += 4
    ph = _round_up(max(16 * nlt - r + 4, Hp + 4), 4)
    while ph % 8 != 4:  # transposed fragment stores: 32 distinct banks
        ph += 4
    warps = math.ceil(P * (Hp // 4) * (Wp // 4) / 32)
    return dict(
        KS=ks, H=H, W=W, P=P, NLT=nlt, NCT=nct, PX=_bf16_pitch(8 * nct + 8), XR=16 * nlt + 2 * r,
        LOV=r + 3, RV=rv, PV=pv, LOH=r + 3, RH=rh, PH=ph, NWARPS=warps,
    )  # fmt: skip


def smem_bytes(g: dict, nk: int) -> int:
    """Dynamic shared memory of study_tcr_fwd (mirrors ``carve``)."""
    ks, P = g["KS"], g["P"]
    planes = 4 * P * (g["RV"] * g["PV"] + g["RH"] * g["PH"]) + 2 * _round_up(P * g["XR"] * g["PX"], 8)
    tables = 8 * (nk + 1) * ks * 32 + 32 * nk + 4 * nk * ks * ks + 4 * 8 * nk + 4 * nk + 4 * ks * ks + 4 * nk + nk
    return planes + tables


class TcrLaunch(forward_study.StudyLaunch):
    """study_tcr_fwd compiled and planned for one shape; ``forward`` as the op's (no autograd)."""

    def __init__(self, Bn: int, C: int, H: int, W: int, ks: int, K: int, nrep: int, P: int, maxreg: int = 0):
        nk = math.ceil(K / ks)
        self.g = geometry(H, W, ks, P)
        smem, threads = smem_bytes(self.g, nk), 32 * self.g["NWARPS"]
        by_smem = max(1, min(swc._blocks_by_smem(smem, swc._smem_per_sm(0)), 2048 // threads, 32))
        # the register cap that lets the shared-memory limit decide residency, at least REGS_PER_THREAD
        warps_per_scheduler = math.ceil(by_smem * threads / 128)
        maxreg = maxreg or max(REGS_PER_THREAD, min(168, 16384 // (32 * warps_per_scheduler) // 8 * 8))
        defines = {**self.g, "MAXREG": maxreg}
        self.build(SOURCE, "study_tcr_fwd", defines, smem, threads, (C, (Bn + P - 1) // P), (Bn, C, nk, nrep))

    def plan(self) -> dict:
        g = self.g
        return dict(P=g["P"], threads=self.threads, smem=self.smem, regs=self.regs, blocks_per_sm=self.blocks_per_sm)


def _plans(C: int, H: int, K: int) -> dict:
    launches = forward_study.stage_plans(
        TcrLaunch, lambda P, H, launch: launch.threads <= 512 and (P == 1 or P * H <= 128)
    )(C, H, K)
    if H == 56:  # 80 registers: 3 blocks of 7 warps per SM (up to 6 warps per scheduler need <= 85)
        launches["1r80"] = TcrLaunch(B, C, H, H, K_SMALL, K, N_REP, 1, maxreg=80)
    return launches


if __name__ == "__main__":
    forward_study.main(TcrLaunch, _plans, "tcr", rng_seed=2027, seed0=300)
