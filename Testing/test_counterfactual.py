"""Counterfactual engine on a toy classifier + autoencoder trained in the test (seconds on CPU)."""
import pytest
import torch

from ACATCore.counterfactual import frozen_eval, generate
from ACATCore.errors import ConfigError, InputError

from toy import ToyBrainClassifier, ToySaliencyAided, one_torch_thread, trained_toy  # noqa: F401 (fixture)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


# ------------------------------------------------------------------ speed levers change nothing
class _CountingClassifier(torch.nn.Module):
    """Wraps a classifier and records the batch size of every call."""

    def __init__(self, clf):
        super().__init__()
        self.clf = clf
        self.sizes = []

    def forward(self, x):
        return self.clf(x)

    def counterfactual_logits(self, x):
        self.sizes.append(x.shape[0])
        return self.clf.counterfactual_logits(x)


def test_early_stopped_pairs_leave_the_batch_and_the_rest_is_unchanged(toy):
    x = toy["x_test"][:6]
    full = generate(toy["clf"], toy["ae"], x)
    peak = full.trajectory[:20].amax(0).flatten().sort().values
    stop_at = float(peak[peak.numel() // 2])           # about half the pairs reach it, the rest never do
    counting = _CountingClassifier(toy["clf"])
    early = generate(counting, toy["ae"], x, stop_at=stop_at)
    T, B = early.steps_taken.shape
    stopped = early.steps_taken < 20
    assert stopped.any() and (~stopped).any()
    # the classifier saw only the pairs still running: its batch shrinks as pairs converge
    active_at = [int((early.steps_taken >= k).sum()) for k in range(20)]
    assert counting.sizes == [B] + active_at + [int((~stopped).sum())]
    assert active_at[0] == T * B and active_at[-1] < T * B
    for t, b in (~stopped).nonzero().tolist():       # pairs that never stopped: as without early stop
        assert torch.allclose(early.counterfactuals[t, b], full.counterfactuals[t, b], atol=1e-5)
        assert torch.allclose(early.trajectory[:, t, b], full.trajectory[:, t, b], atol=1e-5)
    for t, b in stopped.nonzero().tolist():          # stopped pairs: the image of the step they stopped at
        k = int(early.steps_taken[t, b])
        alone = generate(toy["clf"], toy["ae"], x[b:b + 1], targets=[t], steps=k)
        assert torch.allclose(early.counterfactuals[t, b], alone.counterfactuals[0, 0], atol=1e-5)
        assert early.trajectory[k, t, b] >= stop_at


def test_target_reached_at_step_zero_gives_a_zero_map(toy):
    """A target the classifier already predicts with p >= stop_at stops at step 0: its counterfactual
    is D(E(x)), so its map is zero and the class-agnostic map is the other target's map."""
    from ACATCore.saliency import compute_saliency
    x = toy["x_test"][:4]
    res = generate(toy["clf"], toy["ae"], x, stop_at=0.6)
    at_zero = res.steps_taken == 0
    assert at_zero.any()
    for t, b in at_zero.nonzero().tolist():
        assert torch.equal(res.counterfactuals[t, b], res.reconstruction[b])
    both = compute_saliency("counterfactual", toy["clf"], x, toy["ae"], stop_at=0.6)
    for t, b in at_zero.nonzero().tolist():
        other = compute_saliency("counterfactual", toy["clf"], x[b:b + 1], toy["ae"], target=1 - t, stop_at=0.6)
        mx = both[b].max()
        assert mx > 0 and torch.allclose(both[b] / mx, other[0] / other[0].max(), atol=1e-5)


def test_decoder_in_chunks_gives_the_same_counterfactuals(toy):
    x = toy["x_test"][:3]
    whole = generate(toy["clf"], toy["ae"], x, steps=5)
    for chunk in (1, 5):
        parts = generate(toy["clf"], toy["ae"], x, steps=5, decode_chunk=chunk)
        assert torch.allclose(whole.counterfactuals, parts.counterfactuals, atol=1e-5)
        assert torch.allclose(whole.trajectory, parts.trajectory, atol=1e-5)
    sub = generate(toy["clf"], toy["ae"], x, steps=5, l1_update="subgradient")
    sub_parts = generate(toy["clf"], toy["ae"], x, steps=5, l1_update="subgradient", decode_chunk=2)
    assert torch.allclose(sub.counterfactuals, sub_parts.counterfactuals, atol=1e-5)


def _small_paper_models():
    """The paper's autoencoder and lung ResNet at small widths, with non-trivial BatchNorm statistics."""
    from ACATCore.models import build_model
    torch.manual_seed(0)
    ae = build_model("autoencoder", stem_channels=8, blocks_per_stage=1)
    clf = build_model("lung_resnet50", block_inplanes=[8, 16, 32, 64], layers=[1, 1, 1, 1])
    for m in list(ae.modules()) + list(clf.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return clf.eval(), ae.eval()


def test_batchnorm_folding_gives_the_same_result_and_leaves_models_alone():
    clf, ae = _small_paper_models()
    x = torch.rand(2, 3, 1, 32, 32)
    before = {k: v.clone() for k, v in list(clf.state_dict().items()) + list(ae.state_dict().items())}
    fused = generate(clf, ae, x, steps=4)
    plain = generate(clf, ae, x, steps=4, fuse=False)
    assert torch.allclose(fused.counterfactuals, plain.counterfactuals, atol=1e-4)
    assert torch.allclose(fused.trajectory, plain.trajectory, atol=1e-4)
    after = dict(list(clf.state_dict().items()) + list(ae.state_dict().items()))
    assert all(torch.equal(before[k], after[k]) for k in before)          # originals untouched
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in clf.modules())


def test_search_keeps_no_parameter_gradients_and_bf16_runs():
    clf, ae = _small_paper_models()
    for p in list(clf.parameters()) + list(ae.parameters()):
        p.requires_grad_(True)
    x = torch.rand(1, 3, 1, 32, 32)
    res = generate(clf, ae, x, steps=3)
    assert all(p.grad is None for p in list(clf.parameters()) + list(ae.parameters()))
    assert all(p.requires_grad for p in clf.parameters())                   # restored
    low = generate(clf, ae, x, steps=3, precision="bf16")
    assert low.counterfactuals.dtype == torch.float32
    assert low.counterfactuals.shape == res.counterfactuals.shape
    with pytest.raises(ConfigError):
        generate(clf, ae, x, precision="fp16")
    with pytest.raises(ConfigError):
        generate(clf, ae, x, decode_chunk=0)


def test_unmoved_pair_is_exactly_the_reconstruction_with_folded_batchnorm():
    """With BatchNorm folded, a target stopped at step 0 must still give exactly D(E(x)) (a zero map),
    not the folded decoder's rounding of it (a per-target max normalisation would amplify that noise)."""
    clf, ae = _small_paper_models()
    x = torch.rand(1, 3, 1, 32, 32)
    p0 = generate(clf, ae, x, steps=0).initial_probabilities[0]
    t = int(p0.argmax())
    res = generate(clf, ae, x, stop_at=float(p0[t]) * 0.999, steps=3)
    assert int(res.steps_taken[t, 0]) == 0
    assert torch.equal(res.counterfactuals[t, 0], res.reconstruction[0])
