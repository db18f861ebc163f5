"""How much of the tensor-core forward's Toeplitz work any density-0.3 mask can remove (CPU, computed).

    PYTHONPATH=src python bench/sparsity_pattern_bound.py [--density 0.3] [--out DIR]

The folded forward (kernels/shift_wise_tc.cu) multiplies 16 x 8 Toeplitz blocks of the cross
kernels; block d covers 23 long-axis taps, about 8 slots, and a kernel that skips all-zero blocks
saves only the blocks whose slots are empty in every rep group. For each SW-T stage this script
takes SPEC's seed-123 tables, weighs each block by how many (k-chunk, n-tile) pairs of the plane use
it (the loop of `tpass_nt`), and reports the fraction of that block work left over both branches:
- for the mask of each channel that removes the most work, found by trying every set of
  round(density * nk) active kernels (the bound: no mask at that density does better), and
- averaged over all such sets (a uniformly random mask, as SNIP + random regrowth give).
It also reports how many kernels must be pruned to empty one run of R consecutive slots of the
horizontal branch in all groups. Writes bench/results/sparsity_pattern_bound.json (and to --out).
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np
import torch
from op_bench import K_SMALL, N_REP, STAGES, block_slot_cover, save_results

from swconv.ops.cuda import tc_table_geo
from swconv.ops.tables import make_shift_tables


def block_work(width: int, nk: int, big_kernel: int, ks: int = K_SMALL) -> np.ndarray:
    """(nd,) how many (k-chunk, n-tile) pairs of a plane ``width`` columns wide multiply block d:
    the forward's tpass_nt issues one mma per pair with d = 2 * kc - nt in range."""
    dmin, nd = tc_table_geo(nk * ks, big_kernel // 2)
    work = np.zeros(nd)
    for nt in range(math.ceil(width / 8)):
        for kc in range(math.ceil(width / 16)):
            if 0 <= 2 * kc - nt - dmin < nd:
                work[2 * kc - nt - dmin] += 1
    return work


def work_left(active_sets: np.ndarray, perms: tuple[torch.Tensor, ...], channel: int, cover, work) -> np.ndarray:
    """Fraction of the block work of both branches left for each row of ``active_sets`` (n, nk)."""
    left = np.zeros(len(active_sets))
    for perm in perms:
        slot_on = np.zeros_like(active_sets)
        for g in range(perm.shape[0]):  # slot s of group g holds kernel perm[g, c, s]
            slot_on |= active_sets[:, perm[g, channel].numpy()]
        block_on = (slot_on[:, None, :] & cover[None]).any(2)
        left += (block_on * work).sum(1) / work.sum() / len(perms)
    return left


def kernels_to_empty_run(perm_h: torch.Tensor, run: int) -> np.ndarray:
    """For every (channel, first slot): the kernels that must be pruned so that ``run`` consecutive
    horizontal slots are empty in all groups."""
    n_rep, channels, nk = perm_h.shape
    counts = [
        len({int(perm_h[g, c, s + i]) for g in range(n_rep) for i in range(run)})
        for c in range(channels)
        for s in range(nk - run + 1)
    ]
    return np.array(counts)


def stage_bound(channels: int, width: int, big_kernel: int, density: float) -> dict:
    nk = math.ceil(big_kernel / K_SMALL)
    perm_h, perm_v, _ = make_shift_tables(channels, nk, N_REP)
    cover, work = block_slot_cover(nk, big_kernel).numpy(), block_work(width, nk, big_kernel)
    n_active = max(1, round(density * nk))
    sets = np.array(list(itertools.combinations(range(nk), n_active)))
    active_sets = np.zeros((len(sets), nk), dtype=bool)
    active_sets[np.arange(len(sets))[:, None], sets] = True
    best, mean = [], []
    for c in range(channels):
        left = work_left(active_sets, (perm_h, perm_v), c, cover, work)
        best.append(left.min())
        mean.append(left.mean())
    runs = {}
    for run in (2, 4, 6, 8):
        if run <= nk:
            need = kernels_to_empty_run(perm_h, run)
            runs[str(run)] = {"kernels_to_prune_mean": float(need.mean()), "kernels_to_prune_min": int(need.min())}
    return {
        "C_rep": channels,
        "H": width,
        "K": big_kernel,
        "nk": nk,
        "active_kernels": n_active,
        "work_left_best_mask_mean": float(np.mean(best)),
        "work_left_best_mask_min": float(np.min(best)),
        "work_left_random_mask": float(np.mean(mean)),
        "empty_horizontal_run": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--density", type=float, default=0.3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = [stage_bound(C, H, K, args.density) for C, H, K in STAGES]
    command = "PYTHONPATH=src python bench/sparsity_pattern_bound.py" + (
        f" --density {args.density}" if args.density != 0.3 else ""
    )
    report = {
        "computed": "on the CPU from SPEC's seed-123 tables; no GPU timing",
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "density": args.density,
        "N_rep": N_REP,
        "k": K_SMALL,
        "stages": rows,
    }
    save_results("sparsity_pattern_bound.json", report, args.out)
    print("stage  active  work left: best mask (mean / min over channels)  random mask")
    for i, r in enumerate(rows, 1):
        print(
            f"{i:5d}  {r['active_kernels']:2d}/{r['nk']:<3d} {r['work_left_best_mask_mean']:.2f} / "
            f"{r['work_left_best_mask_min']:.2f}{'':30s}{r['work_left_random_mask']:.2f}"
        )


if __name__ == "__main__":
    main()
