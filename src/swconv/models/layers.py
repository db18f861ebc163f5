"""Small building blocks shared by the model families (ShiftWise v1/v2, SLaK, UniRepLKNet).

Where timm already has the exact block (channels-first LayerNorm, GRN, DropPath) it is used
directly; the squeeze-excite block is our own because the reference's reduction (C // 4, no
rounding to a multiple of 8) differs from ``timm.layers.SEModule``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from timm.layers.grn import GlobalResponseNorm
from timm.models import build_model_with_cfg
from timm.models._manipulate import checkpoint_seq
from torch import nn

from swconv.ops import ShiftWiseConv2d

__all__ = [
    "ConvNetApiMixin",
    "DropPath",
    "GlobalResponseNorm",
    "LayerNorm2d",
    "ReparamConvNetMixin",
    "ShiftWiseNetMixin",
    "SqueezeExcite",
    "Stage",
    "conv_from_kernel_bias",
    "create_sw_model",
    "default_cfg",
    "drop_path_rates",
    "fuse_conv_bn",
    "init_weights",
    "merge_sw_paths",
    "pad_kernel_to",
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


def fuse_conv_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d):
    """Kernel and bias of ``bn(conv(x))`` (eval-mode BN) as one conv."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias + (b - bn.running_mean) * scale


def pad_kernel_to(kernel: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Zero-pad an odd-sized kernel symmetrically to (kh, kw) (centres stay aligned)."""
    ph = (kh - kernel.shape[-2]) // 2
    pw = (kw - kernel.shape[-1]) // 2
    return F.pad(kernel, [pw, pw, ph, ph])


@torch.no_grad()
def conv_from_kernel_bias(weight: torch.Tensor, bias: torch.Tensor, padding, groups: int) -> nn.Conv2d:
    """A fresh ``nn.Conv2d`` (with bias, on ``weight``'s device / dtype) holding ``weight`` and
    ``bias``; used to build the merged conv of a reparameterization."""
    conv = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[-2:]),
        padding=padding,
        groups=groups,
        bias=True,
    ).to(device=weight.device, dtype=weight.dtype)
    conv.weight.copy_(weight)
    conv.bias.copy_(bias)
    return conv


def default_cfg(**overrides) -> dict:
    """timm pretrained-cfg defaults shared by every model here (ImageNet 224 px, head ``head``)."""
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
    cfg.update(overrides)
    return cfg


class Stage(nn.Module):
    """``downsample`` (module, may be Identity) followed by the ``blocks`` Sequential; supports
    timm gradient checkpointing through ``grad_checkpointing``."""

    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class ConvNetApiMixin:
    """timm-style classifier API shared by every model family here.

    Expects ``num_features``, ``global_pool``, ``norm`` (LayerNorm over the pooled features),
    ``head_drop`` and ``head`` on the model; ``forward_features`` is defined by the subclass.
    """

    _init_weights = staticmethod(init_weights)

    def _build_head(self, num_classes: int, drop_rate: float, head_init_scale: float) -> None:
        """Final LayerNorm, dropout and classifier; then the SPEC init of every weight and the
        classifier scaled by ``head_init_scale``."""
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

        self.apply(init_weights)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    def _set_global_pool(self, global_pool: str) -> None:
        self.global_pool = global_pool

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self._set_global_pool(global_pool)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            init_weights(self.head)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        elif self.global_pool:
            raise ValueError(f"unsupported global_pool {self.global_pool!r}")
        x = self.norm(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ReparamConvNetMixin(ConvNetApiMixin):
    """Baselines (SLaK, UniRepLKNet): ``downsample_layers[i]`` then ``stages[i]`` per stage,
    layer scale ``gamma`` excluded from weight decay, ``reparameterize()`` applied to every
    ``_reparam_type`` submodule."""

    _reparam_type: type[nn.Module]

    def _build_stages(self, depths: Sequence[int], dims: Sequence[int], drop_path_rate: float, make_block) -> None:
        """``stages[i]`` = Sequential of ``make_block(i, j, drop_path)`` (drop path linear 0 -> rate
        over all blocks) and ``feature_info``."""
        n_blocks = sum(depths)
        dpr = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]  # linear 0 -> rate
        self.stages = nn.ModuleList()
        self.feature_info = []
        cur = 0
        for i, depth in enumerate(depths):
            self.stages.append(nn.Sequential(*[make_block(i, j, dpr[cur + j]) for j in range(depth)]))
            cur += depth
            self.feature_info.append(dict(num_chs=dims[i], reduction=2 ** (i + 2), module=f"stages.{i}"))

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"gamma"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = downsample(x)
            x = stage(x)
        return x

    @torch.no_grad()
    def reparameterize(self):
        """Inference structure: every ``_reparam_type`` submodule reparameterized (exact in eval mode)."""
        for m in self.modules():
            if isinstance(m, self._reparam_type):
                m.reparameterize()
        return self


class ShiftWiseNetMixin(ConvNetApiMixin):
    """Classifier API of the ShiftWise families (``stem`` + ``stages`` of ``Stage``; only
    global_pool='avg') plus the SW-specific ``sw_layers`` / ``merge_paths``."""

    def _init_config(self, in_chans, num_classes, depths, dims, kernel_sizes, global_pool, drop_rate) -> None:
        """Validate and store the architecture arguments shared by the SW families."""
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

    def _build_stages(self, stage_cls: type, stem_stride: int, drop_path_rate: float, **block_kw) -> None:
        """``stages`` (stage i: big kernel ``kernel_sizes[i]``, small kernel ``kernel_sizes[-1]``,
        downsample for i > 0) and ``feature_info``."""
        depths, dims, kernel_sizes = self.depths, self.dims, self.kernel_sizes
        dprs = drop_path_rates(depths, drop_path_rate)
        stages, self.feature_info = [], []
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(
                stage_cls(
                    dims[i - 1] if i else dim,
                    dim,
                    depth,
                    downsample=i > 0,
                    drop_paths=dprs[i],
                    big_kernel=kernel_sizes[i],
                    small_kernel=kernel_sizes[-1],
                    **block_kw,
                )
            )
            self.feature_info.append(dict(num_chs=dim, reduction=stem_stride * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

    def _set_global_pool(self, global_pool: str) -> None:
        if global_pool != "avg":
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        self.global_pool = global_pool

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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.stages(x)

    # ---- SW specific -------------------------------------------------------------------------
    def sw_layers(self) -> list[ShiftWiseConv2d]:
        return list(sw_layers(self))

    @torch.no_grad()
    def merge_paths(self) -> nn.Module:
        """Fold the n_path small-kernel convs of every SW layer into one (exact; SPEC §5)."""
        merge_sw_paths(self)
        return self

    reparameterize = merge_paths


def create_sw_model(
    model_cls: type, variant: str, pretrained: bool, presets: dict, pretrained_filter_fn=None, **kwargs
) -> nn.Module:
    """timm builder of a ShiftWise preset: ``kwargs`` override ``presets[variant]``; features of
    every stage by default (``feature_cfg`` overrides)."""
    model_args = dict(presets[variant], **kwargs)
    n_stages = len(model_args["depths"])
    feature_cfg = dict(out_indices=tuple(range(n_stages)), flatten_sequential=True)
    feature_cfg.update(model_args.pop("feature_cfg", {}) or {})
    return build_model_with_cfg(
        model_cls, variant, pretrained, pretrained_filter_fn=pretrained_filter_fn, feature_cfg=feature_cfg, **model_args
    )
