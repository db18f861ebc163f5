"""Overhead of the sparsity callback on an SW-T training step (GPU, bf16 autocast).

    PYTHONPATH=src python bench/sparsity_overhead.py --out DIR [--batch 64] [--steps 30]

Measures, in one process, with the same model and optimizer (AdamW):
  1. step time without the callback: forward (bf16 autocast) + backward + optimizer.step;
  2. step time with the callback's per-step work (mask apply after every real step), interleaved
     A/B trials, medians;
  3. the per-step work alone (one fused ``_foreach_mul_`` over all SW weights), CUDA events;
  4. one prune/regrow round (magnitudes, one host transfer, mask update, copy back), amortised
     over ``--update-frequency`` (100) steps.
Overhead = (per-step work + round / update_frequency) / step time; acceptance: <= 2 %.
Writes ``sparsity_overhead.json`` to --out and (on CUDA) to bench/results/. No Hydra, no Lightning trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import timm  # noqa: E402

import swconv.models  # noqa: E402,F401  (registers the models with timm)
from swconv.sparse.callback import SparsityCallback  # noqa: E402
from swconv.sparse.masks import find_sw_layers  # noqa: E402


def versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for m in ("cupy", "timm", "lightning", "numpy"):
        try:
            v[m] = __import__(m).__version__
        except Exception as exc:  # noqa: BLE001
            v[m] = f"missing ({type(exc).__name__})"
    return v


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, n, dev) -> float:
    """Mean seconds per call over n calls (synchronised before and after)."""
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(dev)
    return (time.perf_counter() - t0) / n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--model", default="shiftwise_v2_tiny")
    p.add_argument("--kernel-sizes", default="51,49,47,13,3")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="timed steps per A/B trial")
    p.add_argument("--trials", type=int, default=5, help="interleaved A/B trials")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10, help="timed prune/regrow rounds")
    p.add_argument("--update-frequency", type=int, default=100)
    p.add_argument("--density", type=float, default=0.7)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--impl", default=None, help="SWCONV_IMPL override (auto/torch/cuda/...)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    if a.impl:
        os.environ["SWCONV_IMPL"] = a.impl
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    ks = tuple(int(x) for x in a.kernel_sizes.split(",")) if a.kernel_sizes else None
    kw = {"num_classes": a.num_classes, "in_chans": a.in_chans}
    if ks:
        kw["kernel_sizes"] = ks
    model = timm.create_model(a.model, **kw).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    layers = find_sw_layers(model)
    impls = sorted({getattr(m, "impl", "?") for _, m in layers})

    cb = SparsityCallback(
        density=a.density,
        init="uniform",
        update_frequency=a.update_frequency,
        total_steps=100 * a.update_frequency,
        verbose=False,
        log_densities=False,
        check_ranks=False,
        seed=0,
    )
    cb.initialize(None, model)  # masks written into the kernel_mask buffers, weights masked

    batch = a.batch
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")
    notes: list[str] = []
    x = y = None

    def make_batch(b):
        return (torch.randn(b, a.in_chans, a.img, a.img, device=dev), torch.randint(0, a.num_classes, (b,), device=dev))

    def train_step():
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    def train_step_sparse():
        train_step()
        cb.apply_masks()  # exactly the per-step work of the optimizer post-hook (no round)
        cb.step += 1

    # warm-up (cudnn autotune, CuPy compile, optimizer state); robust to OOM and to a failing
    # default operator path (falls back to the PyTorch formulation and records why)
    while True:
        try:
            x, y = make_batch(batch)
            for _ in range(a.warmup):
                train_step_sparse()
            sync(dev)
            break
        except torch.OutOfMemoryError:
            x = y = None
            opt.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            if batch <= 1:
                raise
            notes.append(f"OOM at batch {batch}, halving")
            batch //= 2
        except Exception as exc:  # noqa: BLE001
            if any(getattr(m, "impl", None) == "torch" for _, m in layers):
                raise
            notes.append(f"operator impl {impls} failed ({type(exc).__name__}: {exc}); using impl='torch'")
            for _, m in layers:
                m.impl = "torch"
            impls = ["torch"]
            opt.zero_grad(set_to_none=True)
        print(notes[-1], file=sys.stderr)
    cb.step = 0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    base, sparse = [], []
    for _ in range(a.trials):  # interleaved to cancel drift (clocks, thermals)
        base.append(timed(train_step, a.steps, dev))
        sparse.append(timed(train_step_sparse, a.steps, dev))
    t_base, t_sparse = statistics.median(base), statistics.median(sparse)

    # per-step work alone
    n_apply = 200
    t_apply = timed(cb.apply_masks, n_apply, dev)

    # rounds: one prune/regrow on the trained weights (restore masks afterwards: keep density)
    saved = [m.kernel_mask.clone() for _, m in layers]
    t_rounds = []
    for _ in range(a.rounds):
        cb.step = (cb.step // a.update_frequency + 1) * a.update_frequency
        sync(dev)
        t0 = time.perf_counter()
        cb.run_round()
        cb.apply_masks()
        sync(dev)
        t_rounds.append(time.perf_counter() - t0)
    with torch.no_grad():
        for (_, m), s in zip(layers, saved):
            m.kernel_mask.copy_(s)
    t_round = statistics.median(t_rounds)

    per_step = t_apply + t_round / a.update_frequency
    overhead = per_step / t_base
    ab_overhead = (t_sparse - t_base) / t_base + (t_round / a.update_frequency) / t_base
    res = {
        "benchmark": "sparsity_overhead",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "versions": versions(),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "config": {
            "model": a.model,
            "kernel_sizes": ks,
            "batch": batch,
            "img": a.img,
            "precision": a.precision,
            "impl": impls,
            "sw_layers": len(layers),
            "masked_weights": len(cb._weights),
            "density": a.density,
            "update_frequency": a.update_frequency,
            "steps": a.steps,
            "trials": a.trials,
        },
        "step_ms_without_callback": t_base * 1e3,
        "step_ms_with_callback_per_step_work": t_sparse * 1e3,
        "step_ms_trials": {"base": [t * 1e3 for t in base], "sparse": [t * 1e3 for t in sparse]},
        "mask_apply_ms": t_apply * 1e3,
        "round_ms_median": t_round * 1e3,
        "round_ms_all": [t * 1e3 for t in t_rounds],
        "amortised_ms_per_step": per_step * 1e3,
        "overhead_pct": 100 * overhead,
        "overhead_pct_ab": 100 * ab_overhead,
        "acceptance_pct": 2.0,
        "pass": overhead <= 0.02,
        "notes": notes,
        "peak_mem_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
    }
    outs = {a.out} | ({str(ROOT / "bench" / "results")} if dev.type == "cuda" else set())
    for out in sorted(outs):
        try:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "sparsity_overhead.json"), "w") as f:
                json.dump(res, f, indent=1)
        except OSError as exc:  # read-only results dir on some machines: keep going
            print(f"could not write to {out}: {exc}", file=sys.stderr)
    print(f"{res['device']} {a.model} B={batch} {a.img}px {a.precision} impl={impls}")
    print(
        f"step {t_base * 1e3:.2f} ms | with per-step mask apply {t_sparse * 1e3:.2f} ms | apply alone "
        f"{t_apply * 1e3:.3f} ms | round {t_round * 1e3:.1f} ms (/{a.update_frequency} = "
        f"{t_round / a.update_frequency * 1e3:.3f} ms)"
    )
    verdict = "PASS" if res["pass"] else "FAIL"
    print(f"overhead {100 * overhead:.3f} % (A/B {100 * ab_overhead:.2f} %) -> {verdict} (<= 2 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
