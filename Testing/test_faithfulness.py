"""ACATCore.saliency.faithfulness: deletion / insertion AUC, Spearman, model randomisation (fast, CPU)."""
import math

import numpy as np
import pytest
import torch

from ACATCore.errors import ConfigError, InputError
from ACATCore.models import calibrate_batchnorm
from ACATCore.saliency.faithfulness import (blurred_reference, curve_auc, deletion_insertion,
                                            perturbation_masks, randomised_copy, removal_order, spearman)

SHAPE = (3, 1, 8, 8)                      # (S, 1, H, W)


def _toy():
    """A 'model' whose probability depends only on 4 informative voxels: sigmoid(8 (mean - 0.5))."""
    info = torch.zeros(SHAPE, dtype=torch.bool)
    info[1, 0, 2:4, 5:7] = True
    x = torch.full(SHAPE, 0.5)
    x[info] = 1.0

    def prob(batch):
        return torch.sigmoid(8 * (batch[:, info].mean(1) - 0.5))
    return x, info, prob


def test_deletion_of_the_true_map_beats_the_reversed_map():
    x, info, prob = _toy()
    good = info.float() + 0.01 * torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    reverse = 1.0 - good
    ref = torch.zeros_like(x)
    a = deletion_insertion(prob, x, good, ref, steps=20)
    b = deletion_insertion(prob, x, reverse, ref, steps=20)
    assert a["deletion"] < b["deletion"] - 0.3
    assert a["insertion"] > b["insertion"] + 0.3
    assert a["deletion_curve"].shape == (21,)
    # both curves start / end at the input's and the reference's probability
    p_in, p_ref = float(prob(x[None])), float(prob(ref[None]))
    for r in (a, b):
        assert r["deletion_curve"][0] == pytest.approx(p_in) and r["deletion_curve"][-1] == pytest.approx(p_ref)
        assert r["insertion_curve"][0] == pytest.approx(p_ref) and r["insertion_curve"][-1] == pytest.approx(p_in)


def test_batching_does_not_change_the_curves():
    x, info, prob = _toy()
    s = torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))
    ref = blurred_reference(x, 1.0)
    a = deletion_insertion(prob, x, s, ref, steps=10, batch_size=3)
    b = deletion_insertion(prob, x, s, ref, steps=10)
    np.testing.assert_allclose(a["deletion_curve"], b["deletion_curve"], rtol=1e-6)
    np.testing.assert_allclose(a["insertion_curve"], b["insertion_curve"], rtol=1e-6)


def test_order_masks_and_auc():
    s = np.array([0.1, 0.9, 0.0, 0.0, 0.5])
    order = removal_order(s, seed=0)
    assert order[:2].tolist() == [1, 4] and order[2] == 0 and set(order[3:].tolist()) == {2, 3}
    m = perturbation_masks(order, 5)
    assert m.shape == (6, 5) and m.sum(1).tolist() == [0, 1, 2, 3, 4, 5]
    assert curve_auc([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert curve_auc([1.0, 0.0]) == pytest.approx(0.5)
    assert curve_auc(np.linspace(1, 0, 21)) == pytest.approx(0.5)


def test_ties_are_broken_at_random_not_by_layout():
    firsts = {int(removal_order(np.zeros(100), seed=k)[0]) for k in range(5)}
    assert len(firsts) > 1


def test_spearman():
    rng = np.random.default_rng(0)
    a = rng.random((4, 5, 6))
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, a ** 3 + 2) == pytest.approx(1.0)          # monotone: same ranks
    assert spearman(a, -a) == pytest.approx(-1.0)
    big = rng.random(20000)
    assert abs(spearman(big, rng.random(big.size))) < 0.05        # independent maps: ~0
    assert math.isnan(spearman(a, np.zeros_like(a)))                # constant: nothing to rank
    # ties take average ranks (scipy's convention): Pearson of the hand-ranked values
    u, v = np.array([0, 0, 1, 2, 2, 3.0]), np.array([1, 0, 0, 3, 2, 2.0])
    ru, rv = np.array([1.5, 1.5, 3, 4.5, 4.5, 6]), np.array([3, 1.5, 1.5, 6, 4.5, 4.5])
    assert spearman(u, v) == pytest.approx(np.corrcoef(ru, rv)[0, 1])
    keep = u > 0                                                    # u: 1, 2, 2, 3; v: 0, 3, 2, 2
    assert spearman(u, v, where=keep) == pytest.approx(
        np.corrcoef([1, 2.5, 2.5, 4], [1, 4, 2.5, 2.5])[0, 1])


def test_randomised_copy_changes_every_parameter_and_keeps_the_original():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    with torch.no_grad():
        net[1].weight.fill_(2.0)
        net[1].running_mean.fill_(0.3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rnd, changed = randomised_copy(net, seed=1)
    assert changed > 0.9 and not rnd.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])                          # the original is untouched
    assert not torch.equal(rnd[0].weight, net[0].weight)
    assert torch.equal(rnd[1].running_mean, torch.zeros(4))
    again, _ = randomised_copy(net, seed=1)
    assert torch.equal(again[4].weight, rnd[4].weight)            # seeded
    calibrate_batchnorm(rnd, [torch.randn(5, 1, 8, 8) + 3.0], forward=lambda m, b: m(b))
    assert not rnd.training and float(rnd[1].running_mean.abs().sum()) > 0


def test_deletion_insertion_exact_curve_of_a_linear_model():
    """Only voxel (0, 0) matters: P = sigmoid(4 x00); the true map removes it in the first step."""
    def prob(batch):
        return torch.sigmoid(4.0 * batch[:, 0, 0, 0])

    x = torch.ones(1, 2, 2)
    good = torch.zeros_like(x); good[0, 0, 0] = 1
    bad = 1 - good
    ref = torch.zeros_like(x)
    r_good = deletion_insertion(prob, x, good, ref, steps=4)
    r_bad = deletion_insertion(prob, x, bad, ref, steps=4)
    p1, p0 = 1 / (1 + math.exp(-4)), 0.5
    assert r_good["deletion_curve"].tolist() == pytest.approx([p1, p0, p0, p0, p0])
    assert r_good["deletion"] == pytest.approx(0.25 * (p1 + p0) / 2 + 0.75 * p0)
    assert r_bad["deletion"] > r_good["deletion"] and r_good["insertion"] > r_bad["insertion"]
    with pytest.raises(InputError):
        deletion_insertion(prob, x, torch.zeros(5), ref)
    with pytest.raises(ConfigError):
        deletion_insertion(prob, x, good, ref, steps=0)


def test_randomisation_decorrelates_a_gradient_map_but_not_a_model_blind_one():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(4, 16)

    def grad_map(m):
        xx = x.clone().requires_grad_(True)
        m(xx).sum().backward()
        return xx.grad.abs()

    rnd, _ = randomised_copy(model, seed=1)
    assert spearman(grad_map(model), grad_map(rnd)) < 0.9
    blind = torch.arange(64.0)                                    # a map that ignores the model
    assert spearman(blind, blind.clone()) == pytest.approx(1.0)
