"""Per-step learning-rate schedules (stepped every optimizer step, not every epoch)."""

from __future__ import annotations

import math

import torch


class WarmupCosineLambda:
    """lr(step) = base_lr * factor(step): linear warmup from ``warmup_start_lr`` to ``base_lr``
    over ``warmup_steps`` optimizer steps, then half-cosine from ``base_lr`` to ``min_lr`` at
    ``total_steps``. A callable object (not a closure) so LambdaLR can checkpoint it."""

    def __init__(
        self, base_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0, warmup_start_lr: float = 0.0
    ):
        self.base_lr = float(base_lr)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps))
        self.min_lr, self.warmup_start_lr = float(min_lr), float(warmup_start_lr)

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start_lr + (self.base_lr - self.warmup_start_lr) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def __call__(self, step: int) -> float:
        return self.lr(step) / self.base_lr if self.base_lr else 0.0


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: float,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
    min_lr: float = 0.0,
    warmup_start_lr: float = 0.0,
):
    """Build a per-step LambdaLR. ``warmup_steps`` (if given) wins over ``warmup_epochs``.
    Each param group keeps its own base lr; ``min_lr``/``warmup_start_lr`` are absolute and
    scaled per group by ``group_lr / first_group_lr``."""
    if warmup_steps is None:
        warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    lambdas = []
    ref = optimizer.param_groups[0]["lr"]
    for g in optimizer.param_groups:
        scale = g["lr"] / ref if ref else 1.0
        lambdas.append(WarmupCosineLambda(g["lr"], total_steps, warmup_steps, min_lr * scale, warmup_start_lr * scale))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def constant(optimizer: torch.optim.Optimizer, total_steps: int = 0, steps_per_epoch: float = 0.0):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
