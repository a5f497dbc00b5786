"""Gradient (Simonyan et al. 2013) and Integrated Gradients (Sundararajan et al. 2017), via Captum.

Captum never toggles eval(): :func:`ACATCore.saliency.compute_saliency` does it for every method.
"""
from __future__ import annotations

import torch
from captum.attr import IntegratedGradients, Saliency

from ..errors import ConfigError
from ..filters import gaussian_smooth
from ._common import resolve_targets


def gradient(fn, x, target=None):
    """|d logit_t / dx| per voxel (Captum Saliency, abs=True)."""
    t = resolve_targets(target, fn, x)
    with torch.enable_grad():
        return Saliency(fn).attribute(x.detach().clone().requires_grad_(True), target=t, abs=True).detach()


def _baseline(x, baseline):
    """IG baseline, chosen deliberately. "zeros": the window floor (after [0, 1] windowing 0 is the
    lowest HU of the window: air for the lung window, ~0 HU for a brain window), the usual black image;
    "blur": the input blurred in-plane (sigma 5 px), which removes small findings but keeps anatomy;
    "mean": each volume's mean intensity; a float or a tensor of x's shape is used as given."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x).expand_as(x)
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    if baseline == "zeros":
        return torch.zeros_like(x)
    if baseline == "blur":
        return gaussian_smooth(x, 5.0)
    if baseline == "mean":
        return x.mean(dim=(1, 2, 3, 4), keepdim=True).expand_as(x).contiguous()
    raise ConfigError(f"integrated_gradients: unknown baseline {baseline!r} (zeros, blur, mean, float, tensor)")


def integrated_gradients(fn, x, target=None, n_steps=50, baseline="zeros", internal_batch_size=4,
                         method="gausslegendre"):
    """|IG| (Captum). ``internal_batch_size`` (volumes per forward, at least B) bounds memory."""
    t = resolve_targets(target, fn, x)
    internal_batch_size = max(int(internal_batch_size), x.shape[0])   # Captum needs >= the batch
    with torch.enable_grad():
        attr = IntegratedGradients(fn).attribute(
            x.detach().clone(), baselines=_baseline(x, baseline), target=t, n_steps=n_steps,
            method=method, internal_batch_size=internal_batch_size)
    return attr.detach().abs()
