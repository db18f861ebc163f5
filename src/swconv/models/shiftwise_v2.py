"""ShiftWise v2: UniRepLKNet-T macro layout with shift-wise large kernels (SPEC §6.1).

Registered with timm (``import swconv`` first): ``shiftwise_v2_pico`` (small images, see
docs/models.md), ``shiftwise_v2_tiny``, ``shiftwise_v2_small``, ``shiftwise_v2_base``. Builder
keyword arguments override the preset, e.g.
``timm.create_model("shiftwise_v2_tiny", kernel_sizes=(51, 49, 47, 13, 3), num_classes=10)``.

State-dict layout (reference names in brackets, see ``swconv.models.convert``)::

    stem.{0,1,3,4}                       [downsample_layers.0.{0,1,3,4}]
    stages.i.downsample.{0,1}  (i >= 1)  [downsample_layers.i.{0,1}]
    stages.i.blocks.j.conv               ShiftWiseConv2d [stages.i.j.large_kernel]
    stages.i.blocks.j.norm               BatchNorm2d after the SW conv
    stages.i.blocks.j.se.{down,up}       squeeze-excite
    stages.i.blocks.j.pwconv1            Linear C -> 4C [pwconv1.1]
    stages.i.blocks.j.grn                GRN (weight/bias (4C,)) [act.1.gamma/beta (1,1,1,4C)]
    stages.i.blocks.j.pwconv2            Linear 4C -> C, no bias [pwconv2.0]
    stages.i.blocks.j.norm2              BatchNorm2d [pwconv2.2]
    stages.i.blocks.j.gamma              layer scale
    norm, head                           final LayerNorm and classifier
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

from swconv.ops import ShiftWiseConv2d

from .layers import (
    DropPath,
    GlobalResponseNorm,
    LayerNorm2d,
    ShiftWiseNetMixin,
    SqueezeExcite,
    Stage,
    create_sw_model,
    default_cfg,
)

__all__ = ["ShiftWiseV2", "ShiftWiseV2Block", "ShiftWiseV2Stage"]


class ShiftWiseV2Block(nn.Module):
    """SW conv -> BN -> SE -> Linear 4C -> GELU -> GRN -> Linear C (no bias) -> BN -> layer scale
    -> drop path -> + input."""

    def __init__(
        self,
        dim: int,
        big_kernel: int,
        small_kernel: int = 3,
        ghost_ratio: float = 0.23,
        n_path: int = 2,
        n_rep: int = 4,
        drop_path: float = 0.0,
        layer_scale_init: float | None = 1e-6,
        mlp_ratio: int = 4,
        ghost_split: str = "v2",
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
        self.norm = nn.BatchNorm2d(dim)
        self.se = SqueezeExcite(dim, reduction=4)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(hidden, eps=1e-6, channels_last=True)
        self.pwconv2 = nn.Linear(hidden, dim, bias=False)
        self.norm2 = nn.BatchNorm2d(dim)
        if layer_scale_init:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        else:
            self.gamma = None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.se(self.norm(self.conv(x)))
        x = x.permute(0, 2, 3, 1)
        x = self.pwconv2(self.grn(self.act(self.pwconv1(x))))
        x = self.norm2(x.permute(0, 3, 1, 2))
        if self.gamma is not None:
            x = x * self.gamma.view(1, -1, 1, 1)
        return shortcut + self.drop_path(x)


class ShiftWiseV2Stage(Stage):
    """Optional downsample (conv3x3 s2 + channels-first LN) followed by ``depth`` blocks."""

    def __init__(
        self, in_dim: int, dim: int, depth: int, downsample: bool, drop_paths: Sequence[float], **block_kw
    ) -> None:
        if downsample:
            down = nn.Sequential(nn.Conv2d(in_dim, dim, 3, stride=2, padding=1), LayerNorm2d(dim, eps=1e-6))
        else:
            down = nn.Identity()
        super().__init__(down, [ShiftWiseV2Block(dim, drop_path=dp, **block_kw) for dp in drop_paths])
        assert len(self.blocks) == depth


def make_stem(in_chans: int, dim: int, stride: int) -> nn.Sequential:
    """conv3x3 (-> dim/2, bias) + LN + GELU + conv3x3 (-> dim, bias) + LN; total stride 1, 2 or 4."""
    if stride not in (1, 2, 4):
        raise ValueError(f"stem_stride must be 1, 2 or 4, got {stride}")
    s1, s2 = {1: (1, 1), 2: (1, 2), 4: (2, 2)}[stride]
    half = max(dim // 2, 1)
    return nn.Sequential(
        nn.Conv2d(in_chans, half, 3, stride=s1, padding=1),
        LayerNorm2d(half, eps=1e-6),
        nn.GELU(),
        nn.Conv2d(half, dim, 3, stride=s2, padding=1),
        LayerNorm2d(dim, eps=1e-6),
    )


class ShiftWiseV2(ShiftWiseNetMixin, nn.Module):
    """ShiftWise v2 classifier (SPEC §6.1).

    Args:
        in_chans, num_classes: input channels, classes (0 -> no classifier, ``head`` = Identity).
        depths, dims: blocks and width per stage.
        kernel_sizes: big kernel K per stage followed by the small kernel k, e.g. (51, 49, 47, 13, 3).
        ghost_ratio, n_path, n_rep: SW operator settings (SPEC §1).
        drop_path_rate: stochastic depth, linear 0 -> rate over all blocks.
        layer_scale_init: initial layer-scale value (0/None disables layer scale).
        head_init_scale: multiplies the initial classifier weight and bias.
        drop_rate: dropout before the classifier.
        stem_stride: 4 (ImageNet layout) or 2 / 1 for small images.
        ghost_split: "v2" channel split formula (kept selectable for experiments).
        impl: SW operator implementation ("auto", "torch", ...), see ``swconv.ops``.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 18, 3),
        dims: Sequence[int] = (80, 160, 320, 640),
        kernel_sizes: Sequence[int] = (51, 49, 47, 13, 3),
        ghost_ratio: float = 0.23,
        n_path: int = 2,
        n_rep: int = 4,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = 1e-6,
        head_init_scale: float = 1.0,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        stem_stride: int = 4,
        ghost_split: str = "v2",
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self._init_config(in_chans, num_classes, depths, dims, kernel_sizes, global_pool, drop_rate)
        self.grad_checkpointing = False

        self.stem = make_stem(in_chans, self.dims[0], stem_stride)
        self._build_stages(
            ShiftWiseV2Stage,
            stem_stride,
            drop_path_rate,
            ghost_ratio=ghost_ratio,
            n_path=n_path,
            n_rep=n_rep,
            layer_scale_init=layer_scale_init,
            ghost_split=ghost_split,
            impl=impl,
        )
        self._build_head(num_classes, drop_rate, head_init_scale)


