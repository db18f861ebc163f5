"""UniRepLKNet baseline (Ding et al., CVPR 2024), registered with timm as ``unireplknet_tiny``.

Written for swconv as a speed / accuracy baseline; the layout follows the paper:

- stem: conv3x3 s2 (C0/2) + LayerNorm2d + GELU + conv3x3 s2 (C0) + LayerNorm2d;
  downsample: conv3x3 s2 + LayerNorm2d.
- block: dw conv (Dilated Reparam Block for k >= 7, plain dw conv otherwise) -> BN -> SE (C/4)
  -> Linear 4C -> GELU -> GRN -> Linear C (no bias) -> BN -> layer scale -> drop path -> residual.
- head: global average pool -> LayerNorm -> Linear.

UniRepLKNet-T: depths (3, 3, 18, 3), dims (80, 160, 320, 640); stage kernels 3 / 13 / (13, 3
alternating) / 13. ``reparameterize()`` turns the training-time structure into the inference one
(dilated branches + every BN folded into convs / linears); outputs are unchanged in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d
from timm.layers.grn import GlobalResponseNorm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .layers import ReparamConvNetMixin, conv_from_kernel_bias, default_cfg, fuse_conv_bn, pad_kernel_to

__all__ = ["UniRepLKNet", "UniRepLKNetBlock", "DilatedReparamBlock", "SEBlock", "unireplknet_tiny"]

# (small kernel size, dilation) of the parallel branches of a Dilated Reparam Block, per large
# kernel size (paper defaults).
DILATED_BRANCHES = {
    17: ((5, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    15: ((5, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    13: ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    11: ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    9: ((5, 1), (5, 2), (3, 3), (3, 4)),
    7: ((5, 1), (3, 2), (3, 3)),
    5: ((3, 1), (3, 2)),
}

UNIREPLKNET_T_DEPTHS = (3, 3, 18, 3)
UNIREPLKNET_T_DIMS = (80, 160, 320, 640)


def dilate_kernel(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """Depthwise kernel (C, 1, k, k) with dilation r -> equivalent dense (C, 1, r(k-1)+1, ...)."""
    if dilation == 1:
        return kernel
    c, _, kh, kw = kernel.shape
    out = kernel.new_zeros(c, 1, dilation * (kh - 1) + 1, dilation * (kw - 1) + 1)
    out[:, :, ::dilation, ::dilation] = kernel
    return out


class SEBlock(nn.Module):
    """Squeeze-and-excitation: avg pool -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> sigmoid.

    Same parameters and math as ``layers.SqueezeExcite`` but kept separate: its pooled tensor
    keeps the input's memory format (``adaptive_avg_pool2d``), so under channels_last the 1x1
    convs round differently (~1 ulp) from ``SqueezeExcite``'s ``mean``."""

    def __init__(self, channels: int, internal: int):
        super().__init__()
        self.down = nn.Conv2d(channels, internal, 1, bias=True)
        self.up = nn.Conv2d(internal, channels, 1, bias=True)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.up(F.relu(self.down(s))))
        return x * s


