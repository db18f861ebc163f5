"""SLaK baseline (Liu et al., ICLR 2023), dense version, registered with timm as ``slak_tiny``.

ConvNeXt macro layout, width x1.3: stem conv4x4 s4 + LayerNorm2d; downsample LayerNorm2d +
conv2x2 s2; block = decomposed large-kernel dw conv -> LayerNorm (channels last) -> Linear 4C ->
GELU -> Linear C -> layer scale -> drop path -> residual; head = avg pool -> LayerNorm -> Linear.

Decomposed dw conv of a stage with big kernel K and small kernel k (SLaK-T: K = 51/49/47/13,
k = 5): ``BN(conv Kxk) + BN(conv kxK) + BN(conv kxk)``, all depthwise without bias. Dynamic
sparsity is not part of this module (the published ~30 M of SLaK-T counts weights left after
40 % sparsity; the dense width-1.3 network is larger, see the tests).

``reparameterize()`` folds each block's three BN'd branches into one dense KxK dw conv with bias
(exact in eval mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerNorm2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .layers import ReparamConvNetMixin, conv_from_kernel_bias, default_cfg, fuse_conv_bn, pad_kernel_to

__all__ = ["SLaK", "SLaKBlock", "DecomposedLargeKernelConv", "slak_tiny"]

SLAK_T_DEPTHS = (3, 3, 9, 3)
SLAK_T_DIMS = (96, 192, 384, 768)  # before width_factor
SLAK_T_KERNELS = (51, 49, 47, 13)


def _conv_bn(channels: int, kh: int, kw: int, bn: bool) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module(
        "conv", nn.Conv2d(channels, channels, (kh, kw), padding=(kh // 2, kw // 2), groups=channels, bias=False)
    )
    if bn:
        seq.add_module("bn", nn.BatchNorm2d(channels))
    return seq


def _fused(branch: nn.Sequential):
    w = branch.conv.weight
    if not hasattr(branch, "bn"):
        return w, torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    return fuse_conv_bn(w, None, branch.bn)


class DecomposedLargeKernelConv(nn.Module):
    """Depthwise ``Kxk + kxK (+ kxk)`` convs, each followed by BN, summed (SLaK's decomposed kernel).

    Branch names follow the SLaK reference (``LoRA1``, ``LoRA2``, ``small_conv``; each ``.conv`` and
    ``.bn``)."""

    def __init__(self, channels: int, kernel_size: int, small_kernel: int = 5, bn: bool = True):
        super().__init__()
        if kernel_size % 2 == 0 or small_kernel % 2 == 0:
            raise ValueError("kernel sizes must be odd")
        self.channels = channels
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        self.LoRA1 = _conv_bn(channels, kernel_size, small_kernel, bn)
        self.LoRA2 = _conv_bn(channels, small_kernel, kernel_size, bn)
        self.small_conv = _conv_bn(channels, small_kernel, small_kernel, bn) if small_kernel < kernel_size else None
        self.merged = None  # set by reparameterize()

    def forward(self, x):
        if self.merged is not None:
            return self.merged(x)
        out = self.LoRA1(x) + self.LoRA2(x)
        if self.small_conv is not None:
            out = out + self.small_conv(x)
        return out

    @torch.no_grad()
    def equivalent_kernel_bias(self):
        k = self.kernel_size
        branches = [self.LoRA1, self.LoRA2] + ([self.small_conv] if self.small_conv is not None else [])
        w = b = 0
        for br in branches:
            bw, bb = _fused(br)
            w = w + pad_kernel_to(bw, k, k)
            b = b + bb
        return w, b

    @torch.no_grad()
    def reparameterize(self):
        if self.merged is not None:
            return
        w, b = self.equivalent_kernel_bias()
        conv = conv_from_kernel_bias(w, b, padding=self.kernel_size // 2, groups=self.channels)
        del self.LoRA1, self.LoRA2, self.small_conv
        self.LoRA1 = self.LoRA2 = self.small_conv = None
        self.merged = conv


class SLaKBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        kernel_size: int,
        small_kernel: int = 5,
        drop_path: float = 0.0,
        layer_scale_init: float | None = 1e-6,
        bn: bool = True,
        mlp_ratio: int = 4,
    ):
        super().__init__()
        self.large_kernel = DecomposedLargeKernelConv(dim, kernel_size, small_kernel, bn=bn)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init))) if layer_scale_init else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        y = self.large_kernel(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class SLaK(ReparamConvNetMixin, nn.Module):
    _reparam_type = DecomposedLargeKernelConv

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = SLAK_T_DEPTHS,
        dims: Sequence[int] = SLAK_T_DIMS,
        kernel_sizes: Sequence[int] = SLAK_T_KERNELS,
        small_kernel: int = 5,
        width_factor: float = 1.0,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = 1e-6,
        head_init_scale: float = 1.0,
        bn: bool = True,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        super().__init__()
        kernel_sizes = list(kernel_sizes)
        if len(kernel_sizes) == 5:  # SLaK reference convention: [K0, K1, K2, K3, small]
            small_kernel = kernel_sizes.pop()
        assert len(depths) == len(dims) == len(kernel_sizes) == 4
        dims = [int(d * width_factor) for d in dims]
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.depths = tuple(depths)
        self.dims = tuple(dims)
        self.kernel_sizes = tuple(kernel_sizes)
        self.small_kernel = small_kernel
        self.num_features = self.head_hidden_size = dims[-1]

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(
                nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
                LayerNorm2d(dims[0], eps=1e-6),
            )
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm2d(dims[i], eps=1e-6),
                    nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2),
                )
            )

        self._build_stages(
            depths,
            dims,
            drop_path_rate,
            lambda i, j, dp: SLaKBlock(
                dims[i],
                kernel_sizes[i],
                small_kernel,
                drop_path=dp,
                layer_scale_init=layer_scale_init,
                bn=bn,
            ),
        )

        self._build_head(num_classes, drop_rate, head_init_scale)


default_cfgs = generate_default_cfgs({"slak_tiny": default_cfg(first_conv="downsample_layers.0.0")})


@register_model
def slak_tiny(pretrained: bool = False, **kwargs) -> SLaK:
    """SLaK-T (dense): depths (3, 3, 9, 3), dims (96, 192, 384, 768) x 1.3 = (124, 249, 499, 998),
    kernels 51/49/47/13 decomposed with small kernel 5."""
    if pretrained:
        raise RuntimeError("slak_tiny: swconv provides no pretrained weights")
    args = dict(depths=SLAK_T_DEPTHS, dims=SLAK_T_DIMS, kernel_sizes=SLAK_T_KERNELS, small_kernel=5, width_factor=1.3)
    args.update(kwargs)
    return build_model_with_cfg(SLaK, "slak_tiny", pretrained, **args)
