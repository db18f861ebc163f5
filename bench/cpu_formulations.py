"""CPU timing of the two PyTorch formulations of the shift-wise operator at SW-T stage shapes.

python bench/cpu_formulations.py [--batch 8] [--out bench/results/cpu_formulations.json]
"""

import argparse
import json
import os
import platform
import sys
import time

import torch

from swconv.ops import make_shift_tables, num_slots, shift_wise_conv

# (C_rep, H=W, K) of SW-T stages 1-4 with k = 3, N_rep = 4
STAGES = [(60, 56, 51), (122, 28, 49), (246, 14, 47), (492, 7, 13)]


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stages", type=int, nargs="*", default=[1, 2, 3, 4])
    parser.add_argument("--out", default="bench/results/cpu_formulations.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for stage in args.stages:
        channels, size, big = STAGES[stage - 1]
        nk = num_slots(big, 3)
        tables = make_shift_tables(channels, nk, 4)
        x = torch.randn(args.batch, channels, size, size, requires_grad=True)
        w = torch.randn(channels * nk, 1, 3, 3, requires_grad=True)
        for impl in ("torch_dense", "torch_shift"):

            def fwd():
                with torch.no_grad():
                    shift_wise_conv(x, w, *tables, big, impl=impl)

            def fwd_bwd():
                out = shift_wise_conv(x, w, *tables, big, impl=impl)
                sum(o.sum() for o in out).backward()

            row = dict(stage=stage, impl=impl, batch=args.batch, channels=channels, size=size, big_kernel=big)
            row["forward_ms"] = 1e3 * median_time(fwd, args.repeats)
            row["forward_backward_ms"] = 1e3 * median_time(fwd_bwd, args.repeats)
            rows.append(row)
            print(
                f"stage {stage} {impl:12s} fwd {row['forward_ms']:9.1f} ms"
                f"   fwd+bwd {row['forward_backward_ms']:9.1f} ms"
            )
    report = dict(
        command=" ".join([os.path.basename(sys.executable)] + sys.argv),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        results=rows,
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
