"""Small building blocks shared by the ShiftWise model families.

Where timm already has the exact block (channels-first LayerNorm, GRN, DropPath) it is used
directly; the squeeze-excite block is our own because the reference's reduction (C // 4, no
rounding to a multiple of 8) differs from ``timm.layers.SEModule``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from timm.layers.grn import GlobalResponseNorm
from torch import nn

from swconv.ops import ShiftWiseConv2d

__all__ = [
    "DropPath",
    "GlobalResponseNorm",
    "LayerNorm2d",
    "ShiftWiseNetMixin",
    "SqueezeExcite",
    "drop_path_rates",
    "init_weights",
    "merge_sw_paths",
    "sw_layers",
]


class SqueezeExcite(nn.Module):
    """Squeeze-excite as in the reference SW v2 block (SPEC §6.1).

    global average pool -> 1x1 conv C -> C//4 (bias) -> ReLU -> 1x1 conv C//4 -> C (bias)
    -> sigmoid -> rescale the input. Submodules are named ``down``/``up`` like the reference.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.down = nn.Conv2d(channels, hidden, 1, bias=True)
        self.up = nn.Conv2d(hidden, channels, 1, bias=True)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.up(self.act(self.down(s)))
        return x * torch.sigmoid(s)


def drop_path_rates(depths: tuple[int, ...] | list[int], drop_path_rate: float) -> list[list[float]]:
    """Stochastic-depth rate per block, linear from 0 to ``drop_path_rate`` over all blocks."""
    total = sum(depths)
    rates = torch.linspace(0, drop_path_rate, total).tolist() if total > 1 else [0.0] * total
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


def init_weights(module: nn.Module) -> None:
    """SPEC §6.1 init: trunc_normal(std=.02) on every Conv2d / Linear weight, zero biases.

    Applied with ``model.apply``; reaches the small convs of every SW layer (they are Conv2d).
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def sw_layers(model: nn.Module) -> Iterator[ShiftWiseConv2d]:
    """Every ``ShiftWiseConv2d`` inside ``model``."""
    for m in model.modules():
        if isinstance(m, ShiftWiseConv2d):
            yield m


def merge_sw_paths(model: nn.Module) -> nn.Module:
    """Fold the parallel small-kernel paths of every SW layer into one (exact, in place)."""
    for layer in sw_layers(model):
        layer.merge_paths()
    return model


class ShiftWiseNetMixin:
    """timm-style classifier API shared by the ShiftWise families.

    Expects ``stages`` (each with ``grad_checkpointing``), ``norm`` (LayerNorm over the pooled
    features), ``head_drop``, ``head`` and ``num_features`` on the model.
    """

    # ---- timm-friendly API -------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None and global_pool != "avg":
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            init_weights(self.head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean((2, 3)))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ---- SW specific -------------------------------------------------------------------------
    def sw_layers(self) -> list[ShiftWiseConv2d]:
        return list(sw_layers(self))

    @torch.no_grad()
    def merge_paths(self) -> nn.Module:
        """Fold the n_path small-kernel convs of every SW layer into one (exact; SPEC §5)."""
        merge_sw_paths(self)
        return self

    reparameterize = merge_paths
