"""Prune-rate schedules (SPEC §3.4).

The reference anneals the prune rate with a cosine from ``init_rate`` to ``final_rate`` over all
optimizer steps and steps it once per optimizer step; the rate used at a round is the one after
``t`` completed optimizer steps. The schedule here is a pure function of ``t`` so a resume only
needs the step counter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineDecay:
    init_rate: float = 0.3
    final_rate: float = 0.005
    total_steps: int = 1

    def __call__(self, t: int) -> float:
        T = max(int(self.total_steps), 1)
        t = min(max(int(t), 0), T)
        return self.final_rate + 0.5 * (self.init_rate - self.final_rate) * (1.0 + math.cos(math.pi * t / T))


@dataclass(frozen=True)
class ConstantRate:
    init_rate: float = 0.3
    final_rate: float = 0.3  # unused; same signature as CosineDecay
    total_steps: int = 1

    def __call__(self, t: int) -> float:
        return float(self.init_rate)


SCHEDULES = {"cosine": CosineDecay, "constant": ConstantRate}


def make_schedule(name: str, init_rate: float, final_rate: float, total_steps: int):
    try:
        cls = SCHEDULES[name]
    except KeyError as e:
        raise ValueError(f"unknown prune-rate schedule {name!r}; choose from {sorted(SCHEDULES)}") from e
    return cls(init_rate=init_rate, final_rate=final_rate, total_steps=total_steps)
