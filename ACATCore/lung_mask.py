"""The lungs of a chest CT, found from the CT itself, to bound where a lung model's maps are shown.

``analyze`` runs it for lung models, as it runs brain extraction for brain models: the saliency,
attention and counterfactual maps are zero outside the lungs and the saliency peak is searched inside
them. The model's input is not changed, so the probabilities are the same with or without it.

The steps, on a canonical LPS-axial array ``[k, j, i]`` in HU:

1. **Air**: every voxel below ``AIR_HU`` (aerated lung, ground glass, emphysema, airways, and the air
   around the body).
2. **Inside the body**: the 3-D parts of that air that touch neither the anterior nor the posterior border
   of the image; the air around the body, under the table and in the gantry touches one. A lung that a
   narrow field of view cuts touches only the left or right border, and stays (on 24 fresh chest CT cut to
   32 cm, 5 had a lung touching the border, all found so; the air around the body reaches the anterior or
   posterior row, at least at the image's corners, unless the body covers a whole row).
3. **Lungs**: those parts of at least ``MIN_PART_ML`` and ``LARGEST_SHARE`` of the largest one (gas
   bubbles, the stomach's and the bowel's gas are dropped).
4. **Whole lungs**: each lung of each slice closed in-plane by ``CLOSE_MM`` and its holes filled, so
   vessels, nodules and consolidation inside the lung belong to it. The closing is small on purpose: the
   counterfactual maps are brightest along the hilum's vessels and bronchi, and a wider closing (10-20 mm)
   or a margin brings them back into the mask (on 32 tuning chest CT, generator seed 9300, the peak lay in
   a finding in 31% of the positives without a mask, 41% with this one, 31-34% with 10-20 mm closings).
   Dense consolidation against the chest wall has the wall's HU and stays partly outside (the mask holds
   about 80% of the findings' voxels).
5. **Plausibility**: at least ``MIN_LUNG_ML`` in all; otherwise None (a head CT, a field of view that cuts
   the lungs at the front or back): ``analyze`` then shows the maps everywhere and says why, and a model that
   reads the lungs only (``lung_box``, ``lung_extraction``) refuses the CT (:func:`require_lungs`).

**Lung extraction** (a model card's ``"lung_extraction": true``, :mod:`ACATCore.preprocessing`): the model
input keeps the CT only in :func:`input_region`, the lungs widened in-plane by ``INPUT_MARGIN_MM`` (a square,
so up to 1.4 times that at its corners), and takes the window's lower value elsewhere, as brain extraction
does for the brain. The margin brings back consolidation against the chest wall that the air threshold
leaves out (on 20 generated positives the lungs above hold 77% of the findings' voxels, widened by 10 mm
92%). Without lungs (:func:`require_lungs`) such a model has nothing to read: a clear error, not a guess.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError

AIR_HU = -400.0           # aerated lung about -850, ground glass -750..-550; soft tissue above -150
MIN_PART_ML = 10.0        # one lung of an adult: 1500-3000 ml; a gas bubble: a few ml
LARGEST_SHARE = 0.1       # of the largest part: both lungs (often one part through the airways) stay,
                          # stomach and bowel gas (tens of ml) go
CLOSE_MM = 3.0            # at least one voxel in-plane
MIN_LUNG_ML = 200.0
INPUT_MARGIN_MM = 10.0    # lung extraction: what the model sees around the lungs, in-plane


def find_lungs(hu: np.ndarray, spacing) -> Optional[np.ndarray]:
    """Boolean lung mask of a canonical ``hu`` array [k, j, i] with ``spacing`` (i, j, k) in mm, or None
    when no plausible lungs are found."""
    hu = np.asarray(hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        return None
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labels, n = ndi.label(hu < AIR_HU)
    if n == 0:
        return None
    border = np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel()]))   # anterior, posterior
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * voxel_ml
    sizes[border] = 0
    sizes[0] = 0
    keep = (sizes >= MIN_PART_ML) & (sizes >= LARGEST_SHARE * sizes.max())
    lungs = keep[labels]
    if lungs.sum() * voxel_ml < MIN_LUNG_ML:
        return None
    return _whole(lungs, spacing)


def _disk(mm: float, spacing) -> np.ndarray:
    """An in-plane disk of radius ``mm`` (at least one voxel), shape (2 ry + 1, 2 rx + 1)."""
    ry, rx = (max(1, int(round(mm / float(s)))) for s in (spacing[1], spacing[0]))
    yy, xx = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    return (yy / ry) ** 2 + (xx / rx) ** 2 <= 1.0


def _whole(lungs: np.ndarray, spacing) -> np.ndarray:
    """Each in-plane part of ``lungs`` closed by CLOSE_MM and its holes filled (one part at a time, so the
    closing never bridges the two lungs across the mediastinum). A closing by a disk stays inside the
    part's bounding box, so each result goes back into that box."""
    disk = _disk(CLOSE_MM, spacing)
    ry, rx = disk.shape[0] // 2, disk.shape[1] // 2
    out = lungs.copy()
    for k, plane in enumerate(lungs):
        labels, _ = ndi.label(plane)
        for n, box in enumerate(ndi.find_objects(labels), start=1):
            part = np.pad(labels[box] == n, ((ry, ry), (rx, rx)))     # the closing must not meet an edge
            whole = ndi.binary_fill_holes(ndi.binary_closing(part, structure=disk))
            out[k][box] |= whole[ry:-ry, rx:-rx]
    return out


def require_lungs(hu: np.ndarray, spacing) -> np.ndarray:
    """:func:`find_lungs`, or an InputError saying what to give a lung model instead."""
    lungs = find_lungs(hu, spacing)
    if lungs is None:
        raise InputError(f"no lungs were found in this CT (at least {MIN_LUNG_ML:g} ml of air inside the body): "
                         "the lung model reads chest CT with the lungs in the field of view; "
                         "for a head CT use the brain model")
    return lungs


def lung_slices(lungs: np.ndarray) -> tuple:
    """(first slice, number of slices) from the first to the last slice of a canonical lung mask [k, j, i]."""
    ks = np.flatnonzero(np.asarray(lungs).any(axis=(1, 2)))
    return int(ks[0]), int(ks[-1] - ks[0] + 1)


def input_region(lungs: np.ndarray, spacing, margin_mm: float = INPUT_MARGIN_MM) -> np.ndarray:
    """``lungs`` widened in-plane by ``margin_mm`` (a square of that half-width: a separable maximum filter,
    under a second on a 512 x 512 x 200 volume where a disk takes 20): where lung extraction keeps the CT."""
    ry, rx = (max(1, int(round(margin_mm / float(s)))) for s in (spacing[1], spacing[0]))
    grown = ndi.maximum_filter(np.asarray(lungs, dtype=np.uint8), size=(1, 2 * ry + 1, 2 * rx + 1))
    return grown.astype(bool)
