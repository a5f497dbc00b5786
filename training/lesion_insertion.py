"""Small, faint lesions inserted into training batches: a brain baseline sees many more small lesions.

Why: the 22-slab brain baseline learns the generator's small lesions (radius 8-12 mm, the standard benchmark's
IS-3) on its training heads (83% of 111) and not on held-out ones (61% validation, 43% test, run seed 1): one
training head in twelve has one, and the network memorises them (docs/RESULTS.md, "Inserted small lesions").
This draws new ones every epoch, in the model input itself (after windowing, slabs and resizing), so no head has
to be generated again.
Measured (one seed, 192 fresh heads a row): the memorisation goes but IS-3 gains only 2 points while large lesions
lose 6 (one-sided heads called "both"), so it is off in every shipped recipe.

A lesion is a soft-edged ellipsoid (random in-plane axes and angle, its own depth in slabs) centred in the
parenchyma of a hemisphere without a lesion, darkened by a drawn contrast only where the input is parenchyma (so
it follows the tissue, as the generator's lesions do); the label gains that side (brain labels are a bit mask:
1 the patient's left, the image's right half; 2 the patient's right; 3 both). Lesion-free and one-sided heads
are given one, "both" heads none. Drawn per (run seed, epoch, samples), as the flips and the augmentation, so a
resumed run and any number of DDP processes insert the same lesions.

Options (``baseline.insert_lesions``; null: off, {}: every default), in model-input units:
    prob          share of the samples given one (default 0.3)
    radius_px     in-plane semi-axes, model pixels (default [3, 6]: about 7-15 mm on the brain recipe's grid)
    radius_slabs  depth semi-axis, model slices (default [0.7, 2.0])
    contrast      darkening at the centre, input units (default [0.045, 0.09]: 3.6-7.2 HU of a 0-80 HU window)
    tissue        the input range taken for parenchyma (default [0.3, 0.62]: 24-50 HU)
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from training.runtime import derive_seed

DEFAULTS = {"prob": 0.3, "radius_px": [3.0, 6.0], "radius_slabs": [0.7, 2.0], "contrast": [0.045, 0.09],
            "tissue": [0.3, 0.62]}
MIDLINE_MARGIN_PX = 3        # a centre at least this far from the middle column, on its own side
SIDE_BITS = {"left": 1, "right": 2}      # brain label bits; the patient's left is the image's right half


def check_options(opts) -> dict:
    """``opts`` merged over DEFAULTS, each value checked; a ValueError says which key is wrong."""
    if not isinstance(opts, dict) or set(opts) - set(DEFAULTS):
        raise ValueError(f"insert_lesions takes a dict of {', '.join(DEFAULTS)}, not {opts!r}")
    out = {**DEFAULTS, **opts}
    if isinstance(out["prob"], bool) or not (isinstance(out["prob"], (int, float)) and 0 <= out["prob"] <= 1):
        raise ValueError(f"insert_lesions.prob must be in [0, 1], not {out['prob']!r}")
    for key in ("radius_px", "radius_slabs", "contrast", "tissue"):
        v = out[key]
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(a, (int, float)) for a in v)
                and 0 < v[0] <= v[1]):
            raise ValueError(f"insert_lesions.{key} must be [low, high] with 0 < low <= high, not {v!r}")
    return out


def insert_lesions(batch: dict, opts: Optional[dict], positions, seed: int, epoch: int) -> dict:
    """``batch`` ({"x": (B, S, 1, H, W) in [0, 1], "y": (B,) brain labels, optional "mask": (B, S, 1, H, W), as
    ``DataSet.get`` gives it for the lesion-cell loss})
    with a lesion inserted into a drawn share of its samples; the input batch is not changed."""
    if opts is None:
        return batch
    opts = check_options(opts)
    g = torch.Generator().manual_seed(derive_seed("insert_lesions", seed, epoch, *map(int, positions)))
    x, y = batch["x"].clone(), batch["y"].clone()
    mask = batch["mask"].clone() if "mask" in batch else None
    for b in range(x.shape[0]):
        if float(torch.rand((), generator=g)) >= opts["prob"]:
            continue
        free = [side for side, bit in SIDE_BITS.items() if not int(y[b]) & bit]
        if not free:
            continue
        side = free[int(torch.randint(len(free), (), generator=g))]
        profile = _lesion_profile(x[b, :, 0], side, opts, g)
        if profile is None:
            continue
        x[b, :, 0] = x[b, :, 0] - _uniform(opts["contrast"], g) * profile
        y[b] = int(y[b]) | SIDE_BITS[side]
        if mask is not None:
            mask[b, :, 0] = torch.maximum(mask[b, :, 0], (profile > 0.5).to(mask.dtype))
    out = dict(batch, x=x, y=y)
    if mask is not None:
        out["mask"] = mask
    return out


def _lesion_profile(volume: torch.Tensor, side: str, opts: dict, g: torch.Generator):
    """(S, H, W) weights in [0, 1] of one lesion in ``volume``'s ``side`` hemisphere, zero outside its
    parenchyma; None when that hemisphere has no parenchyma to centre one in."""
    S, H, W = volume.shape
    lo, hi = opts["tissue"]
    tissue = (volume >= lo) & (volume <= hi)
    cols = torch.arange(W)
    middle = (W - 1) / 2
    own = cols > middle if side == "left" else cols < middle
    centres = cols >= middle + MIDLINE_MARGIN_PX if side == "left" else cols <= middle - MIDLINE_MARGIN_PX
    candidates = torch.nonzero(tissue & centres, as_tuple=False)
    if len(candidates) == 0:
        return None
    cz, cy, cx = candidates[int(torch.randint(len(candidates), (), generator=g))].tolist()
    ry, rx = _uniform(opts["radius_px"], g), _uniform(opts["radius_px"], g)
    rz, angle = _uniform(opts["radius_slabs"], g), _uniform([0.0, math.pi], g)
    z, yy, xx = torch.meshgrid(torch.arange(S) - cz, torch.arange(H) - cy, cols - cx, indexing="ij")
    u = (yy * math.cos(angle) + xx * math.sin(angle)) / ry
    v = (-yy * math.sin(angle) + xx * math.cos(angle)) / rx
    distance = torch.sqrt(u ** 2 + v ** 2 + (z / rz) ** 2)
    edge = 1.0 / min(ry, rx)                   # about one pixel of soft edge
    return torch.sigmoid((1.0 - distance) / edge) * (tissue & own)      # its own hemisphere's parenchyma only


def _uniform(bounds, g: torch.Generator) -> float:
    lo, hi = bounds
    return float(lo + (hi - lo) * torch.rand((), generator=g))
