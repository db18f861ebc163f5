"""Reference ShiftWise_v2 state_dict <-> swconv conversion (SPEC §6.4)."""

import re

import pytest
import timm
import torch

import swconv  # noqa: F401
from swconv.models.convert import convert_reference_state_dict, is_reference_state_dict, to_reference_state_dict
from swconv.models.shiftwise_v2 import ShiftWiseV2

CFG = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), kernel_sizes=(51, 49, 47, 13, 3), num_classes=10)
SW_BUFFERS = ("rep_index", "ghost_index", "perm_h", "perm_v", "identity_pick", "kernel_mask")


def randomized(seed: int, **kw) -> ShiftWiseV2:
    """A small model with every parameter and BN statistic non-trivial."""
    torch.manual_seed(seed)
    model = ShiftWiseV2(**dict(CFG, **kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_reference_naming_and_shapes():
    ref = to_reference_state_dict(randomized(0))
    assert is_reference_state_dict(ref)
    c0, c3 = 16, 128
    assert ref["downsample_layers.0.0.weight"].shape == (c0 // 2, 3, 3, 3)
    assert ref["downsample_layers.0.3.weight"].shape == (c0, c0 // 2, 3, 3)
    assert ref["downsample_layers.0.4.bias"].shape == (c0,)
    assert ref["downsample_layers.2.0.weight"].shape == (64, 32, 3, 3)
    rep, nk = 12, 17  # C=16, ghost 0.23 -> rep 12; K=51, k=3 -> 17 slots
    assert ref["stages.0.0.large_kernel.LoRAs.1.weight"].shape == (rep * nk, 1, 3, 3)
    for bn in ("bn_lora1", "bn_lora2", "bn_small"):
        assert ref[f"stages.0.0.large_kernel.{bn}.running_var"].shape == (rep,)
    assert ref["stages.2.1.se.down.weight"].shape == (16, 64, 1, 1)
    assert ref["stages.2.1.pwconv1.1.weight"].shape == (256, 64)
    assert ref["stages.2.1.act.1.gamma"].shape == (1, 1, 1, 256)
    assert ref["stages.2.1.act.1.beta"].shape == (1, 1, 1, 256)
    assert ref["stages.2.1.pwconv2.0.weight"].shape == (64, 256)
    assert "stages.2.1.pwconv2.0.bias" not in ref
    assert ref["stages.2.1.pwconv2.2.running_mean"].shape == (64,)
    assert ref["stages.2.1.gamma"].shape == (64,)
    assert ref["head.weight"].shape == (10, c3) and ref["norm.bias"].shape == (c3,)
    assert not any(k.endswith(SW_BUFFERS) for k in ref)
    assert not any(re.search(r"\.blocks\.|\.conv\.paths|^stem\.", k) for k in ref)


def test_round_trip_strict_and_equal():
    src = randomized(0)
    ref = to_reference_state_dict(src.state_dict())
    converted = convert_reference_state_dict(ref, n_rep=4)
    dst = randomized(1)
    assert not torch.equal(outputs(dst, X), outputs(src, X))
    dst.load_state_dict(converted, strict=True)
    torch.testing.assert_close(outputs(dst, X), outputs(src, X), rtol=0, atol=0)
    # and back again: identical reference dict
    again = to_reference_state_dict(dst)
    assert again.keys() == ref.keys() and all(torch.equal(again[k], ref[k]) for k in ref)


def test_regenerated_tables_equal_model():
    model = randomized(0, n_rep=2)
    converted = convert_reference_state_dict(to_reference_state_dict(model), n_rep=2)
    sd = model.state_dict()
    n = 0
    for key in sd:
        if key.endswith(SW_BUFFERS):
            assert converted[key].dtype == sd[key].dtype, key
            assert torch.equal(converted[key], sd[key]), key
            n += 1
    assert n == 6 * 5


def test_merged_round_trip():
    src = randomized(0).merge_paths()
    ref = to_reference_state_dict(src)
    assert "stages.0.0.large_kernel.LoRA.weight" in ref
    assert not any(".LoRAs." in k for k in ref)
    converted = convert_reference_state_dict(ref)
    dst = randomized(1).merge_paths()
    dst.load_state_dict(converted, strict=True)
    torch.testing.assert_close(outputs(dst, X), outputs(src, X), rtol=0, atol=0)
    # an unmerged model exported as merged loads into a merged (or n_path=1) model
    unmerged = randomized(2)
    dst1 = randomized(3, n_path=1)
    dst1.load_state_dict(convert_reference_state_dict(to_reference_state_dict(unmerged, merged=True)), strict=True)
    torch.testing.assert_close(outputs(dst1, X), outputs(unmerged, X), rtol=1e-5, atol=1e-5)


def test_pruned_kernels_become_masks():
    src = randomized(0)
    layer = src.sw_layers()[1]
    layer.kernel_mask[0, 3:9] = 0
    layer.kernel_mask[1, 5:7] = 0
    ref = to_reference_state_dict(src)
    w = ref["stages.1.0.large_kernel.LoRAs.0.weight"]
    assert (w[3:9] == 0).all() and (w[9] != 0).any()
    converted = convert_reference_state_dict(ref)
    torch.testing.assert_close(converted["stages.1.blocks.0.conv.kernel_mask"], layer.kernel_mask, rtol=0, atol=0)
    dst = randomized(1)
    dst.load_state_dict(converted, strict=True)
    torch.testing.assert_close(outputs(dst, X), outputs(src, X), rtol=0, atol=0)
    ones = convert_reference_state_dict(ref, masks_from_zeros=False)
    assert (ones["stages.1.blocks.0.conv.kernel_mask"] == 1).all()


def test_checkpoint_wrapping_and_timm_pretrained_file(tmp_path):
    src = randomized(0)
    ref = to_reference_state_dict(src)
    wrapped = {"model": {"module." + k: v for k, v in ref.items()}, "epoch": 3}
    dst = randomized(1)
    dst.load_state_dict(convert_reference_state_dict(wrapped), strict=True)
    torch.testing.assert_close(outputs(dst, X), outputs(src, X), rtol=0, atol=0)
    path = tmp_path / "ref.pth"
    torch.save(ref, path)
    # num_classes in the overlay: otherwise timm drops a classifier whose size differs from the cfg
    model = timm.create_model(
        "shiftwise_v2_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **CFG
    )
    torch.testing.assert_close(outputs(model, X), outputs(src, X), rtol=0, atol=0)


def test_not_a_reference_state_dict():
    ours = randomized(0).state_dict()
    with pytest.raises(ValueError, match="not a reference ShiftWise_v2 state_dict.*already"):
        convert_reference_state_dict(ours)
    with pytest.raises(ValueError, match="not a reference ShiftWise_v2"):
        convert_reference_state_dict({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)})
    ref = to_reference_state_dict(randomized(0))
    with pytest.raises(ValueError, match="stages.0.0.dwconv.weight"):
        convert_reference_state_dict(dict(ref, **{"stages.0.0.dwconv.weight": torch.zeros(1)}))
    bad = dict(ref)
    bad["stages.0.0.large_kernel.bn_lora1.weight"] = torch.ones(5)  # rep that does not divide the rows
    with pytest.raises(ValueError, match="multiple of rep"):
        convert_reference_state_dict(bad)
    with pytest.raises(ValueError, match="not a swconv ShiftWiseV2 state_dict"):
        to_reference_state_dict(ref)
