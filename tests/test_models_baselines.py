"""Baseline models (UniRepLKNet-T, SLaK-T, timm ConvNeXt-T) in one CPU harness.

Small-width overrides keep forward/backward fast; the full tiny models are only built (no forward)
to check parameter counts against the published values.
"""

import timm
import torch
import torch.nn as nn

from swconv.models import slak, unireplknet  # noqa: F401  (registers the models with timm)

SMALL_UNIREP = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))
SMALL_SLAK = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), width_factor=1.0)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def randomize_for_equivalence(model):
    """Non-trivial BN statistics/affines, layer scale ~1 and GRN affines so every folded term
    shows up in the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            if getattr(m, "gamma", None) is not None and isinstance(m.gamma, nn.Parameter):
                m.gamma.copy_(torch.rand(m.gamma.shape, generator=g) + 0.5)
            if type(m).__name__ == "GlobalResponseNorm":
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.2)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)


def check_forward_backward(model, res=64, num_classes=10):
    model.train()
    x = torch.randn(2, 3, res, res, requires_grad=True)
    y = model(x)
    assert y.shape == (2, num_classes)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def check_timm_api(model, num_features):
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, num_features, 2, 2)
        assert model.forward_head(feats, pre_logits=True).shape == (1, num_features)
        assert torch.equal(model.forward_head(feats), model(x))
    assert model.get_classifier() is model.head
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model(x).shape == (1, 5)
    model.reset_classifier(0)
    assert model(x).shape == (1, num_features)


def check_reparam_equivalence(model, res):
    model = model.double()
    randomize_for_equivalence(model)
    model.eval()
    x = torch.randn(2, 3, res, res, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
        model.reparameterize()
        after = model(x)
    scale = before.abs().max().item()
    assert scale > 1e-3
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9 * scale)
    return model


# ---------------------------------------------------------------- registration
def test_registered_names_do_not_shadow_timm():
    assert "unireplknet_tiny" in timm.list_models("unireplknet*")
    assert "slak_tiny" in timm.list_models("slak*")
    assert "convnext_tiny" in timm.list_models("convnext_tiny")


# ---------------------------------------------------------------- UniRepLKNet
def test_unireplknet_small_forward_backward_and_api():
    torch.manual_seed(0)
    model = timm.create_model("unireplknet_tiny", num_classes=10, drop_path_rate=0.1, **SMALL_UNIREP)
    assert model.kernel_sizes == [[3], [13], [13, 3], [13]]
    assert isinstance(model.stages[1][0].dwconv, unireplknet.DilatedReparamBlock)
    check_forward_backward(model)
    check_timm_api(model, 128)


def build_full(name):
    """Full-size model on the meta device: shapes and counts without allocating / initializing."""
    with torch.device("meta"):
        return timm.create_model(name)


def test_unireplknet_tiny_layout_and_param_count():
    model = build_full("unireplknet_tiny")
    assert model.depths == (3, 3, 18, 3) and model.dims == (80, 160, 320, 640)
    assert model.kernel_sizes[0] == [3] * 3 and model.kernel_sizes[1] == [13] * 3
    assert model.kernel_sizes[2] == [13, 3] * 9 and model.kernel_sizes[3] == [13] * 3
    train_count = n_params(model)
    model.eval().reparameterize()
    deploy_count = n_params(model)
    print(f"unireplknet_tiny params: train {train_count:,}  reparameterized {deploy_count:,}")
    assert train_count == 31_693_420  # regression value (our layout)
    assert abs(train_count / 31.0e6 - 1) < 0.03  # published: 31 M
    assert abs(deploy_count / 31.0e6 - 1) < 0.01


def test_dilated_reparam_block_equivalence():
    torch.manual_seed(0)
    blk = unireplknet.DilatedReparamBlock(8, 13).double()
    randomize_for_equivalence(blk)
    blk.eval()
    x = torch.randn(2, 8, 20, 20, dtype=torch.float64)
    with torch.no_grad():
        before = blk(x)
        blk.reparameterize()
        after = blk(x)
    assert [n for n, _ in blk.named_parameters()] == ["lk_origin.weight", "lk_origin.bias"]
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)


def test_unireplknet_reparameterize_equivalence():
    torch.manual_seed(0)
    model = unireplknet.UniRepLKNet(num_classes=10, **SMALL_UNIREP)
    model = check_reparam_equivalence(model, res=64)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# ---------------------------------------------------------------- SLaK
def test_slak_small_forward_backward_and_api():
    torch.manual_seed(0)
    model = timm.create_model("slak_tiny", num_classes=10, drop_path_rate=0.1, **SMALL_SLAK)
    lk = model.stages[0][0].large_kernel
    assert lk.LoRA1.conv.weight.shape == (16, 1, 51, 5)
    assert lk.LoRA2.conv.weight.shape == (16, 1, 5, 51)
    assert lk.small_conv.conv.weight.shape == (16, 1, 5, 5)
    assert model.stages[3][0].large_kernel.LoRA1.conv.kernel_size == (13, 5)
    check_forward_backward(model)
    check_timm_api(model, 128)


def test_slak_tiny_layout_and_param_count():
    model = build_full("slak_tiny")
    assert model.dims == (124, 249, 499, 998) and model.depths == (3, 3, 9, 3)
    assert model.kernel_sizes == (51, 49, 47, 13) and model.small_kernel == 5
    dense = n_params(model)
    # SLaK-T's published 30 M counts the weights left by 40 % sparsity over every conv / linear
    # weight (the dense width-1.3 network is ~51 M).
    sparsifiable = sum(p.numel() for p in model.parameters() if p.dim() in (2, 4))
    nonzero_at_40 = dense - 0.4 * sparsifiable
    print(f"slak_tiny params: dense {dense:,}  nonzero at 40% sparsity {nonzero_at_40:,.0f}")
    assert dense == 50_703_838  # regression value (our layout)
    assert abs(nonzero_at_40 / 30.0e6 - 1) < 0.03  # published: 30 M


def test_decomposed_kernel_equivalence():
    torch.manual_seed(0)
    blk = slak.DecomposedLargeKernelConv(8, 51, 5).double()
    randomize_for_equivalence(blk)
    blk.eval()
    x = torch.randn(2, 8, 24, 20, dtype=torch.float64)
    with torch.no_grad():
        before = blk(x)
        blk.reparameterize()
        after = blk(x)
    assert [n for n, _ in blk.named_parameters()] == ["merged.weight", "merged.bias"]
    assert blk.merged.weight.shape == (8, 1, 51, 51)
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)


def test_slak_reparameterize_equivalence():
    torch.manual_seed(0)
    # smaller big kernels keep the merged dense float64 convs cheap; 51 is covered above
    model = slak.SLaK(num_classes=10, kernel_sizes=(13, 11, 9, 7), **SMALL_SLAK)
    model = check_reparam_equivalence(model, res=64)
    lk = model.stages[0][0].large_kernel
    assert lk.merged.weight.shape == (16, 1, 13, 13) and lk.LoRA1 is None


# ---------------------------------------------------------------- ConvNeXt-T (timm) in the same harness
def test_convnext_tiny_same_harness():
    torch.manual_seed(0)
    model = timm.create_model("convnext_tiny", num_classes=10)
    model.eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 64))
    assert y.shape == (1, 10)
    print(f"convnext_tiny (10 classes) params: {n_params(model):,}")