class DilatedReparamBlock(nn.Module):
    """Large-kernel dw conv + parallel dilated small dw convs, each followed by BN, summed.

    ``reparameterize()`` folds everything into ``lk_origin`` (one dw conv with bias)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(f"no dilated-branch layout for kernel size {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.branches = DILATED_BRANCHES[kernel_size]
        self.lk_origin = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False
        )
        self.origin_bn = nn.BatchNorm2d(channels)
        for k, r in self.branches:
            self.add_module(
                f"dil_conv_k{k}_{r}",
                nn.Conv2d(channels, channels, k, padding=r * (k - 1) // 2, dilation=r, groups=channels, bias=False),
            )
            self.add_module(f"dil_bn_k{k}_{r}", nn.BatchNorm2d(channels))
        self.reparameterized = False

    def forward(self, x):
        if self.reparameterized:
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for k, r in self.branches:
            out = out + getattr(self, f"dil_bn_k{k}_{r}")(getattr(self, f"dil_conv_k{k}_{r}")(x))
        return out

    @torch.no_grad()
    def equivalent_kernel_bias(self):
        w, b = fuse_conv_bn(self.lk_origin.weight, None, self.origin_bn)
        for k, r in self.branches:
            bw, bb = fuse_conv_bn(getattr(self, f"dil_conv_k{k}_{r}").weight, None, getattr(self, f"dil_bn_k{k}_{r}"))
            w = w + pad_kernel_to(dilate_kernel(bw, r), self.kernel_size, self.kernel_size)
            b = b + bb
        return w, b

    @torch.no_grad()
    def reparameterize(self):
        if self.reparameterized:
            return
        w, b = self.equivalent_kernel_bias()
        conv = conv_from_kernel_bias(w, b, padding=self.kernel_size // 2, groups=self.channels)
        self.lk_origin = conv
        del self.origin_bn
        for k, r in self.branches:
            delattr(self, f"dil_conv_k{k}_{r}")
            delattr(self, f"dil_bn_k{k}_{r}")
        self.branches = ()
        self.reparameterized = True


class UniRepLKNetBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        kernel_size: int,
        drop_path: float = 0.0,
        layer_scale_init: float | None = 1e-6,
        ffn_factor: int = 4,
    ):
        super().__init__()
        if kernel_size >= 7:
            self.dwconv = DilatedReparamBlock(dim, kernel_size)
        elif kernel_size in (1, 3, 5):
            self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
        else:
            raise ValueError(f"unsupported kernel size {kernel_size}")
        self.norm = nn.BatchNorm2d(dim)
        self.se = SEBlock(dim, dim // 4)
        hidden = int(ffn_factor * dim)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(hidden, eps=1e-6, channels_last=True)
        self.pwconv2 = nn.Linear(hidden, dim, bias=False)
        self.norm2 = nn.BatchNorm2d(dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init))) if layer_scale_init else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        y = self.se(self.norm(self.dwconv(x)))
        y = y.permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(y))))
        y = self.norm2(y.permute(0, 3, 1, 2))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return x + self.drop_path(y)

    @torch.no_grad()
    def reparameterize(self):
        """Fold (dilated branches, BN) -> one dw conv with bias; GRN bias, BN and layer scale ->
        ``pwconv2`` (Linear with bias). Exact in eval mode."""
        if isinstance(self.norm, nn.Identity):
            return
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.reparameterize()
            conv = self.dwconv.lk_origin
        else:
            conv = self.dwconv
        w, b = fuse_conv_bn(conv.weight, conv.bias, self.norm)
        self.dwconv = conv_from_kernel_bias(w, b, padding=conv.padding, groups=conv.groups)
        self.norm = nn.Identity()

        # pwconv2(grn(h)) with grn(h) = h + bias + weight * h * n  ->  GRN bias into the linear bias
        lin_w = self.pwconv2.weight
        lin_b = lin_w @ self.grn.bias
        self.grn.bias.zero_()
        # BN (per output channel) and layer scale
        scale = self.norm2.weight / torch.sqrt(self.norm2.running_var + self.norm2.eps)
        new_b = self.norm2.bias + (lin_b - self.norm2.running_mean) * scale
        new_w = lin_w * scale[:, None]
        if self.gamma is not None:
            new_w = new_w * self.gamma[:, None]
            new_b = new_b * self.gamma
            self.gamma = None
        lin = nn.Linear(lin_w.shape[1], lin_w.shape[0], bias=True).to(device=lin_w.device, dtype=lin_w.dtype)
        lin.weight.copy_(new_w)
        lin.bias.copy_(new_b)
        self.pwconv2 = lin
        self.norm2 = nn.Identity()


KernelSpec = int | Sequence[int]


def default_kernel_sizes(depths: Sequence[int]):
    """UniRepLKNet-T pattern for any depths: 3 / 13 / 13,3 alternating / 13."""
    return ([3] * depths[0], [13] * depths[1], [13 if i % 2 == 0 else 3 for i in range(depths[2])], [13] * depths[3])


class UniRepLKNet(ReparamConvNetMixin, nn.Module):
    _reparam_type = UniRepLKNetBlock

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = UNIREPLKNET_T_DEPTHS,
        dims: Sequence[int] = UNIREPLKNET_T_DIMS,
        kernel_sizes: Sequence[KernelSpec] | None = None,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = 1e-6,
        head_init_scale: float = 1.0,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        ffn_factor: int = 4,
    ):
        super().__init__()
        assert len(depths) == len(dims) == 4
        if kernel_sizes is None:
            kernel_sizes = default_kernel_sizes(depths)
        kernel_sizes = [[k] * d if isinstance(k, int) else list(k) for k, d in zip(kernel_sizes, depths)]
        for ks, d in zip(kernel_sizes, depths):
            if len(ks) != d:
                raise ValueError(f"kernel_sizes {kernel_sizes} do not match depths {depths}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.depths = tuple(depths)
        self.dims = tuple(dims)
        self.kernel_sizes = kernel_sizes
        self.num_features = self.head_hidden_size = dims[-1]

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(
                nn.Conv2d(in_chans, dims[0] // 2, 3, stride=2, padding=1),
                LayerNorm2d(dims[0] // 2, eps=1e-6),
                nn.GELU(),
                nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1),
                LayerNorm2d(dims[0], eps=1e-6),
            )
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(
                    nn.Conv2d(dims[i], dims[i + 1], 3, stride=2, padding=1),
                    LayerNorm2d(dims[i + 1], eps=1e-6),
                )
            )

        self._build_stages(
            depths,
            dims,
            drop_path_rate,
            lambda i, j, dp: UniRepLKNetBlock(
                dims[i],
                kernel_sizes[i][j],
                drop_path=dp,
                layer_scale_init=layer_scale_init,
                ffn_factor=ffn_factor,
            ),
        )

        self._build_head(num_classes, drop_rate, head_init_scale)


default_cfgs = generate_default_cfgs({"unireplknet_tiny": default_cfg(first_conv="downsample_layers.0.0")})


def _create(variant: str, pretrained: bool, **kwargs) -> UniRepLKNet:
    if pretrained:
        raise RuntimeError(f"{variant}: swconv provides no pretrained weights")
    return build_model_with_cfg(UniRepLKNet, variant, pretrained, **kwargs)


@register_model
def unireplknet_tiny(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    """UniRepLKNet-T: depths (3, 3, 18, 3), dims (80, 160, 320, 640), ~31 M parameters."""
    args = dict(depths=UNIREPLKNET_T_DEPTHS, dims=UNIREPLKNET_T_DIMS)
    args.update(kwargs)
    return _create("unireplknet_tiny", pretrained, **args)
