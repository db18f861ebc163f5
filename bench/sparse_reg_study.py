"""Study for the density figure of the CUDA op: a sparse forward whose gathers run in registers (GPU).

    PYTHONPATH=src python bench/sparse_reg_study.py [--out DIR] [--profile]

``study_reg_fwd`` (bench/sparse_reg_study.cu): a thread owns one column and one row of an image.
Per active kernel it computes the response down its column in registers, adds the N_rep vertical
shifts there (a `switch` on the slot jumps to code compiled for that offset, so no gathered value
passes through shared memory), hands the column to the row owners through one shared plane, and
adds the horizontal shifts of its row the same way. The earlier CUDA-core designs were bound by
shared-memory bytes (kernels/README.md); this one moves 4 bytes per response value through
shared memory, plus the input.

The shared harness (bench/forward_study.py) checks it against the float64 PyTorch oracle on random
shapes and times it in bf16 at the four SW-T stage shapes over densities and images-per-block
counts, next to the default op's forward.
Writes sparse_reg_study_<GPU>.json to bench/results/ (and to --out) and prints a table last.
--profile: stage 1, density 0.3, a checked launch and three more of each plan, in the order of PS
(for ncu: ``--launch-skip 1 --launch-count 1`` profiles the first plan).
"""

from __future__ import annotations

import math

import forward_study
from op_bench import B
from sparse_tile_study import _round_up

SOURCE = forward_study.study_source("sparse_reg_study.cu")


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


class RegLaunch(forward_study.StudyLaunch):
    """study_reg_fwd compiled and planned for one shape; ``forward`` as the op's (no autograd)."""

    def __init__(self, Bn: int, C: int, H: int, W: int, ks: int, K: int, nrep: int, P: int):
        self.g = g = geometry(H, W, ks, K, P)
        smem, threads = 4 * (g["ZBT"] + g["XTOT"]), g["NT"]
        if self.build(SOURCE, "study_reg_fwd", g, smem, threads, (C, (Bn + P - 1) // P), (Bn, C, nrep)):
            self.local_bytes = self.fn.attributes["local_size_bytes"]

    def plan(self) -> dict:
        return dict(
            P=self.g["P"], threads=self.threads, smem=self.smem, regs=self.regs, local_bytes=self.local_bytes,
            blocks_per_sm=self.blocks_per_sm,
        )  # fmt: skip


def _keep(P: int, H: int, launch: RegLaunch) -> bool:
    return P * H <= 512 and B % P == 0 and launch.blocks_per_sm >= 1


if __name__ == "__main__":
    forward_study.main(RegLaunch, forward_study.stage_plans(RegLaunch, _keep), "reg", rng_seed=2028, seed0=400)
