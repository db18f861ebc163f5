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
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from timm.layers.grn import GlobalResponseNorm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

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


def fuse_conv_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d):
    """Kernel and bias of ``bn(conv(x))`` (eval-mode BN) as one conv."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias + (b - bn.running_mean) * scale


def dilate_kernel(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """Depthwise kernel (C, 1, k, k) with dilation r -> equivalent dense (C, 1, r(k-1)+1, ...)."""
    if dilation == 1:
        return kernel
    c, _, kh, kw = kernel.shape
    out = kernel.new_zeros(c, 1, dilation * (kh - 1) + 1, dilation * (kw - 1) + 1)
    out[:, :, ::dilation, ::dilation] = kernel
    return out


def pad_kernel_to(kernel: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Zero-pad an odd-sized kernel symmetrically to (kh, kw) (centres stay aligned)."""
    ph = (kh - kernel.shape[-2]) // 2
    pw = (kw - kernel.shape[-1]) // 2
    return F.pad(kernel, [pw, pw, ph, ph])


class SEBlock(nn.Module):
    """Squeeze-and-excitation: avg pool -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> sigmoid."""

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
        merged = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, groups=conv.groups, bias=True
        ).to(device=w.device, dtype=w.dtype)
        merged.weight.copy_(w)
        merged.bias.copy_(b)
        self.dwconv = merged
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


class UniRepLKNet(nn.Module):
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

        n_blocks = sum(depths)
        dpr = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]  # linear 0 -> rate
        self.stages = nn.ModuleList()
        cur = 0
        self.feature_info = []
        for i in range(4):
            self.stages.append(
                nn.Sequential(
                    *[
                        UniRepLKNetBlock(
                            dims[i],
                            kernel_sizes[i][j],
                            drop_path=dpr[cur + j],
                            layer_scale_init=layer_scale_init,
                            ffn_factor=ffn_factor,
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
        """Inference structure: every block reparameterized (exact in eval mode)."""
        for m in self.modules():
            if isinstance(m, UniRepLKNetBlock):
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


default_cfgs = generate_default_cfgs({"unireplknet_tiny": _cfg()})


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
