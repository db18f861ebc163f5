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
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint_seq
from torch import nn

from swconv.ops import ShiftWiseConv2d

from .layers import DropPath, LayerNorm2d, ShiftWiseNetMixin, drop_path_rates, init_weights

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


class ShiftWiseV1Stage(nn.Module):
    """Optional downsample (channels-first LN + conv2x2 s2) followed by ``depth`` blocks."""

    def __init__(
        self, in_dim: int, dim: int, depth: int, downsample: bool, drop_paths: Sequence[float], **block_kw
    ) -> None:
        super().__init__()
        if downsample:
            self.downsample = nn.Sequential(LayerNorm2d(in_dim, eps=1e-6), nn.Conv2d(in_dim, dim, 2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[ShiftWiseV1Block(dim, drop_path=dp, **block_kw) for dp in drop_paths])
        assert len(self.blocks) == depth
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


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
        depths, dims, kernel_sizes = tuple(depths), tuple(dims), tuple(kernel_sizes)
        if len(depths) != len(dims):
            raise ValueError(f"depths {depths} and dims {dims} must have the same length")
        if len(kernel_sizes) != len(depths) + 1:
            raise ValueError(
                f"kernel_sizes must hold one big kernel per stage plus the small kernel "
                f"({len(depths) + 1} values), got {kernel_sizes}"
            )
        if global_pool != "avg":
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.depths, self.dims, self.kernel_sizes = depths, dims, kernel_sizes
        self.num_features = self.head_hidden_size = dims[-1]
        self.global_pool = global_pool
        self.drop_rate = drop_rate

        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        dprs = drop_path_rates(depths, drop_path_rate)
        stages, self.feature_info = [], []
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(
                ShiftWiseV1Stage(
                    dims[i - 1] if i else dim,
                    dim,
                    depth,
                    downsample=i > 0,
                    drop_paths=dprs[i],
                    big_kernel=kernel_sizes[i],
                    small_kernel=kernel_sizes[-1],
                    ghost_ratio=ghost_ratio,
                    n_path=n_path,
                    n_rep=n_rep,
                    layer_scale_init=layer_scale_init,
                    ghost_split=ghost_split,
                    impl=impl,
                )
            )
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

        self.apply(init_weights)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)


def _cfg(**kwargs) -> dict:
    cfg = dict(
        url="",
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="stem.0",
        classifier="head",
    )
    cfg.update(kwargs)
    return cfg


default_cfgs = generate_default_cfgs(
    {"shiftwise_v1_tiny": _cfg(), "shiftwise_v1_small": _cfg(), "shiftwise_v1_base": _cfg()}
)

PRESETS: dict[str, dict] = {
    "shiftwise_v1_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "shiftwise_v1_small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "shiftwise_v1_base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
}


def _create(variant: str, pretrained: bool = False, **kwargs) -> ShiftWiseV1:
    model_args = dict(PRESETS[variant], **kwargs)
    n_stages = len(model_args["depths"])
    feature_cfg = dict(out_indices=tuple(range(n_stages)), flatten_sequential=True)
    feature_cfg.update(model_args.pop("feature_cfg", {}) or {})
    return build_model_with_cfg(ShiftWiseV1, variant, pretrained, feature_cfg=feature_cfg, **model_args)


@register_model
def shiftwise_v1_tiny(pretrained: bool = False, **kwargs) -> ShiftWiseV1:
    return _create("shiftwise_v1_tiny", pretrained, **kwargs)


@register_model
def shiftwise_v1_small(pretrained: bool = False, **kwargs) -> ShiftWiseV1:
    return _create("shiftwise_v1_small", pretrained, **kwargs)


@register_model
def shiftwise_v1_base(pretrained: bool = False, **kwargs) -> ShiftWiseV1:
    return _create("shiftwise_v1_base", pretrained, **kwargs)
