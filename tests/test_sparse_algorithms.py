"""Pure mask algorithms and schedule (no Lightning)."""

import math

import pytest
import torch

from swconv.sparse import masks as M
from swconv.sparse.schedule import CosineDecay, make_schedule


def test_cosine_schedule_endpoints():
    s = CosineDecay(0.3, 0.005, 1000)
    assert s(0) == pytest.approx(0.3)
    assert s(500) == pytest.approx(0.005 + 0.5 * 0.295)
    assert s(1000) == pytest.approx(0.005)
    assert s(2000) == pytest.approx(0.005)  # clamped after T
    assert make_schedule("constant", 0.2, 0.0, 10)(7) == 0.2
    vals = [s(t) for t in range(0, 1001, 50)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


@pytest.mark.parametrize("rate", [0.3, 0.1, 0.005, 0.5])
def test_magnitude_prune_count_and_choice(rate):
    g = torch.Generator().manual_seed(0)
    n = 200
    mask = torch.rand(n, generator=g) < 0.7
    w = torch.randn(n, 1, 3, 3, generator=g) * mask.view(-1, 1, 1, 1)
    score = M.kernel_magnitude(w)
    new, removed = M.magnitude_prune(mask, score, rate)
    active = int(mask.sum())
    assert removed == math.ceil(rate * active)
    assert int(new.sum()) == active - removed
    assert not (new & ~mask).any()  # only active kernels are removed
    pruned = mask & ~new
    # the removed ones are exactly the lowest-score active kernels
    assert score[pruned].max() <= score[new].min()


def test_magnitude_prune_ties_by_index():
    mask = torch.ones(6, dtype=torch.bool)
    score = torch.tensor([1.0, 0.0, 0.0, 2.0, 0.0, 3.0])
    new, removed = M.magnitude_prune(mask, score, 0.4)  # ceil(2.4) = 3
    assert removed == 3
    assert new.tolist() == [True, False, False, True, False, True]


def test_random_regrow_expectation():
    n, trials = 400, 400
    base = torch.zeros(n, dtype=torch.bool)
    base[:250] = True  # 150 zeros
    removed = 37
    g = torch.Generator().manual_seed(1)
    counts = []
    for _ in range(trials):
        new = M.random_regrow(base, removed, g)
        assert not (base & ~new).any()  # never removes
        counts.append(int(new.sum()) - 250)
    mean = sum(counts) / trials
    # binomial(150, 37/150): sd of the mean = sqrt(150 p (1-p) / trials) ~ 0.26
    assert abs(mean - removed) < 1.5


def test_gradient_regrow_picks_largest():
    mask = torch.tensor([1, 0, 0, 1, 0, 0], dtype=torch.bool)
    g = torch.tensor([9.0, 1.0, 5.0, 9.0, 5.0, 0.5])
    new = M.gradient_regrow(mask, g, 2)
    assert new.tolist() == [True, False, True, True, True, False]


def test_snip_densities_reproducible_and_global():
    def scores(seed):
        g = torch.Generator().manual_seed(seed)
        return [torch.rand(60, 2, generator=g) * s for s in (1.0, 0.5, 2.0)]

    d1 = M.snip_layer_densities(scores(3), 0.7)
    d2 = M.snip_layer_densities(scores(3), 0.7)
    assert d1 == d2
    total = sum(d * 120 for d in d1) / 360
    # int(0.7 * 360) = 251 (float truncation) and the threshold score itself counts as pruned
    assert total == pytest.approx(0.7, abs=3 / 360)
    assert d1[2] > d1[0] > d1[1]  # larger scores -> denser layer
    # masks drawn from the round-0 generator are reproducible too
    m1 = [M.random_mask(60, d, M.round_generator(5, 0)) for d in d1]
    m2 = [M.random_mask(60, d, M.round_generator(5, 0)) for d in d2]
    assert all(torch.equal(a, b) for a, b in zip(m1, m2))


def test_erk_and_uniform_densities():
    shapes = [(60 * 17, 1, 3, 3), (122 * 17, 1, 3, 3), (246 * 16, 1, 3, 3), (492 * 5, 1, 3, 3)]
    counts = [2 * math.prod(s) for s in shapes]
    d = M.erk_layer_densities(shapes, counts, 0.7)
    assert sum(a * c for a, c in zip(d, counts)) / sum(counts) == pytest.approx(0.7, rel=1e-6)
    assert all(0 < x <= 1 for x in d)
    assert d[0] >= d[1] >= d[2]  # smaller layers denser
    assert M.uniform_layer_densities(3, 0.7) == [0.7] * 3


def test_random_mask_placement():
    g = torch.Generator().manual_seed(0)
    m = M.random_mask(1000, 0.7, g, "exact")
    assert int(m.sum()) == 700
    m = M.random_mask(20000, 0.7, g, "bernoulli")
    assert abs(m.float().mean().item() - 0.7) < 0.02


def test_round_generator_and_checksum():
    a = torch.rand(5, generator=M.round_generator(1, 7))
    b = torch.rand(5, generator=M.round_generator(1, 7))
    c = torch.rand(5, generator=M.round_generator(1, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    m = [torch.ones(2, 10), torch.zeros(2, 4)]
    m2 = [x.clone() for x in m]
    assert M.masks_checksum(m) == M.masks_checksum(m2)
    m2[0][1, 3] = 0
    assert M.masks_checksum(m) != M.masks_checksum(m2)