# ---- timm registration -------------------------------------------------------------------------
default_cfgs = generate_default_cfgs(
    {
        "shiftwise_v2_pico": default_cfg(
            num_classes=10,
            input_size=(1, 28, 28),
            pool_size=(2, 2),
            crop_pct=1.0,
            interpolation="bilinear",
            mean=(0.2860,),
            std=(0.3530,),
        ),
        "shiftwise_v2_tiny": default_cfg(),
        "shiftwise_v2_small": default_cfg(),
        "shiftwise_v2_base": default_cfg(),
    }
)


def checkpoint_filter_fn(state_dict: dict, model: ShiftWiseV2) -> dict:
    """Accept our own state_dicts and reference ShiftWise_v2 ones (converted on the fly)."""
    from .convert import convert_reference_state_dict, is_reference_state_dict

    if is_reference_state_dict(state_dict):
        n_rep = next(iter(model.sw_layers())).n_rep
        return convert_reference_state_dict(state_dict, n_rep=n_rep)
    return state_dict


PRESETS: dict[str, dict] = {
    # 28-64 px inputs (Fashion-MNIST): stride-2 stem, feature maps 14/7/4/2 at 28 px.
    "shiftwise_v2_pico": dict(
        depths=(1, 1, 2, 1),
        dims=(16, 32, 64, 128),
        kernel_sizes=(13, 7, 5, 3, 3),
        stem_stride=2,
        in_chans=1,
        num_classes=10,
    ),
    "shiftwise_v2_tiny": dict(depths=(3, 3, 18, 3), dims=(80, 160, 320, 640)),
    "shiftwise_v2_small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "shiftwise_v2_base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
}


def _create(variant: str, pretrained: bool = False, **kwargs) -> ShiftWiseV2:
    return create_sw_model(
        ShiftWiseV2, variant, pretrained, PRESETS, pretrained_filter_fn=checkpoint_filter_fn, **kwargs
    )


@register_model
def shiftwise_v2_pico(pretrained: bool = False, **kwargs) -> ShiftWiseV2:
    return _create("shiftwise_v2_pico", pretrained, **kwargs)


@register_model
def shiftwise_v2_tiny(pretrained: bool = False, **kwargs) -> ShiftWiseV2:
    return _create("shiftwise_v2_tiny", pretrained, **kwargs)


@register_model
def shiftwise_v2_small(pretrained: bool = False, **kwargs) -> ShiftWiseV2:
    return _create("shiftwise_v2_small", pretrained, **kwargs)


@register_model
def shiftwise_v2_base(pretrained: bool = False, **kwargs) -> ShiftWiseV2:
    return _create("shiftwise_v2_base", pretrained, **kwargs)
