"""Parameter groups (SPEC §7): no weight decay on 1-D parameters (norm weights/biases, layer-scale
gamma) and on names ending in ``.bias``; everything else (including 4-D GRN gamma/beta) decays."""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn


def param_groups_weight_decay(model: nn.Module, weight_decay: float, no_decay_names: Iterable[str] = ()) -> list[dict]:
    skip = set(no_decay_names)
    hasattr(model, "no_weight_decay") and skip.update(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "name": "decay"})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups
