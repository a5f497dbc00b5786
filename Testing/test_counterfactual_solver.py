"""The Eq. 4 solvers, the options dataclass and the speed options (bf16, compile) of the engine."""
import math

import pytest
import torch

from ACATCore.counterfactual import CounterfactualOptions, generate
from ACATCore.errors import ConfigError
from ACATCore.pipeline import counterfactual_saliency

from toy import one_torch_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ALPHA = 1.0
FAST = dict(optimizer="fista", schedule="adaptive", alpha=ALPHA)           # counterfactual_options.FAST_SEARCH


@pytest.fixture(scope="module")
def toy():
    """A toy classifier and autoencoder trained briefly here (a few seconds) on 48 toy volumes of
    3 slices of 32 x 32; 4 of them are searched."""
    from toy import ToyAutoencoder, ToyClassifier, make_toy_volumes, train_autoencoder, train_classifier
    torch.manual_seed(0)
    x, y, _ = make_toy_volumes(48, slices=3, size=32, seed=3)
    clf = train_classifier(ToyClassifier(width=8), x, y, epochs=25, seed=0)
    ae = train_autoencoder(ToyAutoencoder(width=8), x, epochs=10, lr=5e-3, batch=32, seed=0)
    return {"clf": clf.eval(), "ae": ae.eval(), "x_test": x[:4]}


@pytest.fixture(scope="module")
def paper(toy):
    """The paper preset: plain gradient descent, 20 steps, on 4 volumes x 2 targets."""
    return generate(toy["clf"], toy["ae"], toy["x_test"], steps=20, alpha=ALPHA)


def _maps(res):
    return counterfactual_saliency(res.counterfactuals.transpose(0, 1), res.reconstruction)


def _pearson(a, b):
    """Pearson correlation of two maps; 1 for two identical maps (also two zero maps)."""
    if torch.equal(a, b):
        return 1.0
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))


def test_objective_is_eq4(toy, paper):
    """``objective`` is CE(f(D(z)), t) + alpha * mean|z - z0| at every evaluated latent."""
    assert paper.objective.shape == paper.trajectory.shape == (21, 2, 4)
    ce = -torch.log(paper.trajectory)
    assert torch.allclose(paper.objective[0], ce[0], atol=1e-4)           # z = z0: no distance term
    assert torch.allclose(paper.objective[-1], ce[-1] + ALPHA * paper.latent_distance, atol=1e-4)
    # gradient descent with the proximal L1 step never raises the objective here
    assert (paper.objective[1:] <= paper.objective[:-1] + 1e-4).all()


def test_fista_reaches_the_paper_objective_in_far_fewer_steps(toy, paper):
    x = toy["x_test"]
    fast = generate(toy["clf"], toy["ae"], x, steps=8, **FAST)
    goal = paper.objective[-1]
    # the same start, then at least as low as GD after 20 steps, in 8 steps, for every pair
    assert torch.allclose(fast.objective[0], paper.objective[0])
    assert (fast.objective[-1] <= goal + 1e-3).all()
    first = next(k for k in range(9) if float(fast.objective[k].mean()) <= float(goal.mean()))
    assert first <= 8
    # at every step count FISTA is at least as far as GD was with the same number of steps
    assert (fast.objective.mean((1, 2)) <= paper.objective[:9].mean((1, 2)) + 1e-4).all()
    # the maps agree with the paper's
    same = generate(toy["clf"], toy["ae"], x, steps=first, **FAST)
    for a, b in zip(_maps(same), _maps(paper)):
        assert _pearson(a, b) >= 0.95


def test_fista_with_early_stop_and_chunks_matches_batched(toy):
    """Per-pair momentum state: early-stopped pairs, decoder chunks and one-at-a-time runs agree."""
    x = toy["x_test"][:3]
    stop = float(generate(toy["clf"], toy["ae"], x, steps=6, **FAST).trajectory.median())
    whole = generate(toy["clf"], toy["ae"], x, steps=6, stop_at=stop, **FAST)
    parts = generate(toy["clf"], toy["ae"], x, steps=6, stop_at=stop, decode_chunk=2, **FAST)
    assert (whole.steps_taken < 6).any() and (whole.steps_taken == 6).any()
    assert torch.allclose(whole.counterfactuals, parts.counterfactuals, atol=1e-5)
    for b in range(3):
        alone = generate(toy["clf"], toy["ae"], x[b:b + 1], steps=6, stop_at=stop, **FAST)
        assert torch.allclose(whole.counterfactuals[:, b], alone.counterfactuals[:, 0], atol=1e-5)
        assert torch.equal(whole.steps_taken[:, b], alone.steps_taken[:, 0])


def test_adam_cosine_schedule_runs_and_lowers_the_objective(toy):
    res = generate(toy["clf"], toy["ae"], toy["x_test"][:2], steps=5, optimizer="adam", step_size=1e-3,
                   schedule="cosine", alpha=ALPHA)
    assert res.objective[-1].mean() < res.objective[0].mean()


