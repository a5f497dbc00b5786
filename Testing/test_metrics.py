"""Metrics against hand-computed answers, edge cases included."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from ACATCore import metrics as M
from ACATCore.errors import ConfigError, InputError


# --------------------------------------------------------------- hit score
def test_hit_inside_and_outside():
    s = np.zeros((2, 4, 4)); s[1, 2, 3] = 1.0
    r = np.zeros((2, 4, 4), bool); r[1, 2, 3] = True
    assert M.is_hit(s, r)
    r2 = np.zeros((2, 4, 4), bool); r2[0, 0, 0] = True
    assert not M.is_hit(s, r2)


def test_empty_or_missing_region_is_never_a_hit():
    s = np.random.default_rng(0).random((3, 4, 4))
    assert not M.is_hit(s, np.zeros((3, 4, 4), bool))
    assert not M.is_hit(s, None)


def test_nan_map_and_ties():
    r = np.ones((2, 2), bool)
    assert not M.is_hit(np.full((2, 2), np.nan), r)
    s = np.array([[np.nan, 0.2], [0.9, 0.1]])
    assert M.is_hit(s, np.array([[False, False], [True, False]]))
    tie = np.array([[1.0, 1.0], [0.0, 0.0]])            # first maximal voxel (C order) counts
    assert M.is_hit(tie, np.array([[True, False], [False, False]]))
    assert not M.is_hit(tie, np.array([[False, True], [False, False]]))


def test_hit_score_over_cases_with_territories():
    labels = np.zeros((1, 4, 6), int)
    labels[0, :, :3] = M.TERRITORIES.index("MCA right") + 1
    labels[0, :, 3:] = M.TERRITORIES.index("MCA left") + 1
    hot_right = np.zeros((1, 4, 6)); hot_right[0, 1, 1] = 1
    hot_left = np.zeros((1, 4, 6)); hot_left[0, 1, 4] = 1
    mask = M.region_mask(labels, "MCA right")
    assert mask.sum() == 12
    # hit, miss, missing region (miss), empty region PCA left (miss) -> 1 / 4
    score = M.hit_score([hot_right, hot_left, hot_right, hot_right],
                        [mask, mask, None, M.region_mask(labels, "PCA left")])
    assert score == pytest.approx(0.25)
    assert math.isnan(M.hit_score([], []))
    with pytest.raises(ConfigError):
        M.region_mask(labels, "MCA middle")
    assert len(M.TERRITORIES) == 6


def test_hit_accepts_torch_and_checks_shape():
    s = torch.zeros(1, 3, 1, 4, 4); s[0, 2, 0, 1, 1] = 1
    r = torch.zeros(3, 4, 4, dtype=torch.bool); r[2, 1, 1] = True
    assert M.is_hit(s, r)
    with pytest.raises(InputError):
        M.is_hit(np.zeros((3, 3)), np.zeros((4, 4), bool))


# --------------------------------------------------------------- IoU / Dice
def test_iou_dice_dynamic_percentile_hand_computed():
    s = np.arange(100, dtype=float).reshape(10, 10)     # top 10 values are row 9
    m = np.zeros((10, 10), bool)
    m[9, :5] = True; m[8, :5] = True                    # 10 voxels, 5 of them in the top-10
    iou, dice = M.iou_dice(s, m)
    assert iou == pytest.approx(5 / 15)                 # |pred|=10, |m|=10, inter=5, union=15
    assert dice == pytest.approx(2 * 5 / 20)
    perfect = np.zeros((10, 10), bool); perfect[9] = True
    assert M.iou_dice(s, perfect) == pytest.approx((1.0, 1.0))
    assert M.iou_dice(-s, perfect) == pytest.approx((1.0, 1.0))                # abs: |-s| == s
    assert M.iou_dice(-s, perfect, use_abs=False) == pytest.approx((0.0, 0.0))  # signed: row 0 on top


def test_iou_dice_edge_cases():
    m = np.zeros((4, 4), bool)
    assert all(math.isnan(v) for v in M.iou_dice(np.ones((4, 4)), m))   # empty mask: undefined
    m[0, 0] = True
    assert M.iou_dice(np.zeros((4, 4)), m) == (0.0, 0.0)                  # flat map selects nothing
    with pytest.raises(InputError):
        M.iou_dice(np.zeros((3, 3)), m)


def test_binarise_smoothing_is_in_plane_for_stacks():
    s = np.zeros((3, 9, 9)); s[1, 4, 4] = 1.0
    b = M.binarise_dynamic(s, mask_fraction=9 / s.size, sigma=1.0)
    assert b.sum() == 9 and b[1, 3:6, 3:6].all()        # 3x3 around the peak, on its own slice only
    assert not b[0].any() and not b[2].any()


# --------------------------------------------------------------- classification
def test_accuracy_and_groups():
    y = [0, 1, 2, 3, 0, 1]
    p = [0, 1, 2, 0, 1, 1]
    assert M.accuracy(y, p) == pytest.approx(4 / 6)
    assert M.accuracy(np.array([1, 0]), torch.tensor([1, 1])) == 0.5
    g = M.accuracy_by_group(y, p, [0, 1, 1, 2, 0, 2])
    assert g == {0: 0.5, 1: 1.0, 2: 0.5}
    assert math.isnan(M.accuracy([], []))
    with pytest.raises(InputError):
        M.accuracy([0, 1], [0])


def test_sensitivity_specificity():
    y = [0, 0, 0, 1, 1, 2, 3, 3]
    p = [0, 1, 0, 1, 0, 1, 3, 0]            # brain: any lesion positive; class 2 predicted as 1 detects it
    sens, spec = M.sensitivity_specificity(y, p)
    assert sens == pytest.approx(3 / 5) and spec == pytest.approx(2 / 3)
    sens, spec = M.sensitivity_specificity([1, 1], [1, 0])
    assert sens == 0.5 and math.isnan(spec)
    sens, spec = M.sensitivity_specificity([0, 0, 0], [0, 1, 1])
    assert math.isnan(sens) and spec == pytest.approx(1 / 3)
    with pytest.raises(InputError):
        M.sensitivity_specificity([0, 1], [0])


def test_mean_sem():
    mean, sem = M.mean_sem([70.0, 72.0, 74.0])
    assert mean == pytest.approx(72.0) and sem == pytest.approx(2.0 / math.sqrt(3))
    m1, s1 = M.mean_sem([5.0])
    assert m1 == 5.0 and math.isnan(s1)
    assert all(math.isnan(v) for v in M.mean_sem([]))
    m2, s2 = M.mean_sem([1.0, 3.0, float("nan")])                   # NaN runs are left out
    assert m2 == 2.0 and s2 == pytest.approx(1.0)


# --------------------------------------------------------------- pre-activation variance
class _Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2, bias=False)
        self.b = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.eye(2))
            self.b.weight.copy_(torch.tensor([[1.0, 1.0]]))

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_preactivation_variance_hand_computed():
    model = _Lin().train()
    x = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    v = M.preactivation_variance(model, [x])
    # layer a outputs x: within-sample variances 1 and 0 -> mean 0.5; layer b: 1 value per sample -> 0
    assert v == {"a": pytest.approx(0.5), "b": pytest.approx(0.0)}
    v2 = M.preactivation_variance(model, [x[:1], x[1:]], mode="across_samples")
    # per unit across samples: unit0 (1,2) -> 0.25, unit1 (3,2) -> 0.25 ; b: (4,4) -> 0
    assert v2 == {"a": pytest.approx(0.25), "b": pytest.approx(0.0)}
    noised = M.preactivation_variance(model, [torch.zeros(256, 2)], noise_std=1.0)
    assert noised["a"] == pytest.approx(0.5, abs=0.15)   # two N(0,1) values: E[var] = 1/2
    assert model.training                                 # mode restored
    with pytest.raises(ConfigError):
        M.preactivation_variance(model, [x], mode="bogus")
