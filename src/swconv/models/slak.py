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
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

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
    bn = branch.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return w * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def _pad_to(w: torch.Tensor, size: int) -> torch.Tensor:
    ph = (size - w.shape[-2]) // 2
    pw = (size - w.shape[-1]) // 2
    return F.pad(w, [pw, pw, ph, ph])


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
            w = w + _pad_to(bw, k)
            b = b + bb
        return w, b

    @torch.no_grad()
    def reparameterize(self):
        if self.merged is not None:
            return
        w, b = self.equivalent_kernel_bias()
        conv = nn.Conv2d(
            self.channels,
            self.channels,
            self.kernel_size,
            padding=self.kernel_size // 2,
            groups=self.channels,
            bias=True,
        ).to(device=w.device, dtype=w.dtype)
        conv.weight.copy_(w)
        conv.bias.copy_(b)
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


class SLaK(nn.Module):
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

        n_blocks = sum(depths)
        dpr = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]  # linear 0 -> rate
        self.stages = nn.ModuleList()
        self.feature_info = []
        cur = 0
        for i in range(4):
            self.stages.append(
                nn.Sequential(
                    *[
                        SLaKBlock(
                            dims[i],
                            kernel_sizes[i],
                            small_kernel,
                            drop_path=dpr[cur + j],
                            layer_scale_init=layer_scale_init,
                            bn=bn,
                        )
                        for j in range(depths[i])
                    ]
                )
            )
            cur += depths[i]
            self.feature_info.append(dict(num_chs=dims[i], reduction=2 ** (i + 2), module=f"stages.{i}"))

        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

        self.apply(self._init_weights)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"gamma"}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            self._init_weights(self.head)

    def forward_features(self, x):
        for i in range(4):
            x = self.downsample_layers[i](x)
            x = self.stages[i](x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        elif self.global_pool:
            raise ValueError(f"unsupported global_pool {self.global_pool!r}")
        x = self.norm(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def reparameterize(self):
        """Merge every decomposed kernel into one dense KxK dw conv with bias (exact in eval mode)."""
        for m in self.modules():
            if isinstance(m, DecomposedLargeKernelConv):
                m.reparameterize()
        return self


def _cfg(**kwargs):
    return dict(
        url="",
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="downsample_layers.0.0",
        classifier="head",
        **kwargs,
    )


default_cfgs = generate_default_cfgs({"slak_tiny": _cfg()})


@register_model
def slak_tiny(pretrained: bool = False, **kwargs) -> SLaK:
    """SLaK-T (dense): depths (3, 3, 9, 3), dims (96, 192, 384, 768) x 1.3 = (124, 249, 499, 998),
    kernels 51/49/47/13 decomposed with small kernel 5."""
    if pretrained:
        raise RuntimeError("slak_tiny: swconv provides no pretrained weights")
    args = dict(depths=SLAK_T_DEPTHS, dims=SLAK_T_DIMS, kernel_sizes=SLAK_T_KERNELS, small_kernel=5, width_factor=1.3)
    args.update(kwargs)
    return build_model_with_cfg(SLaK, "slak_tiny", pretrained, **args)
