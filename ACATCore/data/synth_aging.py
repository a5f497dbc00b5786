"""The older brain of an ACAT-Synth head: atrophy and leukoaraiosis.

Most head CT is of older patients. Their CSF spaces are wider (atrophy: larger ventricles, open sulci) and
the deep white matter around the ventricles is often symmetrically darker (leukoaraiosis, small-vessel
disease). Both are darker than the parenchyma, as an infarct is, so a model that never saw them can call
them lesions. The atlas is a young brain: these two factors age it, on the atlas HU before the tissues are
added (:func:`ACATCore.data.synth_brain._add_tissues` then applies grey-white gain and offset to the result).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

CSF_ATLAS_HU = 15.0       # atlas voxels inside the brain below this are CSF (the atlas' 5th percentile is 17 HU)
GROWN_CSF_HU = 6.0        # HU of the CSF that atrophy adds (the atlas' ventricles: 2-10 HU)
VENTRICLE_DEPTH_MM = 12.0  # CSF this deep inside the brain is ventricle (sulci are shallower)
LEUKO_REACH_MM = 10.0     # leukoaraiosis fades to nothing this far from the ventricles
ATROPHY_MM = (0.0, 7.0)   # varied heads: uniform
LEUKO_HU = (0.0, 12.0)    # varied heads: uniform, in LEUKO_P of them (none in the others)
LEUKO_P = 0.5


def draw_aging(rng) -> dict:
    """The aging factors of one varied head, from their own stream (the other factors do not move)."""
    u = rng.random(3)
    return {"atrophy_mm": float(ATROPHY_MM[0] + (ATROPHY_MM[1] - ATROPHY_MM[0]) * u[0]),
            "leukoaraiosis_hu": float(LEUKO_HU[0] + (LEUKO_HU[1] - LEUKO_HU[0]) * u[1]) if u[2] < LEUKO_P else 0.0}


def age_brain(hu: np.ndarray, d: np.ndarray, spacing_kji, atrophy_mm: float, leuko_hu: float) -> np.ndarray:
    """Widen the CSF spaces by ``atrophy_mm`` and darken the white matter around the ventricles by up to
    ``leuko_hu`` HU, in ``hu`` (atlas HU on the render grid, changed in place; ``d``: mm outside the brain,
    ``spacing_kji``: the grid's mm). Returns the fraction of each voxel that became CSF (0 where none).
    """
    grown = np.zeros(hu.shape, np.float32)
    found = ndi.find_objects((d < 0).astype(np.uint8))
    if (atrophy_mm <= 0 and leuko_hu <= 0) or not found:
        return grown
    box = found[0]                        # the brain's box: every distance below runs inside the brain
    grown[box] = _age_box(hu[box], d[box], spacing_kji, atrophy_mm, leuko_hu)
    return grown


def _age_box(hu, d, spacing_kji, atrophy_mm, leuko_hu) -> np.ndarray:
    """:func:`age_brain` on the brain's bounding box (``hu`` a view, changed in place)."""
    grown = np.zeros(hu.shape, np.float32)
    inside = d < 0
    csf = inside & (hu < CSF_ATLAS_HU)
    if atrophy_mm > 0 and csf.any():
        dist = ndi.distance_transform_edt(~csf, sampling=spacing_kji).astype(np.float32)
        ramp = np.float32(min(spacing_kji[1:]))                  # partial volume over one pixel
        grown = np.clip((np.float32(atrophy_mm) - dist) / ramp + 0.5, 0.0, 1.0) * inside
        grown *= hu > GROWN_CSF_HU                                # CSF already darker stays as it is
        hu += grown * (np.float32(GROWN_CSF_HU) - hu)
        csf |= grown > 0.5
    ventricles = csf & (d < -VENTRICLE_DEPTH_MM)
    if leuko_hu > 0 and ventricles.any():
        dist = ndi.distance_transform_edt(~ventricles, sampling=spacing_kji).astype(np.float32)
        fade = np.clip(1.0 - dist / np.float32(LEUKO_REACH_MM), 0.0, 1.0) * inside * ~csf
        hu -= np.float32(leuko_hu) * fade
    return grown
