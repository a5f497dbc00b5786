"""Every saliency method behind one interface, on the toy models trained in the test."""
import pytest
import torch

from ACATCore.errors import ConfigError
from ACATCore.saliency import METHODS, compute_saliency, lambda_search
from ACATCore.filters import gaussian_smooth
from ACATCore.saliency._common import normalise
from ACATCore.saliency.latent import latent_shift

from toy import ToyBrainClassifier, ToySaliencyAided, one_torch_thread, trained_toy  # noqa: F401 (fixture)

FAST = {"scorecam": {"max_channels": 8}, "integrated_gradients": {"n_steps": 16}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy():
    d = trained_toy()
    pos = d["y_test"] == 1
    return dict(d, x_pos=d["x_test"][pos], region_pos=d["region_test"][pos], x_neg=d["x_test"][~pos])


def _hit_rate(maps, region):
    n = maps.shape[0]
    peak = maps.reshape(n, -1).argmax(1)
    return float(region.reshape(n, -1).gather(1, peak[:, None]).float().mean())


@pytest.mark.parametrize("method", METHODS)
def test_shape_range_and_batched_equals_unbatched(toy, method):
    clf, ae = toy["clf"], toy["ae"]
    x = toy["x_test"][:3]
    maps = compute_saliency(method, clf, x, ae, **FAST.get(method, {}))
    assert maps.shape == x.shape and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    peaks = maps.reshape(3, -1).amax(1)              # each volume scaled by its own max (0: no change found)
    assert all(float(p) in (0.0, 1.0) for p in peaks) and peaks.sum() >= 1
    for b in range(3):
        single = compute_saliency(method, clf, x[b], ae, **FAST.get(method, {}))   # (S, 1, H, W) volume
        assert single.shape == x[b].shape
        assert torch.allclose(single, maps[b], atol=1e-4), method
    assert not clf.training and all(p.requires_grad for p in clf.parameters())


def test_counterfactual_saliency_finds_the_blob(toy):
    x, region = toy["x_pos"], toy["region_pos"]
    chance = float(region.float().mean())                          # a random peak's hit probability
    assert chance < 0.01
    agnostic = compute_saliency("counterfactual", toy["clf"], x, toy["ae"])
    to_negative = compute_saliency("counterfactual", toy["clf"], x, toy["ae"], target=0)
    assert _hit_rate(agnostic, region) >= 0.7
    assert _hit_rate(to_negative, region) >= 0.7
    raw = compute_saliency("counterfactual", toy["clf"], x, toy["ae"], target=0, reference="input")
    assert raw.shape == x.shape


def test_fixed_scale_keeps_a_weak_map_weak(toy):
    """With ``scale`` the map is the raw difference over that one scale, clipped at 1: a volume whose
    target is already reached (early stop at step 0) stays all zero, and a positive volume's map is its
    per-volume map times a constant (same peak) until it clips."""
    x = torch.cat([toy["x_pos"][:1], toy["x_neg"][:1]])
    per_volume = compute_saliency("counterfactual", toy["clf"], x, toy["ae"], target=0, stop_at=0.5)
    fixed = compute_saliency("counterfactual", toy["clf"], x, toy["ae"], target=0, stop_at=0.5, scale=1.0)
    assert float(per_volume[1].max()) == 0.0 and float(fixed[1].max()) == 0.0   # nothing to change
    assert 0 < float(fixed[0].max()) < 1                      # an image difference well below 1
    kept = fixed[0] > 0                                       # unclipped: the same map, one constant lower
    ratio = fixed[0][kept] / per_volume[0][kept]
    assert float(ratio.std()) < 1e-3 * float(ratio.mean())
    assert _hit_rate(fixed[:1], toy["region_pos"][:1]) == _hit_rate(per_volume[:1], toy["region_pos"][:1])
    clipped = compute_saliency("counterfactual", toy["clf"], x, toy["ae"], target=0, stop_at=0.5, scale=1e-3)
    assert float(clipped.max()) == 1.0 and float(clipped[1].max()) == 0.0
    with pytest.raises(ConfigError, match="scale"):
        compute_saliency("gradient", toy["clf"], x, scale=-1.0)


def test_gradient_methods_localise_and_per_volume_targets_do_not_mix(toy):
    x, region = toy["x_pos"], toy["region_pos"]
    for method in ("gradient", "gradcam", "gradcampp"):
        assert _hit_rate(compute_saliency(method, toy["clf"], x, smooth_sigma=1.0), region) >= 0.5, method
    xs = toy["x_test"][:2]
    for method in ("gradient", "gradcam", "integrated_gradients"):
        mixed = compute_saliency(method, toy["clf"], xs, target=[0, 1], **FAST.get(method, {}))
        a = compute_saliency(method, toy["clf"], xs[:1], target=0, **FAST.get(method, {}))
        b = compute_saliency(method, toy["clf"], xs[1:], target=1, **FAST.get(method, {}))
        assert torch.allclose(mixed, torch.cat([a, b]), atol=1e-5), method


def _scripted(curves):
    """predict(lam, idx) from per-volume functions of lambda."""
    def predict(lam, idx):
        return torch.tensor([curves[i](lam) for i in idx.tolist()]), None
    return predict


def test_latent_shift_lambda_search_stopping_rules():
    p0 = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.9])
    curves = [
        lambda lam: 0.9 - 0.01 * min(abs(lam), 3) + (0.05 if abs(lam) >= 4 else 0.0),  # rises at -4
        lambda lam: 0.9 - 0.02 * abs(lam),              # 0.16 > 0.15 below the start at -8
        lambda lam: 0.9 - 0.001 * abs(lam),             # steps of 10 after -10: drop at -160
        lambda lam: 0.9 - 1e-5 * abs(lam),              # never rises nor drops: floor at -1000
        lambda lam: 0.9,                                # flat: not a rise, goes to the floor too
    ]
    s = lambda_search(_scripted(curves), p0)
    assert s.lbound.tolist() == [-4.0, -8.0, -160.0, -1000.0, -1000.0]
    assert s.reason == ["rise", "drop", "drop", "floor", "floor"]
    lams = [lam for lam, _ in s.history[3]]
    assert lams[:11] == [0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0, -10.0]
    assert lams[11:13] == [-20.0, -30.0] and lams[-1] == -1000.0 and len(lams) == 1 + 10 + 99
    # the newer code's image-change rule
    change = lambda lam, idx: (torch.full((len(idx),), 0.9), torch.full((len(idx),), 0.01 * abs(lam)))
    s = lambda_search(change, torch.tensor([0.9]), max_change=0.05)
    assert s.lbound.tolist() == [-6.0] and s.reason == ["change"]


