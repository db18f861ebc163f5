"""ShiftWise v1 / v2 models: timm registration, parameter counts, forward/backward, merge."""

from unittest import mock

import pytest
import timm
import torch

import swconv  # noqa: F401  (registers the models)
from swconv.models import layers
from swconv.models.shiftwise_v1 import ShiftWiseV1
from swconv.models.shiftwise_v2 import ShiftWiseV2
from swconv.ops import ShiftWiseConv2d

SW_MODELS = [
    "shiftwise_v1_tiny",
    "shiftwise_v1_small",
    "shiftwise_v1_base",
    "shiftwise_v2_pico",
    "shiftwise_v2_tiny",
    "shiftwise_v2_small",
    "shiftwise_v2_base",
]
SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), num_classes=7)


def build_uninitialised(name: str, **kwargs) -> torch.nn.Module:
    """Full-size model without weight init (10x faster on CPU): for shape / count checks only."""
    noop = lambda *args, **kw: None  # noqa: E731
    with (
        mock.patch.object(layers, "init_weights", noop),
        mock.patch.object(torch.nn.init, "kaiming_uniform_", noop),
        mock.patch.object(torch.nn.init, "uniform_", noop),
    ):
        return timm.create_model(name, **kwargs)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sw_path_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, ShiftWiseConv2d) for p in m.paths.parameters())


def test_registered():
    assert set(SW_MODELS) <= set(timm.list_models("shiftwise_*"))


def test_v2_tiny_acceptance_param_counts():
    model = build_uninitialised("shiftwise_v2_tiny", kernel_sizes=(51, 49, 47, 13, 3))
    assert n_params(model) == 31_790_260
    assert model.merge_paths() is model
    assert n_params(model) == 31_002_670
    assert all(m.n_path == 1 for m in model.sw_layers())


# (training-time, merged) counts; v2 small/base agree with SPEC §6.1 (57.31 / 55.99 M, 100.25 / 98.48 M)
FULL_COUNTS = {
    "shiftwise_v2_small": (57_312_892, 55_990_108),
    "shiftwise_v2_base": (100_250_380, 98_477_182),
    "shiftwise_v1_tiny": (30_231_064, 29_259_814),
    "shiftwise_v1_small": (54_215_992, 51_912_742),
    "shiftwise_v1_base": (93_920_502, 90_846_552),
    "shiftwise_v2_pico": (334_582, 330_784),
}


@pytest.mark.parametrize("name", sorted(FULL_COUNTS))
def test_full_model_param_counts(name):
    model = build_uninitialised(name)
    paths = sw_path_params(model)
    assert n_params(model) == FULL_COUNTS[name][0]
    model.reparameterize()
    # merging keeps exactly one of the n_path=2 small-kernel convs
    assert n_params(model) == FULL_COUNTS[name][1] == FULL_COUNTS[name][0] - paths // 2


def test_presets():
    tiny = build_uninitialised("shiftwise_v2_tiny", num_classes=0)
    assert (tiny.depths, tiny.dims, tiny.kernel_sizes) == ((3, 3, 18, 3), (80, 160, 320, 640), (51, 49, 47, 13, 3))
    reps = [s.blocks[0].conv.rep_channels for s in tiny.stages]
    assert reps == [60, 122, 246, 492]  # SPEC §1.2
    v1 = build_uninitialised("shiftwise_v1_tiny", num_classes=0)
    assert v1.kernel_sizes == (51, 49, 47, 13, 5)
    conv = v1.stages[0].blocks[0].conv
    assert (conv.small_kernel, conv.ghost_channels) == (5, int(96 * 0.23))  # "v1" ghost split
    pico = timm.create_model("shiftwise_v2_pico")
    assert (pico.in_chans, pico.num_classes, pico.pretrained_cfg["input_size"]) == (1, 10, (1, 28, 28))


def test_builder_kwargs_override():
    model = timm.create_model(
        "shiftwise_v2_tiny",
        depths=(1, 1, 2, 1),
        dims=(16, 32, 64, 128),
        kernel_sizes=(51, 49, 47, 13, 3),
        num_classes=10,
    )
    assert isinstance(model, ShiftWiseV2)
    assert [len(s.blocks) for s in model.stages] == [1, 1, 2, 1]
    assert [s.blocks[0].conv.channels for s in model.stages] == [16, 32, 64, 128]
    assert [s.blocks[0].conv.big_kernel for s in model.stages] == [51, 49, 47, 13]
    assert model.get_classifier().out_features == 10
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    model = timm.create_model("shiftwise_v1_small", n_rep=2, n_path=1, ghost_ratio=0.0, **SMALL)
    conv = model.stages[1].blocks[0].conv
    assert (conv.n_rep, conv.n_path, conv.ghost_channels) == (2, 1, 0)


@pytest.mark.parametrize("name", SW_MODELS)
def test_forward_backward_small(name):
    torch.manual_seed(0)
    kw = dict(SMALL, drop_path_rate=0.1)
    if name == "shiftwise_v2_pico":
        kw.update(in_chans=1)
    model = timm.create_model(name, **kw)
    x = torch.randn(2, model.in_chans, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for layer in model.sw_layers():
        for path in layer.paths:
            assert path.weight.grad is not None and torch.isfinite(path.weight.grad).all()
    assert all(p.grad is not None for p in model.parameters())


def test_pico_fashion_mnist_shape():
    model = timm.create_model("shiftwise_v2_pico")
    model.train()
    x = torch.randn(4, 1, 28, 28)
    out = model(x)
    assert out.shape == (4, 10)
    out.logsumexp(1).mean().backward()
    feats = model.forward_features(x)
    assert feats.shape == (4, 128, 2, 2)  # stride-2 stem: 14 -> 7 -> 4 -> 2
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("cls", [ShiftWiseV2, ShiftWiseV1])
def test_merge_paths_exact_in_eval(cls):
    torch.manual_seed(0)
    model = cls(**SMALL)
    # non-trivial BN statistics and layer scale, a pruned kernel in one path
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.data.fill_(0.5)
    model.sw_layers()[0].kernel_mask[0, :5] = 0
    model.eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = model(x)
        model.merge_paths()
        merged = model(x)
    torch.testing.assert_close(merged, ref, rtol=1e-4, atol=1e-5)


def test_timm_api():
    model = timm.create_model("shiftwise_v2_tiny", **SMALL)
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 128, 1, 1)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 128)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, 128)
    assert model.default_cfg["classifier"] == "head"
    model.set_grad_checkpointing(True)
    model.train()
    model(x).sum().backward()
    fmodel = timm.create_model("shiftwise_v2_pico", features_only=True)
    outs = fmodel(torch.randn(1, 1, 28, 28))
    assert [o.shape[1] for o in outs] == [16, 32, 64, 128]
    assert fmodel.feature_info.reduction() == [2, 4, 8, 16]


def test_init():
    model = ShiftWiseV2(depths=(1, 1, 1, 1), dims=(32, 64, 128, 256), head_init_scale=0.5, drop_path_rate=0.3)
    w = torch.cat([layer.paths[q].weight.flatten() for layer in model.sw_layers() for q in range(2)])
    assert abs(w.std().item() - 0.02) < 0.002 and w.abs().max() <= 2.0
    assert all((m.bias == 0).all() for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None)
    block = model.stages[0].blocks[0]
    assert torch.all(block.gamma == 1e-6)
    assert torch.all(block.grn.weight == 0) and torch.all(block.grn.bias == 0)
    assert block.se.down.out_channels == 8  # C // 4, no rounding
    assert block.pwconv2.bias is None
    assert abs(model.head.weight.std().item() - 0.01) < 0.002
    assert model.stages[3].blocks[0].drop_path.drop_prob == pytest.approx(0.3)
    assert isinstance(model.stages[0].blocks[0].drop_path, torch.nn.Identity)


def test_bad_config():
    with pytest.raises(ValueError, match="kernel_sizes"):
        ShiftWiseV2(depths=(1, 1), dims=(16, 32), kernel_sizes=(13, 11, 7, 3))
    with pytest.raises(ValueError, match="stem_stride"):
        ShiftWiseV2(**SMALL, stem_stride=3)
