"""Counterfactual engine on a toy classifier + autoencoder trained in the test (seconds on CPU)."""
import pytest
import torch

from ACATCore.counterfactual import frozen_eval, generate
from ACATCore.errors import ConfigError, InputError

from toy import ToyBrainClassifier, ToySaliencyAided, single_thread, trained_toy


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def toy():
    return trained_toy()


@pytest.fixture(scope="module")
def result(toy):
    return generate(toy["clf"], toy["ae"], toy["x_test"])


def test_toy_models_learned_the_task(toy):
    with torch.no_grad():
        x = toy["x_test"]
        rec = toy["ae"](x.reshape(-1, 1, 32, 32)).reshape(x.shape)
        assert (toy["clf"](x).argmax(1) == toy["y_test"]).float().mean() >= 0.9
        assert (toy["clf"](rec).argmax(1) == toy["y_test"]).float().mean() >= 0.9


def test_shapes_and_reaching_the_target(toy, result):
    x = toy["x_test"]
    B = x.shape[0]
    assert result.counterfactuals.shape == (2, *x.shape)
    assert result.reconstruction.shape == x.shape
    assert result.trajectory.shape == (21, 2, B)
    assert result.latent_distance.shape == (2, B) and result.steps_taken.shape == (2, B)
    assert result.targets.tolist() == [0, 1]
    # every volume, both targets: >= 90 % reach their target class within 20 steps
    assert result.reached().float().mean() >= 0.9
    # the opposite-class counterfactual actually flips the class for most volumes
    y = toy["y_test"]
    flips = result.reached()[1 - y, torch.arange(B)]
    assert flips.float().mean() >= 0.9
    assert torch.all((result.trajectory >= 0) & (result.trajectory <= 1))


def test_latent_distance_shrinks_as_alpha_grows(toy, result):
    small = generate(toy["clf"], toy["ae"], toy["x_test"], alpha=0.0)
    large = generate(toy["clf"], toy["ae"], toy["x_test"], alpha=1000.0)
    d0, d100, d1000 = (r.latent_distance.mean() for r in (small, result, large))
    assert d0 > d100 > d1000 > 0


def test_batched_equals_one_at_a_time_and_deterministic(toy, result):
    x = toy["x_test"][:3]
    batched = generate(toy["clf"], toy["ae"], x)
    again = generate(toy["clf"], toy["ae"], x)
    assert torch.equal(batched.counterfactuals, again.counterfactuals)
    for b in range(2):
        for t in (0, 1):
            single = generate(toy["clf"], toy["ae"], x[b:b + 1], targets=[t])
            assert torch.allclose(single.counterfactuals[0, 0], batched.counterfactuals[t, b], atol=1e-5)
            assert torch.allclose(single.trajectory[:, 0, 0], batched.trajectory[:, t, b], atol=1e-5)
    # the first volumes of the full batch agree too
    assert torch.allclose(batched.counterfactuals, result.counterfactuals[:, :3], atol=1e-5)


def test_early_stop_freezes_converged_targets(toy):
    x = toy["x_test"][:6]
    res = generate(toy["clf"], toy["ae"], x, stop_at=0.9)
    assert res.trajectory.shape[0] == 21
    stopped = res.steps_taken < 20
    assert stopped.any()
    for t, b in stopped.nonzero().tolist():
        k = int(res.steps_taken[t, b])
        assert res.trajectory[k, t, b] >= 0.9
        assert torch.allclose(res.trajectory[k:, t, b], res.trajectory[k, t, b].expand(21 - k))


def test_models_restored_and_options(toy):
    clf, ae = toy["clf"], toy["ae"]
    clf.train()
    rng = torch.get_rng_state()
    try:
        res = generate(clf, ae, toy["x_test"][:2], optimizer="adam", step_size=0.05, l1="sum", alpha=1e-3,
                       targets=[1], return_latents=True)
        assert clf.training and not ae.training
        assert torch.equal(rng, torch.get_rng_state())          # the seed does not leak into the caller
        assert all(p.requires_grad for p in clf.parameters())
        assert all(p.grad is None for p in clf.parameters())
        assert res.counterfactuals.shape[0] == 1 and res.latents.shape == (1, 8, 16, 8, 8)
    finally:
        clf.eval()
    sub = generate(clf, ae, toy["x_test"][:2], l1_update="subgradient")
    assert sub.counterfactuals.shape == (2, 2, 4, 1, 32, 32)


def test_frozen_eval_restores_flags():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
    m[0].bias.requires_grad_(False)
    with frozen_eval(m, None):
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    assert m.training and m[0].weight.requires_grad and not m[0].bias.requires_grad
    m[1].eval()                                   # mixed modes come back as they were, per submodule
    with frozen_eval(m):
        pass
    assert m.training and m[0].training and not m[1].training


def test_brain_like_lesion_head_and_saliency_aided(toy):
    torch.manual_seed(0)
    brain = ToyBrainClassifier()
    x = toy["x_test"][:2]
    res = generate(brain, toy["ae"], x, steps=3)
    assert res.counterfactuals.shape == (2, *x.shape) and res.initial_probabilities.shape == (2, 2)
    aided = ToySaliencyAided(toy["clf"])
    with pytest.raises(ConfigError):
        generate(aided, toy["ae"], x)
    res = generate(aided, toy["ae"], x, saliency=torch.zeros_like(x), steps=3)
    plain = generate(toy["clf"], toy["ae"], x, steps=3)
    assert torch.allclose(res.counterfactuals, plain.counterfactuals, atol=1e-6)   # zero saliency = plain


def test_bad_input_and_config(toy):
    clf, ae = toy["clf"], toy["ae"]
    with pytest.raises(InputError):
        generate(clf, ae, torch.zeros(4, 1, 32, 32))
    with pytest.raises(InputError):
        generate(clf, ae, torch.zeros(1, 4, 1, 30, 30))
    with pytest.raises(ConfigError):
        generate(clf, ae, toy["x_test"][:1], targets=[2])
    with pytest.raises(ConfigError):
        generate(clf, ae, toy["x_test"][:1], optimizer="lbfgs")
