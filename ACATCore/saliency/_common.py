"""Helpers shared by the saliency methods: scoring, targets, normalisation, post-processing."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..counterfactual import WithSaliency, steerable_logits
from ..errors import ConfigError, InputError


def check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[2] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"saliency: expected a (B, S, 1, H, W) tensor, got {shape}")


def plain_classifier(classifier, saliency: Optional[torch.Tensor]):
    """A saliency-aided classifier gets its fixed saliency through :class:`WithSaliency`."""
    if getattr(classifier, "needs_saliency", False):
        if saliency is None:
            raise ConfigError("saliency: this classifier needs a saliency map as input; pass saliency=")
        return WithSaliency(classifier, saliency)
    return classifier


def for_volumes(classifier, idx):
    """The classifier to use on a subset ``idx`` of the B volumes (a fixed saliency must follow)."""
    return classifier.for_volumes(idx) if isinstance(classifier, WithSaliency) else classifier


def score_fn(classifier, logits: str = "counterfactual"):
    """x -> (B, K) logits used by every method: the counterfactual head (default) or forward()."""
    if logits == "counterfactual":
        return lambda x: steerable_logits(classifier, x)
    if logits == "forward":
        return lambda x: classifier(x)
    raise ConfigError(f"saliency: logits must be 'counterfactual' or 'forward', not {logits!r}")


def resolve_targets(target, fn, x: torch.Tensor) -> torch.Tensor:
    """(B,) long: an int for all volumes, a sequence per volume, or None = each volume's predicted class.

    One class per volume (never a class picked over the whole batch: no class mixing)."""
    B = x.shape[0]
    if target is None:
        with torch.no_grad():
            return fn(x).argmax(1)
    t = torch.as_tensor(target, dtype=torch.long, device=x.device)
    if t.dim() == 0:
        t = t.repeat(B)
    if t.shape != (B,):
        raise ConfigError(f"saliency: target must be an int or one class per volume ({B}), got {tuple(t.shape)}")
    return t


def normalise(m: torch.Tensor) -> torch.Tensor:
    """Scale each volume (dim 0) to [0, 1] by its max; an all-zero (or non-finite) map stays 0."""
    m = torch.nan_to_num(m.detach().float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    mx = m.reshape(m.shape[0], -1).amax(1).reshape(-1, *([1] * (m.dim() - 1)))
    return torch.where(mx > 0, m / mx.clamp_min(1e-30), torch.zeros_like(m))


def check_scale(scale) -> None:
    """A fixed map scale is a number > 0 (None: each map scaled by its own max)."""
    if scale is not None and not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0):
        raise ConfigError(f"saliency: scale must be a number > 0 (or None for per-volume max), got {scale!r}")


def fixed_scale(m: torch.Tensor, scale: float) -> torch.Tensor:
    """``m / scale`` clipped to [0, 1]: one scale for every volume, so a weak map stays weak."""
    check_scale(scale)
    m = torch.nan_to_num(m.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    return (m / float(scale)).clamp(0, 1)


def percentile_threshold(m: torch.Tensor, percentile: float) -> torch.Tensor:
    """Zero every value below the volume's ``percentile`` (e.g. 95, the paper's Fig. 2b)."""
    if percentile is None:
        return m
    if not 0 <= percentile <= 100:
        raise ConfigError(f"saliency: percentile must be in [0, 100], got {percentile}")
    flat = m.reshape(m.shape[0], -1)
    thr = torch.quantile(flat.float(), percentile / 100.0, dim=1).reshape(-1, *([1] * (m.dim() - 1)))
    return torch.where(m >= thr, m, torch.zeros_like(m))


def upsample_to(maps: torch.Tensor, B: int, S: int, H: int, W: int) -> torch.Tensor:
    """(B*S, h, w) slice maps -> (B, S, 1, H, W), bilinear."""
    up = F.interpolate(maps[:, None].float(), size=(H, W), mode="bilinear", align_corners=False)
    return up.reshape(B, S, 1, H, W)
