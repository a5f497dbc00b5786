"""Lesions inserted into a lesion-free ACAT-Synth head the way a lesion-insertion tool inserts them into real CT.

The generator grows its own lesions inside one of its geometric vascular territories, so a large infarct has
straight edges where its territory ends. A tool that inserts lesions into real heads knows no such map: it
darkens a smooth, irregular ellipsoid of parenchyma wherever it places it, across territory borders (not
across the midline), leaving CSF and bone alone. ``insert`` does that to a head generated without a lesion;
bench_brain's ``insert:*`` rows use it to ask whether the brain bundle finds lesions it was not trained on the shape of.

The truth for the hit score is every vascular territory (the head's own map) holding at least
``TERRITORY_SHARE`` of the lesion's voxels.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ACATCore.data.territories import TERRITORIES

PARENCHYMA_HU = (15.0, 60.0)     # smoothed HU of brain tissue (CSF below, calcification and bone above)
EDGE_MM = 3.0                    # the lesion's border fades over this many mm
TERRITORY_SHARE = 0.2
SIDES = {0: [], 1: ["left"], 2: ["right"], 3: ["left", "right"]}


def parenchyma(case: dict) -> np.ndarray:
    """Brain tissue of the head: inside its territory map, smoothed HU within PARENCHYMA_HU."""
    sigma = [1.5 / s for s in case["spacing"][::-1]]
    smooth = ndi.gaussian_filter(case["image"].astype(np.float32), sigma)
    return (case["regions"] > 0) & (smooth > PARENCHYMA_HU[0]) & (smooth < PARENCHYMA_HU[1])


def _blob(rng, shape, centre, spacing_kji, radius_mm: float) -> np.ndarray:
    """A smooth irregular ellipsoid's weight in [0, 1] on the grid (1 inside, fading over EDGE_MM)."""
    axes = radius_mm * rng.uniform(0.75, 1.25, 3)
    angle = rng.uniform(0, np.pi)
    k, j, i = [(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing_kji)]
    K, J, I = np.meshgrid(k, j, i, indexing="ij", sparse=True)
    u, v = np.cos(angle) * I + np.sin(angle) * J, -np.sin(angle) * I + np.cos(angle) * J
    r = np.sqrt((K / axes[0]) ** 2 + (v / axes[1]) ** 2 + (u / axes[2]) ** 2) * radius_mm      # mm, ~radius at edge
    bumps = ndi.zoom(rng.normal(0, 1, (4, 4, 4)), np.array(shape) / 4, order=3)[tuple(slice(0, n) for n in shape)]
    r = r + 0.15 * radius_mm * bumps / max(float(np.abs(bumps).max()), 1e-6)
    return np.clip((radius_mm - r) / EDGE_MM + 0.5, 0.0, 1.0).astype(np.float32)


def insert(case: dict, label: int, rng, radius_mm, contrast_hu) -> dict:
    """The lesion-free ``case`` with ``label``'s lesions inserted (left, right or both: class 1, 2, 3), each
    of a radius drawn from ``radius_mm`` and darker by ``contrast_hu`` HU; image, mask and lesions replaced."""
    image = case["image"].astype(np.float32)
    spacing_kji = np.array(case["spacing"][::-1], float)
    tissue = parenchyma(case)
    depth = ndi.distance_transform_edt(case["regions"] > 0, sampling=spacing_kji)
    mask, lesions = np.zeros(image.shape, np.uint8), []
    for side in SIDES[label]:
        labels = [n + 1 for n, t in enumerate(TERRITORIES) if t.endswith("_" + side)]
        side_tissue = tissue & np.isin(case["regions"], labels)          # a lesion keeps to its hemisphere
        where = np.flatnonzero(side_tissue & (depth > 8.0))
        centre = np.unravel_index(where[rng.integers(len(where))], image.shape)
        weight = _blob(rng, image.shape, centre, spacing_kji, rng.uniform(*radius_mm)) * side_tissue
        image -= np.float32(rng.uniform(*contrast_hu)) * weight
        inside = weight > 0.5
        mask[inside] = 1
        found = np.bincount(case["regions"][inside], minlength=len(TERRITORIES) + 1)[1:]
        lesions += [{"territory": t, "side": side} for t, n in zip(TERRITORIES, found)
                    if n >= TERRITORY_SHARE * max(int(inside.sum()), 1)]
    return dict(case, image=np.rint(image).astype(case["image"].dtype), mask=mask, lesions=lesions)
