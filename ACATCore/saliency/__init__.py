"""Saliency maps, one interface for every method of the paper.

    from ACATCore.saliency import compute_saliency, METHODS
    s = compute_saliency("counterfactual", classifier, x, autoencoder)      # (B, S, 1, H, W) in [0, 1]

``x`` is (B, S, 1, H, W) (a single (S, 1, H, W) volume is accepted and returned unbatched).
Common options: ``smooth_sigma`` (in-plane Gaussian, pixels), ``percentile`` (zero values below the
volume's percentile, e.g. 95 as in the paper's Fig. 2b), ``saliency`` (the fixed input map of a
saliency-aided classifier such as ACAT, paper Sec. 4.4 last paragraph), ``logits`` ("counterfactual",
the default: score the head the counterfactual engine steers, i.e. the lesion head of the brain model;
"forward": the classifier's own output). Each map is scaled to [0, 1] by its volume's max, or, with
``scale`` (a number, input units), divided by that one scale and clipped, so that a map with little in
it stays near zero (the "negative" saliency ACAT can be trained with: ``target=0, scale=...``).

``target``: for ``counterfactual`` the class to move TO (None = every class: the class-agnostic map);
for the others the class EXPLAINED (None = each volume's predicted class). An int or one per volume.

Method options (besides the common ones):
- counterfactual: reference ("reconstruction" | "input") and every option of
  :func:`ACATCore.counterfactual.generate` (steps, alpha, step_size, optimizer, l1, stop_at, seed).
- latent_shift: max_drop (0.15), floor (-1000), max_change (None; 0.05 = newer code's 5 % rule).
- norec: steps (20), step_size (-1.0).
- gradient: none. integrated_gradients: n_steps (50), baseline ("zeros"), internal_batch_size (4).
- gradcam, gradcampp: per_slice (False = 3-D pooling over the slice stack).
- scorecam: batch_size (32), max_channels (None = all).
The models are put in eval() with frozen parameters for the call and restored afterwards.
"""
from __future__ import annotations

import torch

from ..counterfactual import frozen_eval
from ..errors import ConfigError
from ..filters import gaussian_smooth
from . import cam, gradients, latent
from ._common import (check_input, check_scale, fixed_scale, normalise, percentile_threshold,
                      plain_classifier, score_fn)
from .latent import LambdaSearch, lambda_search

METHODS = ("counterfactual", "latent_shift", "norec", "gradient", "integrated_gradients",
           "gradcam", "gradcampp", "scorecam")
NEEDS_AUTOENCODER = ("counterfactual", "latent_shift", "norec")

__all__ = ["compute_saliency", "postprocess", "METHODS", "NEEDS_AUTOENCODER", "lambda_search", "LambdaSearch"]


def postprocess(m: torch.Tensor, smooth_sigma=None, percentile=None, scale=None) -> torch.Tensor:
    """Normalise per volume (or divide by the fixed ``scale``), optionally smooth and threshold,
    normalise again: (B, S, 1, H, W) in [0, 1]."""
    norm = normalise if scale is None else (lambda v: v)
    m = normalise(m) if scale is None else fixed_scale(m, scale)
    if smooth_sigma:
        m = norm(gaussian_smooth(m, float(smooth_sigma)))
    if percentile is not None:
        m = norm(percentile_threshold(m, float(percentile)))
    return m


def compute_saliency(method, classifier, x, autoencoder=None, target=None, *, smooth_sigma=None,
                     percentile=None, saliency=None, logits="counterfactual", scale=None, **options) -> torch.Tensor:
    """Saliency map of ``x`` by ``method`` (one of METHODS): a float32 tensor of x's shape in [0, 1]."""
    if method not in METHODS:
        raise ConfigError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")
    single = isinstance(x, torch.Tensor) and x.dim() == 4
    if single:
        x = x[None]
        if saliency is not None and saliency.dim() == 4:
            saliency = saliency[None]
    check_input(x)
    check_scale(scale)                                  # before any work
    x = x.detach().float()
    if method in NEEDS_AUTOENCODER and autoencoder is None:
        raise ConfigError(f"saliency method {method!r} needs the autoencoder; pass autoencoder=")
    clf = plain_classifier(classifier, saliency)
    fn = score_fn(clf, logits)
    with frozen_eval(clf, autoencoder):
        if method == "counterfactual":
            if logits != "counterfactual":
                raise ConfigError("counterfactual saliency always steers counterfactual_logits")
            m = latent.counterfactual_saliency(clf, x, autoencoder, target, scale=scale, **options)
        elif method == "latent_shift":
            m = latent.latent_shift(clf, x, autoencoder, target, **options)
        elif method == "norec":
            m = latent.norec(clf, x, autoencoder, target, **options)
        elif method == "gradient":
            m = gradients.gradient(fn, x, target, **options)
        elif method == "integrated_gradients":
            m = gradients.integrated_gradients(fn, x, target, **options)
        elif method == "gradcam":
            m = cam.gradcam(clf, fn, x, target, **options)
        elif method == "gradcampp":
            m = cam.gradcampp(clf, fn, x, target, **options)
        else:
            m = cam.scorecam(clf, fn, x, target, logits=logits, **options)
    m = postprocess(m.reshape(x.shape), smooth_sigma, percentile, scale).to(x.device)
    return m[0] if single else m
