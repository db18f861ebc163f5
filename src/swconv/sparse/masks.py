"""Mask algorithms for kernel-granular ("rep_coarse") dynamic sparsity (SPEC §3).

Plain functions on tensors, no Lightning. Conventions:
- the unit is one small k x k kernel; a layer's mask is a bool/float tensor of shape
  ``(n_path, rep*nk)`` (the ``kernel_mask`` buffer of ``ShiftWiseConv2d``), row ``q`` = path ``q``;
- all random choices take an explicit ``torch.Generator`` (CPU); nothing touches global RNG state;
- ties are broken by index (stable sort), so identical inputs give identical masks on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------- discovery
def is_sw_layer(m: nn.Module) -> bool:
    """Duck-typed: a module with a ``kernel_mask`` buffer and ``paths`` (the SW layer contract)."""
    return isinstance(getattr(m, "kernel_mask", None), Tensor) and isinstance(getattr(m, "paths", None), nn.ModuleList)


def find_sw_layers(model: nn.Module, include: str | None = None) -> list[tuple[str, nn.Module]]:
    """All SW layers of ``model`` in ``named_modules`` order, optionally filtered by a regex on the name."""
    import re

    pat = re.compile(include) if include else None
    out = []
    for name, m in model.named_modules():
        if is_sw_layer(m) and (pat is None or pat.search(name)):
            out.append((name, m))
    return out


def match_shadow_layers(
    shadows: Sequence[tuple[str, nn.Module]], owners: Sequence[tuple[str, nn.Module]]
) -> list[tuple[nn.Module, nn.Module]]:
    """Pair each shadow SW layer (e.g. ``ema.module.stages.0.blocks.1.conv``) with the trained layer
    sharing the longest dotted name suffix (``net.stages.0.blocks.1.conv``) and the same mask shape.
    Ambiguous or unmatched shadows are left out."""
    out = []
    for sname, s in shadows:
        sp = sname.split(".")
        best, best_len, tie = None, 0, False
        for oname, o in owners:
            if tuple(o.kernel_mask.shape) != tuple(s.kernel_mask.shape):
                continue
            op = oname.split(".")
            k = 0
            while k < min(len(sp), len(op)) and sp[-1 - k] == op[-1 - k]:
                k += 1
            if k > best_len:
                best, best_len, tie = o, k, False
            elif k == best_len and k > 0:
                tie = True
        if best is not None and not tie:
            out.append((s, best))
    return out


def path_weights(layer: nn.Module) -> list[Tensor]:
    return [p.weight for p in layer.paths]


# --------------------------------------------------------------------------- scores
def kernel_magnitude(weight: Tensor) -> Tensor:
    """Sum of |w| over each small kernel: ``(n, 1, k, k) -> (n,)`` in float32 (SPEC §3.4)."""
    return weight.detach().abs().float().flatten(1).sum(1)


def snip_kernel_scores(weight: Tensor, grad: Tensor) -> Tensor:
    """SNIP score per small kernel: mean over the k x k window of |w * g| (SPEC §3.2)."""
    return (weight.detach().float() * grad.detach().float()).abs().flatten(1).mean(1)


def kernel_grad_magnitude(grad: Tensor) -> Tensor:
    """Growth score for gradient regrowth: sum of |g| over each small kernel."""
    return grad.detach().abs().float().flatten(1).sum(1)


# --------------------------------------------------------------------------- layer densities
def snip_layer_densities(scores: Sequence[Tensor], density: float) -> list[float]:
    """Layer densities from a global SNIP threshold (SPEC §3.2).

    ``scores[i]`` holds every score of layer i (all paths concatenated). A global threshold keeps
    ``int(density * count)`` scores; layer sparsity = fraction of its scores <= threshold.
    """
    flat = torch.cat([s.detach().float().flatten().cpu() for s in scores])
    n_keep = int(density * flat.numel())
    if n_keep <= 0:
        return [0.0 for _ in scores]
    if n_keep >= flat.numel():
        return [1.0 for _ in scores]
    threshold = torch.topk(flat, n_keep, sorted=True).values[-1]
    out = []
    for s in scores:
        s = s.detach().float().flatten().cpu()
        out.append(1.0 - float((s <= threshold).float().mean()))
    return out


def uniform_layer_densities(n_layers: int, density: float) -> list[float]:
    return [float(density)] * n_layers


def erk_layer_densities(
    shapes: Sequence[Sequence[int]], counts: Sequence[int], density: float, power_scale: float = 1.0
) -> list[float]:
    """Erdos-Renyi-Kernel densities (RigL), dense layers capped at 1.

    ``shapes[i]`` = weight shape of one path of layer i (``(rep*nk, 1, k, k)``), ``counts[i]`` = number
    of parameters the layer's masks cover (all paths). Returns per-layer densities whose
    parameter-weighted mean equals ``density`` (unless every layer is capped).
    """
    raw = [(sum(s) / math.prod(s)) ** power_scale for s in shapes]
    total = float(sum(counts))
    dense: set[int] = set()
    while True:
        budget = density * total - sum(counts[i] for i in dense)
        denom = sum(raw[i] * counts[i] for i in range(len(raw)) if i not in dense)
        if denom <= 0:
            eps = 0.0
            break
        eps = budget / denom
        over = [i for i in range(len(raw)) if i not in dense and eps * raw[i] > 1.0]
        if not over:
            break
        dense.update(over)
    return [1.0 if i in dense else max(0.0, min(1.0, eps * raw[i])) for i in range(len(raw))]


# --------------------------------------------------------------------------- masks
def random_mask(n: int, density: float, generator: torch.Generator, placement: str = "bernoulli") -> Tensor:
    """Random placement at a given density.

    ``bernoulli`` (reference): each kernel kept independently with probability ``density``.
    ``exact``: exactly ``round(density * n)`` kernels kept, chosen uniformly.
    """
    if placement == "bernoulli":
        return torch.rand(n, generator=generator) < density
    if placement == "exact":
        k = int(round(density * n))
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=generator)[:k]] = True
        return mask
    raise ValueError(f"unknown placement {placement!r}")


def num_to_prune(n_active: int, rate: float) -> int:
    return int(math.ceil(rate * n_active))


def magnitude_prune(mask: Tensor, score: Tensor, rate: float) -> tuple[Tensor, int]:
    """Remove ``ceil(rate * active)`` active kernels with the lowest score (SPEC §3.4).

    ``mask`` bool (n,), ``score`` (n,). Ties broken by lower index first. Returns (new_mask, removed).
    """
    mask = mask.bool().cpu()
    score = score.detach().float().cpu()
    active = mask.nonzero().flatten()
    n_remove = min(num_to_prune(active.numel(), rate), active.numel())
    new = mask.clone()
    if n_remove > 0:
        order = torch.sort(score[active], stable=True).indices
        new[active[order[:n_remove]]] = False
    return new, n_remove


def random_regrow(mask: Tensor, n_removed: int, generator: torch.Generator) -> Tensor:
    """Reference random growth: each inactive kernel (incl. just pruned) becomes active with probability
    ``floor(n_removed) / #inactive``; the regrowth count is random with expectation ``n_removed``."""
    mask = mask.bool().cpu()
    n_zero = int((~mask).sum())
    if n_zero == 0 or n_removed <= 0:
        return mask.clone()
    p = math.floor(n_removed) / n_zero
    draw = torch.rand(mask.numel(), generator=generator) < p
    return mask | (draw & ~mask)


