"""In-plane Gaussian smoothing of per-slice maps: the saliency methods' post-processing and the map
``analyze`` shows. Torch only (no saliency library), so that ``analyze`` does not import Captum for it."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_smooth(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """In-plane Gaussian smoothing of (B, S, 1, H, W) maps (slices are sparse samples: not across them)."""
    if not sigma or sigma <= 0:
        return m
    radius = max(1, int(math.ceil(3 * sigma)))
    ax = torch.arange(-radius, radius + 1, dtype=m.dtype, device=m.device)
    k = torch.exp(-0.5 * (ax / sigma) ** 2)
    k = k / k.sum()
    B, S, C, H, W = m.shape
    y = m.reshape(B * S * C, 1, H, W)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.reshape(1, 1, -1, 1))
    return y.reshape(B, S, C, H, W)
