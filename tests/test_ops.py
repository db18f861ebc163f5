"""Exactness of the shift-wise operator against an independently built dense cross-shaped kernel."""

import copy
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from swconv.ops import ShiftWiseConv2d, shift_wise_conv, slot_offsets, split_channels
from swconv.ops.functional import IMPL_ENV, resolve_impl
from swconv.ops.tables import make_shift_tables

KERNEL_SIZES = [(51, 3), (49, 3), (47, 3), (13, 3), (51, 5), (49, 5), (13, 5)]
TORCH_IMPLS = ["torch_dense", "torch_shift"]
REL_TOL = 1e-10


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def dense_reference(x, weight, perm_h, perm_v, identity_pick, big_kernel):
    """SPEC §1.6 spelled out: place every small kernel at its slot on a square canvas centred on
    the output pixel, then one zero-padded depthwise correlation per branch."""
    n_rep, channels, n_slots = perm_h.shape
    k = weight.shape[-1]
    r, m = k // 2, big_kernel // 2
    reach = n_slots * k  # canvas half-width, larger than any offset
    size = 2 * reach + 1
    canvases = torch.zeros(3, channels, 1, size, size, dtype=x.dtype)
    small = weight.view(channels, n_slots, k, k)
    for c in range(channels):
        for g in range(n_rep):
            for s in range(n_slots):
                centre = s * k + r - m  # slot centre along the long axis
                rows = slice(reach - r, reach + r + 1)
                cols = slice(reach + centre - r, reach + centre + r + 1)
                canvases[0, c, 0, rows, cols] += small[c, perm_h[g, c, s]]
                canvases[1, c, 0, cols, rows] += small[c, perm_v[g, c, s]]
            canvases[2, c, 0, reach - r : reach + r + 1, reach - r : reach + r + 1] += small[c, identity_pick[g, c]]
    return tuple(F.conv2d(x, canvases[b], padding=reach, groups=channels) for b in range(3))


def random_case(rng: random.Random):
    big, small = rng.choice(KERNEL_SIZES)
    return dict(
        big=big,
        small=small,
        channels=rng.choice([1, 3, 5, 7, 9, 13]),
        height=rng.randint(1, 40),
        width=rng.randint(1, 40),
        batch=rng.choice([1, 2]),
        n_rep=rng.randint(1, 4),
    )


