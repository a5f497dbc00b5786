"""Faithfulness of saliency maps: deletion / insertion AUC and the model-randomisation sanity check.

Pure functions (no data, no files), used by ``bench/bench_saliency_faithfulness.py``:

- :func:`deletion_insertion` (Petsiuk et al. 2018, RISE): remove the most salient voxels first, in
  ``steps`` equal steps of the model-input voxels, and follow the probability of the explained class;
  the area under that curve (fraction removed on [0, 1]) is the *deletion AUC* (lower is better: the map
  found what the model uses). *Insertion* starts from the reference ("everything removed") and puts the
  most salient voxels back first (higher is better). All steps of one volume go through the model in
  a few batches.
- "Removed" means replaced by a reference volume: :func:`blurred_reference` (in-plane Gaussian blur:
  keeps the local mean intensity and the anatomy's coarse layout, removes what is small; RISE's choice
  for insertion) or zeros (the window floor).
- :func:`spearman` and :func:`randomised_copy` (Adebayo et al. 2018, model parameter randomisation):
  the rank correlation between a method's map from the trained model and from the same architecture
  with every parameter re-initialised; a map that barely changes (high correlation) does not depend on
  what the model learned and fails the check. Re-estimate the copy's BatchNorm statistics on a few
  inputs (``ACATCore.models.calibrate_batchnorm``): without it a re-initialised deep network in eval
  mode can be a near-constant function, so that every map of it is degenerate.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import numpy as np
import torch
from scipy import stats

from ..errors import ConfigError, InputError
from ..filters import gaussian_smooth

__all__ = ["removal_order", "perturbation_masks", "perturbed_batch", "curve_auc", "deletion_insertion",
           "blurred_reference", "spearman", "randomised_copy"]


def _flat_np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float64).reshape(-1)


def removal_order(saliency, seed: int = 0) -> np.ndarray:
    """Flat voxel indices, most salient first; equal values (e.g. the zeros of a thresholded map) in a
    seeded random order, so that ties never follow the array layout (top slice first, say)."""
    s = _flat_np(saliency)
    s = np.where(np.isfinite(s), s, -np.inf)
    perm = np.random.default_rng(seed).permutation(s.size)
    return perm[np.argsort(-s[perm], kind="stable")]


def perturbation_masks(order: np.ndarray, steps: int) -> np.ndarray:
    """(steps + 1, N) bool: row k marks the first round(k / steps * N) voxels of ``order``."""
    if steps < 1:
        raise ConfigError(f"deletion/insertion: steps must be >= 1, not {steps}")
    n = order.size
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    counts = np.round(np.linspace(0.0, 1.0, steps + 1) * n).astype(np.int64)
    return rank[None, :] < counts[:, None]


def perturbed_batch(x: torch.Tensor, reference: torch.Tensor, masks: np.ndarray, mode: str) -> torch.Tensor:
    """(steps + 1, *x.shape): "deletion" puts ``reference`` where a mask is set (x elsewhere);
    "insertion" puts ``x`` there (``reference`` elsewhere)."""
    if mode not in ("deletion", "insertion"):
        raise ConfigError(f"mode must be 'deletion' or 'insertion', not {mode!r}")
    m = torch.from_numpy(masks).to(x.device).reshape(masks.shape[0], *x.shape)
    a, b = (reference, x) if mode == "deletion" else (x, reference)
    return torch.where(m, a.expand_as(m), b.expand_as(m))


def curve_auc(values) -> float:
    """Trapezoidal area under a curve sampled at equally spaced fractions 0, 1/steps, ..., 1."""
    v = _flat_np(values)
    if v.size < 2:
        raise InputError("a curve needs at least two points")
    return float(((v[1:] + v[:-1]) / 2).sum() / (v.size - 1))


@torch.no_grad()
def _probs(prob_fn: Callable, batch: torch.Tensor, batch_size: int) -> np.ndarray:
    out = [prob_fn(batch[i:i + batch_size]).detach().float().cpu() for i in range(0, len(batch), batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


def deletion_insertion(prob_fn: Callable, x: torch.Tensor, saliency, reference: torch.Tensor,
                       steps: int = 20, batch_size: Optional[int] = None, seed: int = 0,
                       modes=("deletion", "insertion")) -> dict:
    """Deletion and insertion curves and AUCs of one volume ``x`` (any shape, e.g. (S, 1, H, W)).

    ``prob_fn``: a batch (n, *x.shape) -> (n,) probabilities of the explained class. ``saliency``: one
    value per voxel of ``x`` (any shape with x's number of elements). ``reference``: x's shape, what a
    removed voxel becomes. Returns {"deletion": auc, "insertion": auc, "deletion_curve": (steps+1,),
    "insertion_curve": (steps+1,)} for the requested ``modes``. All steps of a mode go through
    ``prob_fn`` in ceil((steps + 1) / batch_size) calls (default: one).
    """
    if _flat_np(saliency).size != x.numel():
        raise InputError(f"saliency has {_flat_np(saliency).size} values, x has {x.numel()} voxels")
    reference = reference.to(x).reshape(x.shape)
    masks = perturbation_masks(removal_order(saliency, seed), steps)
    bs = int(batch_size or steps + 1)
    out = {}
    for mode in modes:
        curve = _probs(prob_fn, perturbed_batch(x, reference, masks, mode), bs)
        out[mode] = curve_auc(curve)
        out[f"{mode}_curve"] = curve
    return out


def blurred_reference(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x blurred in-plane (Gaussian, ``sigma`` pixels; slices are not mixed): (..., S, 1, H, W)."""
    shape = x.shape
    v = x.reshape(-1, *shape[-4:]) if x.dim() >= 4 else x
    return gaussian_smooth(v.float(), float(sigma)).reshape(shape)


def spearman(a, b, where=None) -> float:
    """Spearman rank correlation of two maps (scipy's ``spearmanr``: ties get average ranks), over the
    voxels of the boolean ``where`` if given; NaN when either map is constant there (nothing to rank)."""
    x, y = _flat_np(a), _flat_np(b)
    if x.size != y.size:
        raise InputError(f"maps differ in size: {x.size} vs {y.size}")
    if where is not None:
        w = _flat_np(where).astype(bool)
        x, y = x[w], y[w]
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def randomised_copy(model: torch.nn.Module, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """A deep copy of ``model`` with every parameter re-initialised (full, not cascading, randomisation
    of Adebayo et al. 2018): each submodule's own ``reset_parameters()`` (PyTorch's default
    initialisation; BatchNorm's running statistics are reset too), under a fixed seed. A parameter no
    submodule resets (a bare ``nn.Parameter``) is re-drawn from N(0, 0.02^2).
    Returns (the copy in eval mode, the fraction of parameter elements whose value changed)."""
    rnd = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in rnd.named_parameters()}
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        reset = set()
        for mod in rnd.modules():
            if callable(getattr(mod, "reset_parameters", None)):
                mod.reset_parameters()
                reset.update(id(p) for p in mod.parameters(recurse=False))
            if callable(getattr(mod, "reset_running_stats", None)):
                mod.reset_running_stats()
        with torch.no_grad():
            for p in rnd.parameters():
                if id(p) not in reset:
                    p.normal_(0.0, 0.02)
    finally:
        torch.random.set_rng_state(gen_state)
    changed = total = 0
    for n, p in rnd.named_parameters():
        changed += int((p.detach() != before[n]).sum())
        total += p.numel()
    return rnd.eval(), (changed / total if total else float("nan"))