def gradient_regrow(mask: Tensor, grad_score: Tensor, n_grow: int) -> Tensor:
    """RigL-style growth: activate the ``n_grow`` inactive kernels with the largest gradient score
    (ties by lower index)."""
    mask = mask.bool().cpu()
    inactive = (~mask).nonzero().flatten()
    n_grow = min(int(n_grow), inactive.numel())
    new = mask.clone()
    if n_grow > 0:
        g = grad_score.detach().float().cpu()[inactive]
        order = torch.sort(-g, stable=True).indices
        new[inactive[order[:n_grow]]] = True
    return new


# --------------------------------------------------------------------------- RNG and checksums
def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def round_seed(seed: int, round_idx: int) -> int:
    """Deterministic 63-bit seed for round ``round_idx`` (round 0 = initialisation)."""
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(round_idx) & _MASK64)) >> 1


def round_generator(seed: int, round_idx: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(round_seed(seed, round_idx))
    return g


def masks_checksum(masks: Iterable[Tensor]) -> int:
    """Cheap order- and position-sensitive checksum of a list of masks (a Python int < 2**62).

    Computed on the masks' device; only one scalar goes to the host."""
    total = None
    offset = 0
    for m in masks:
        flat = (m.detach().flatten() != 0).to(torch.int64)
        idx = torch.arange(offset, offset + flat.numel(), device=flat.device, dtype=torch.int64)
        w = (idx * 2654435761 + 97) % 2147483647 + 1
        s = (flat * w).sum() + flat.sum() * 1000003
        total = s if total is None else total + s
        offset += flat.numel()
    if total is None:
        return 0
    return int(total.item()) % (1 << 62)