def case_tensors(case, seed):
    gen = torch.Generator().manual_seed(seed)
    nk = -(-case["big"] // case["small"])
    x = torch.randn(case["batch"], case["channels"], case["height"], case["width"], generator=gen, dtype=torch.float64)
    w = torch.randn(case["channels"] * nk, 1, case["small"], case["small"], generator=gen, dtype=torch.float64)
    tables = make_shift_tables(case["channels"], nk, case["n_rep"], seed=seed)
    return x, w, tables


EDGE_CASES = [
    dict(big=51, small=3, channels=3, height=1, width=1, batch=1, n_rep=4),
    dict(big=51, small=5, channels=5, height=2, width=3, batch=1, n_rep=2),  # H, W < k
    dict(big=13, small=3, channels=1, height=40, width=1, batch=2, n_rep=1),
    dict(big=49, small=3, channels=7, height=7, width=40, batch=1, n_rep=3),  # K > H
    dict(big=47, small=3, channels=9, height=14, width=14, batch=1, n_rep=4),
]
RANDOM_CASES = [random_case(random.Random(i)) for i in range(60)]
# every (K, k) appears at least once regardless of the random draw
COVERAGE_CASES = [dict(big=b, small=s, channels=5, height=11, width=17, batch=2, n_rep=4) for b, s in KERNEL_SIZES]


@pytest.mark.parametrize(
    "case",
    EDGE_CASES + COVERAGE_CASES + RANDOM_CASES,
    ids=lambda c: "K{big}k{small}C{channels}H{height}W{width}B{batch}N{n_rep}".format(**c),
)
def test_operator_matches_dense_cross_kernel(case):
    x, w, (perm_h, perm_v, ident) = case_tensors(case, seed=hash(tuple(case.values())) % 10_000)
    expected = dense_reference(x, w, perm_h, perm_v, ident, case["big"])
    results = {impl: shift_wise_conv(x, w, perm_h, perm_v, ident, case["big"], impl=impl) for impl in TORCH_IMPLS}
    for impl, got in results.items():
        for branch, (g, e) in enumerate(zip(got, expected)):
            assert g.shape == e.shape
            assert rel_err(g, e) <= REL_TOL, (impl, branch)
    for a, b in zip(*results.values()):
        assert rel_err(a, b) <= REL_TOL


@pytest.mark.parametrize("ghost_ratio", [0.0, 0.23])
@pytest.mark.parametrize("n_path", [1, 2])
@pytest.mark.parametrize("train", [True, False])
def test_layer_matches_spec(ghost_ratio, n_path, train):
    rng = random.Random(n_path * 10 + int(train) + int(ghost_ratio * 100))
    for _ in range(3):
        case = random_case(rng)
        channels = rng.choice([9, 13, 21])
        layer = ShiftWiseConv2d(channels, case["big"], case["small"], ghost_ratio, n_path, case["n_rep"]).double()
        for bn in (layer.bn_h, layer.bn_v, layer.bn_i):  # non-trivial affine + running stats
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        for p in layer.paths:
            p.weight.data.normal_()
        layer.kernel_mask.bernoulli_(0.7)
        layer.train(train)
        x = torch.randn(2, channels, case["height"], case["width"], dtype=torch.float64)
        ref = copy.deepcopy(layer)
        x_rep, x_ghost = x[:, ref.rep_index], x[:, ref.ghost_index]
        weight = sum(ref.kernel_mask[q].view(-1, 1, 1, 1) * ref.paths[q].weight for q in range(n_path))
        h, v, i = dense_reference(x_rep, weight.detach(), ref.perm_h, ref.perm_v, ref.identity_pick, case["big"])
        expected = torch.cat([ref.bn_h(h) + ref.bn_v(v) + ref.bn_i(i) + x_rep, x_ghost], 1)
        for impl in TORCH_IMPLS:
            layer.impl = impl
            assert rel_err(layer(x), expected) <= REL_TOL


@pytest.mark.parametrize("impl", TORCH_IMPLS)
def test_gradcheck(impl):
    case = dict(big=13, small=3, channels=3, height=5, width=4, batch=1, n_rep=2)
    x, w, (perm_h, perm_v, ident) = case_tensors(case, seed=7)
    x.requires_grad_()
    w.requires_grad_()
    active = torch.rand(w.shape[0], generator=torch.Generator().manual_seed(1)) > 0.3

    def fn(x, w):
        return shift_wise_conv(x, w, perm_h, perm_v, ident, 13, kernel_active=active, impl=impl)

    assert torch.autograd.gradcheck(fn, (x, w))


def test_inactive_kernels_are_zero_and_get_no_gradient():
    case = dict(big=49, small=3, channels=5, height=9, width=12, batch=2, n_rep=4)
    x, w, tables = case_tensors(case, seed=3)
    active = torch.arange(w.shape[0]) % 3 != 0
    w.requires_grad_()
    for impl in TORCH_IMPLS:
        out = shift_wise_conv(x, w, *tables, 49, kernel_active=active, impl=impl)
        masked = shift_wise_conv(x, w.detach() * active.view(-1, 1, 1, 1), *tables, 49, impl=impl)
        assert all(rel_err(a, b) <= REL_TOL for a, b in zip(out, masked))
        w.grad = None
        sum(o.sum() for o in out).backward()
        assert torch.all(w.grad[~active] == 0) and torch.any(w.grad[active] != 0)


def test_merge_paths_is_exact():
    layer = ShiftWiseConv2d(13, 47, 3, 0.23, n_path=2, n_rep=4).double().eval()
    for p in layer.paths:
        p.weight.data.normal_()
    layer.kernel_mask.bernoulli_(0.6)
    x = torch.randn(2, 13, 10, 9, dtype=torch.float64)
    before = layer(x)
    layer.merge_paths()
    assert layer.n_path == 1 and layer.kernel_mask.shape[0] == 1
    assert rel_err(layer(x), before) <= REL_TOL


def test_low_precision_close_to_float64():
    layer = ShiftWiseConv2d(16, 51, 3, 0.23).eval()
    x = torch.randn(2, 16, 12, 12)
    ref = copy.deepcopy(layer).double()(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert rel_err(out.double(), ref) < 2e-2


# --- tables ---------------------------------------------------------------------------------


def test_tables_follow_reference_draw_order():
    rep, nk, n_rep = 7, 17, 3
    with torch.random.fork_rng():
        torch.manual_seed(123)  # the reference reseeds the global generator and draws in this order
        h = [[torch.randperm(nk) for _ in range(rep)] for _ in range(n_rep)]
        v = [[torch.randperm(nk) for _ in range(rep)] for _ in range(n_rep)]
        i = [torch.randint(0, nk, (rep,)) for _ in range(n_rep)]
    perm_h, perm_v, ident = make_shift_tables(rep, nk, n_rep)
    assert torch.equal(perm_h, torch.stack([torch.stack(g) for g in h]))
    assert torch.equal(perm_v, torch.stack([torch.stack(g) for g in v]))
    assert torch.equal(ident, torch.stack(i))


@pytest.mark.parametrize("channels,expected_rep", [(80, 60), (160, 122), (320, 246), (640, 492), (96, 72), (1024, 788)])
def test_ghost_split_matches_reference(channels, expected_rep):
    rep, ghost = split_channels(channels, 0.23, "v2")
    assert rep.numel() == expected_rep
    state = np.random.get_state()
    np.random.seed(123)
    drawn = np.sort(np.random.choice(channels, channels - expected_rep, replace=False))
    np.random.set_state(state)
    assert np.array_equal(ghost.numpy(), drawn)
    assert sorted(rep.tolist() + ghost.tolist()) == list(range(channels))


def test_v1_split_formula():
    rep, ghost = split_channels(96, 0.23, "v1")
    assert ghost.numel() == int(96 * 0.23) and rep.numel() == 96 - int(96 * 0.23)


def test_tables_are_deterministic_buffers_without_global_rng_side_effects():
    np_state = np.random.get_state()
    torch.manual_seed(0)
    a = ShiftWiseConv2d(80, 51, 3, n_path=2)
    after_layer = torch.get_rng_state()
    torch.manual_seed(0)  # the same parameter inits alone: the tables must not consume global draws
    for _ in range(2):
        torch.nn.Conv2d(60, 60 * 17, 3, groups=60, bias=False)
    assert torch.equal(after_layer, torch.get_rng_state())
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    torch.manual_seed(1)
    b = ShiftWiseConv2d(80, 51, 3, n_path=2)
    assert not torch.equal(a.paths[0].weight, b.paths[0].weight)  # init follows the user's seed
    for name in ["rep_index", "ghost_index", "perm_h", "perm_v", "identity_pick"]:
        assert torch.equal(getattr(a, name), getattr(b, name))  # equal-width modules share tables
        assert name in a.state_dict()
    assert "kernel_mask" in a.state_dict()


def test_slot_offsets_match_spec():
    assert slot_offsets(51, 3)[:2] == [-24, -21] and slot_offsets(51, 3)[-1] == 24  # extent -25..25
    assert slot_offsets(13, 3) == [-5, -2, 1, 4, 7]


# --- dispatch and bad input -------------------------------------------------------------------


def test_dispatch(monkeypatch):
    x = torch.zeros(1, 1, 1, 1)
    assert resolve_impl("auto", x) == "torch_dense"
    monkeypatch.setenv(IMPL_ENV, "torch_shift")
    assert resolve_impl("auto", x) == "torch_shift"
    assert resolve_impl("torch_dense", x) == "torch_dense"  # explicit config beats the env default
    with pytest.raises(RuntimeError, match="CUDA device"):
        resolve_impl("cuda", x)
    monkeypatch.setenv(IMPL_ENV, "bogus")
    with pytest.raises(ValueError, match="SWCONV_IMPL"):
        resolve_impl("auto", x)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="odd"):
        ShiftWiseConv2d(8, 51, 4)
    with pytest.raises(ValueError, match="no rep channel"):
        ShiftWiseConv2d(1, 51, 3, ghost_ratio=0.5)
    layer = ShiftWiseConv2d(8, 13, 3)
    with pytest.raises(ValueError, match="expects"):
        layer(torch.randn(1, 7, 5, 5))


def test_kernel_availability_is_traced_as_a_constant():
    """torch.compile must not trace into the availability check (it used to warn about tracing
    through a functools cache) and must agree with eager."""
    import warnings

    from swconv.ops.functional import cuda_kernels_available

    torch._dynamo.reset()

    def fn(x):
        return x + 1 if cuda_kernels_available() else x - 1

    x = torch.randn(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(fn, backend="eager", fullgraph=True)(x)
    assert torch.equal(compiled, fn(x))
    assert not [w for w in caught if "cache" in str(w.message)], [str(w.message) for w in caught]