def test_latent_shift_on_toy_models(toy):
    maps, search = latent_shift(toy["clf"].eval(), toy["x_pos"][:4], toy["ae"], return_search=True)
    assert (search.lbound < 0).all() and set(search.reason) <= {"rise", "drop", "floor"}
    for h, lb in zip(search.history, search.lbound.tolist()):
        assert h[-1][0] == lb
        preds = [p for _, p in h]
        assert all(b <= a for a, b in zip(preds[:-2], preds[1:-1]))   # never rose before the stop
    assert maps.shape == toy["x_pos"][:4].shape


def test_postprocessing_threshold_and_smoothing(toy):
    x = toy["x_pos"][:2]
    plain = compute_saliency("gradient", toy["clf"], x)
    thr = compute_saliency("gradient", toy["clf"], x, percentile=95)
    frac = (thr > 0).reshape(2, -1).float().mean(1)
    assert (frac <= 0.051).all() and (frac > 0).all()
    smooth = compute_saliency("gradient", toy["clf"], x, smooth_sigma=2.0)
    assert torch.allclose(smooth, normalise(gaussian_smooth(plain, 2.0)), atol=1e-6)
    roughness = lambda m: (m[..., 1:, :] - m[..., :-1, :]).abs().mean() / m.mean()
    assert roughness(smooth) < roughness(plain)
    k = torch.zeros(1, 1, 1, 9, 9); k[..., 4, 4] = 1.0
    blurred = gaussian_smooth(k, 1.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5) and blurred[..., 4, 4] < 0.2


def test_saliency_aided_classifier_and_brain_head(toy):
    x = toy["x_pos"][:2]
    aided = ToySaliencyAided(toy["clf"])
    with pytest.raises(ConfigError):
        compute_saliency("counterfactual", aided, x, toy["ae"])
    base = compute_saliency("counterfactual", toy["clf"], x, toy["ae"])
    again = compute_saliency("counterfactual", aided, x, toy["ae"], saliency=base)
    assert again.shape == x.shape and torch.isfinite(again).all()
    assert compute_saliency("gradcam", aided, x, saliency=base).shape == x.shape
    # methods that run a subset of the volumes (latent shift's search, Score-CAM) keep each its own map
    for method in ("latent_shift", "scorecam", "integrated_gradients"):
        opts = dict(FAST.get(method, {}))
        both = compute_saliency(method, aided, x, toy["ae"], saliency=base, **opts)
        one = compute_saliency(method, aided, x[1:], toy["ae"], saliency=base[1:], **opts)
        assert torch.allclose(both[1:], one, atol=1e-4), method
    torch.manual_seed(0)
    brain = ToyBrainClassifier().eval()
    for method in ("counterfactual", "gradient", "gradcampp"):
        m = compute_saliency(method, brain, x, toy["ae"], steps=2) if method == "counterfactual" \
            else compute_saliency(method, brain, x, logits="forward", target=3)
        assert m.shape == x.shape


def test_errors(toy):
    x = toy["x_test"][:1]
    with pytest.raises(ConfigError):
        compute_saliency("occlusion", toy["clf"], x)
    with pytest.raises(ConfigError):
        compute_saliency("latent_shift", toy["clf"], x)
    with pytest.raises(ConfigError):
        compute_saliency("gradcam", torch.nn.Sequential(), x)
    with pytest.raises(ConfigError):
        compute_saliency("integrated_gradients", toy["clf"], x, baseline="noise")
