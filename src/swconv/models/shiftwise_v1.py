"""ShiftWise v1: SLaK / ConvNeXt macro layout with shift-wise large kernels (SPEC §6.2).

Registered with timm (``import swconv`` first): ``shiftwise_v1_tiny``, ``shiftwise_v1_small``,
``shiftwise_v1_base``; builder keyword arguments override the preset.

Layout: stem conv4x4 s4 + channels-first LN; downsample (stages 1..3) channels-first LN +
conv2x2 s2; block = SW conv (k = 5, "v1" ghost split) -> LayerNorm (channels last) -> Linear 4C
-> GELU -> Linear C -> layer scale -> drop path -> + input; head = global average pool ->
LayerNorm -> Linear. No SE, no GRN, no BN outside the SW layer.

State-dict layout: ``stem.{0,1}``, ``stages.i.downsample.{0,1}``, ``stages.i.blocks.j.{conv,
norm, pwconv1, pwconv2, gamma}``, ``norm``, ``head``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

from swconv.ops import ShiftWiseConv2d

from .layers import DropPath, LayerNorm2d, ShiftWiseNetMixin, Stage, create_sw_model, default_cfg

__all__ = ["ShiftWiseV1", "ShiftWiseV1Block", "ShiftWiseV1Stage"]


class ShiftWiseV1Block(nn.Module):
    """SW conv -> LN (channels last) -> Linear 4C -> GELU -> Linear C -> layer scale -> drop path
    -> + input (ConvNeXt block with the depthwise conv replaced)."""

    def __init__(
        self,
        dim: int,
        big_kernel: int,
        small_kernel: int = 5,
        ghost_ratio: float = 0.23,
        n_path: int = 2,
        n_rep: int = 4,
        drop_path: float = 0.0,
        layer_scale_init: float | None = 1e-6,
        mlp_ratio: int = 4,
        ghost_split: str = "v1",
        impl: str = "auto",
    ) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.conv = ShiftWiseConv2d(
            dim,
            big_kernel,
            small_kernel,
            ghost_ratio=ghost_ratio,
            n_path=n_path,
            n_rep=n_rep,
            ghost_split=ghost_split,
            impl=impl,
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(hidden, dim)
        if layer_scale_init:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        else:
            self.gamma = None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv(x).permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        if self.gamma is not None:
            x = x * self.gamma
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


class ShiftWiseV1Stage(Stage):
    """Optional downsample (channels-first LN + conv2x2 s2) followed by ``depth`` blocks."""

    def __init__(
        self, in_dim: int, dim: int, depth: int, downsample: bool, drop_paths: Sequence[float], **block_kw
    ) -> None:
        if downsample:
            down = nn.Sequential(LayerNorm2d(in_dim, eps=1e-6), nn.Conv2d(in_dim, dim, 2, stride=2))
        else:
            down = nn.Identity()
        super().__init__(down, [ShiftWiseV1Block(dim, drop_path=dp, **block_kw) for dp in drop_paths])
        assert len(self.blocks) == depth


class ShiftWiseV1(ShiftWiseNetMixin, nn.Module):
    """ShiftWise v1 classifier (SPEC §6.2). Arguments as ``ShiftWiseV2`` (no ``stem_stride``:
    the stem is the ConvNeXt patchify conv4x4 s4); ``kernel_sizes`` default (51, 49, 47, 13, 5)."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        kernel_sizes: Sequence[int] = (51, 49, 47, 13, 5),
        ghost_ratio: float = 0.23,
        n_path: int = 2,
        n_rep: int = 4,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = 1e-6,
        head_init_scale: float = 1.0,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        ghost_split: str = "v1",
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self._init_config(in_chans, num_classes, depths, dims, kernel_sizes, global_pool, drop_rate)

        self.stem = nn.Sequential(nn.Conv2d(in_chans, self.dims[0], 4, stride=4), LayerNorm2d(self.dims[0], eps=1e-6))
        self._build_stages(
            ShiftWiseV1Stage,
            4,
            drop_path_rate,
            ghost_ratio=ghost_ratio,
            n_path=n_path,
            n_rep=n_rep,
            layer_scale_init=layer_scale_init,
            ghost_split=ghost_split,
            impl=impl,
        )
        self._build_head(num_classes, drop_rate, head_init_scale)


default_cfgs = generate_default_cfgs(
    {"shiftwise_v1_tiny": default_cfg(), "shiftwise_v1_small": default_cfg(), "shiftwise_v1_base": default_cfg()}
)

PRESETS: dict[str, dict] = {
    "shiftwise_v1_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "shiftwise_v1_small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "shiftwise_v1_base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
}


def _create(variant: str, pretrained: bool = False, **kwargs) -> ShiftWiseV1:
    return create_sw_model(ShiftWiseV1, variant, pretrained, PRESETS, **kwargs)


@register_model
def shiftwise_v1_tiny(pretrained: bool = False, **kwargs) -> ShiftWiseV1:
    return _create("shiftwise_v1_tiny", pretrained, **kwargs)


@register_model
def shiftwise_v1_small(pretrained: bool = False, **kwargs) -> ShiftWiseV1:
    return _create("shiftwise_v1_small", pretrained, **kwargs)


@register_model
def shiftwise_v1_base(pretrained: bool = False, **kwargs) -> ShiftWiseV1:
    return _create("shiftwise_v1_base", pretrained, **kwargs)