def test_bf16_maps_close_to_fp32_and_images_in_float32(toy, paper):
    x = toy["x_test"]
    low = generate(toy["clf"], toy["ae"], x, steps=20, alpha=ALPHA, precision="bf16")
    assert low.counterfactuals.dtype == torch.float32
    assert torch.equal(low.reconstruction, paper.reconstruction)     # D(E(x)) always in float32
    for a, b in zip(_maps(low), _maps(paper)):
        assert _pearson(a, b) >= 0.9


def test_compile_option_gives_the_same_maps(toy, monkeypatch):
    """``compile=True`` goes through torch.compile (here only its graph capture, backend "eager",
    to keep the test fast; the bench measures inductor) and gives the eager maps; a compiler that
    fails falls back to eager, never breaks the search."""
    x = toy["x_test"][:1]
    eager = generate(toy["clf"], toy["ae"], x, steps=2, alpha=ALPHA)
    real = torch.compile
    calls = []

    def capture(fn, **kw):
        calls.append(fn)
        return real(fn, backend="eager", dynamic=kw.get("dynamic"))

    monkeypatch.setattr(torch, "compile", capture)
    torch._dynamo.reset()
    compiled = generate(toy["clf"], toy["ae"], x, steps=2, alpha=ALPHA, compile=True)
    assert calls and torch.allclose(compiled.counterfactuals, eager.counterfactuals, atol=1e-5)

    def broken(fn, **kw):
        def fail(*a):
            raise RuntimeError("no C++ compiler")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    fallback = generate(toy["clf"], toy["ae"], x, steps=2, alpha=ALPHA, compile=True)
    assert torch.equal(fallback.counterfactuals, eager.counterfactuals)


@pytest.mark.parametrize("bad, words", [
    (dict(steps=-1), "steps"), (dict(steps=2.5), "steps"), (dict(steps=True), "steps"),
    (dict(alpha=-1.0), "alpha"), (dict(alpha=math.nan), "alpha"), (dict(step_size=0), "step_size"),
    (dict(step_size=math.inf), "step_size"), (dict(optimizer="lbfgs"), "optimizer"),
    (dict(momentum=1.0), "momentum"), (dict(schedule="linear"), "schedule"), (dict(l1="max"), "l1"),
    (dict(l1_update="exact"), "l1_update"), (dict(stop_at=0.0), "stop_at"), (dict(stop_at=1.5), "stop_at"),
    (dict(seed="0"), "seed"), (dict(decode_chunk=0), "decode_chunk"), (dict(precision="fp16"), "precision"),
    (dict(fuse="yes"), "fuse"), (dict(compile=1), "compile"), (dict(stepsize=0.1), "unknown option"),
])
def test_options_reject_bad_values_with_a_clear_error(bad, words):
    with pytest.raises(ConfigError, match=words):
        CounterfactualOptions.build(**bad)
    with pytest.raises(ConfigError, match=words):
        generate(None, None, torch.zeros(1, 2, 1, 8, 8), **bad)         # before any model is touched


def test_options_from_dicts_instances_and_keywords():
    card = {"steps": 20.0, "alpha": 100, "optimizer": "fista"}            # as a JSON model card gives them
    opts = CounterfactualOptions.build(card, step_size=0.2)
    assert opts.steps == 20 and isinstance(opts.steps, int) and opts.alpha == 100.0
    assert CounterfactualOptions.build(opts) == opts
    assert CounterfactualOptions.build(opts, steps=5).steps == 5
    assert CounterfactualOptions() == CounterfactualOptions.build({})   # the paper preset
    assert CounterfactualOptions().optimizer == "sgd" and CounterfactualOptions().step_size == 0.1
    with pytest.raises(ConfigError, match="options must be"):
        CounterfactualOptions.build(["steps", 3])
    with pytest.raises(Exception):
        opts.steps = 3                                                     # frozen


def test_options_object_and_keywords_give_the_same_search(toy):
    x = toy["x_test"][:2]
    a = generate(toy["clf"], toy["ae"], x, options=CounterfactualOptions(steps=3, optimizer="fista"))
    b = generate(toy["clf"], toy["ae"], x, steps=3, optimizer="fista")
    assert torch.equal(a.counterfactuals, b.counterfactuals)
    assert a.config["optimizer"] == "fista" and a.config["evaluations"] == 4


def test_analyze_passes_and_checks_the_search_options():
    """analyze's default search is FAST_SEARCH (the paper's stays a preset); bad options fail before the
    input is read."""
    from ACATCore import analyze
    from ACATCore import counterfactual_options as presets
    assert presets.DEFAULT_SEARCH == presets.FAST_SEARCH and presets.PAPER_SEARCH["optimizer"] == "sgd"
    assert presets.DEFAULT_STEPS == presets.FAST_STEPS and presets.DEFAULT_EARLY_STOP is None
    with pytest.raises(ConfigError, match="optimizer"):
        analyze("/nonexistent/ct.nrrd", model="lung", counterfactual_options={"optimizer": "newton"})
    with pytest.raises(ConfigError, match="unknown option"):
        analyze("/nonexistent/ct.nrrd", model="lung", counterfactual_options={"step": 0.1})
