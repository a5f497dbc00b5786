"""The older brain of an ACAT-Synth head: atrophy and leukoaraiosis (drawn for varied heads), asymmetric
ventricles and calcified choroid plexus (bench shifts: set through the ``acquisition`` option only).

Most head CT is of older patients. Their CSF spaces are wider (atrophy: larger ventricles, open sulci) and
the deep white matter around the ventricles is often symmetrically darker (leukoaraiosis, small-vessel
disease). Both are darker than the parenchyma, as an infarct is, so a model that never saw them can call
them lesions. One lateral ventricle is often wider than the other, a dark asymmetry a model could read as
a lesion on that side; the choroid plexus in the ventricles' atria often calcifies (bright, in the bone
range of brain extraction). The atlas is a young brain: these factors age it, on the atlas HU before the
tissues are added (:func:`ACATCore.data.synth_brain._add_tissues` then applies grey-white gain and offset
to the result, so a calcification's HU is scaled by that gain around 30 HU).
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
AGING_KEYS = ("atrophy_mm", "leukoaraiosis_hu", "ventricle_asym_mm", "calcification_hu")   # acquisition keys
CALCIFICATION_MM = 3.0    # radius of a calcified choroid plexus glomus (bench shift only: not drawn)


def draw_aging(rng, ventricle_asym_mm=None) -> dict:
    """The aging factors of one varied head, from their own stream (the other factors do not move).
    ``ventricle_asym_mm`` ([lo, hi], the generator option): also widen one lateral ventricle, of a side drawn
    at random, by a drawn amount (drawn after the others, so they stay as they are without it)."""
    u = rng.random(3)
    aging = {"atrophy_mm": float(ATROPHY_MM[0] + (ATROPHY_MM[1] - ATROPHY_MM[0]) * u[0]),
             "leukoaraiosis_hu": float(LEUKO_HU[0] + (LEUKO_HU[1] - LEUKO_HU[0]) * u[1]) if u[2] < LEUKO_P else 0.0}
    if ventricle_asym_mm is not None:
        side = 1.0 if rng.random() < 0.5 else -1.0            # > 0 the patient's left
        aging["ventricle_asym_mm"] = side * float(rng.uniform(*ventricle_asym_mm))
    return aging


def age_brain(hu: np.ndarray, d: np.ndarray, spacing_kji, f: dict, territories=None) -> np.ndarray:
    """Age the brain in ``hu`` (atlas HU on the render grid, changed in place; ``d``: mm outside the brain,
    ``spacing_kji``: the grid's mm) by the factors ``f`` (:data:`AGING_KEYS`; 0 = off): widen the CSF spaces by
    ``atrophy_mm``; widen one lateral ventricle ``ventricle_asym_mm`` more (> 0 the patient's left, < 0 the
    right); calcify the choroid plexus of both (``calcification_hu``, a few mm at the back of each lateral
    ventricle); darken the white matter around the ventricles by up to ``leukoaraiosis_hu`` HU.
    ``territories``: the territory labels on the grid (odd on the left), needed for the asymmetry and the
    calcifications.
    Returns the fraction of each voxel that became CSF (0 where none).
    """
    grown = np.zeros(hu.shape, np.float32)
    found = ndi.find_objects((d < 0).astype(np.uint8))
    if not any(f[k] for k in AGING_KEYS) or not found:
        return grown
    box = found[0]                        # the brain's box: every distance below runs inside the brain
    terr = None if territories is None else territories[box]
    grown[box] = _age_box(hu[box], d[box], spacing_kji, f, terr)
    return grown


def _widen(hu, csf, inside, spacing_kji, mm) -> np.ndarray:
    """Grow CSF (``csf``) by ``mm`` into ``inside``, with partial volume over one pixel; the fraction grown."""
    dist = ndi.distance_transform_edt(~csf, sampling=spacing_kji).astype(np.float32)
    ramp = np.float32(min(spacing_kji[1:]))
    grown = np.clip((np.float32(mm) - dist) / ramp + 0.5, 0.0, 1.0) * inside
    grown *= hu > GROWN_CSF_HU                                    # CSF already darker stays as it is
    hu += grown * (np.float32(GROWN_CSF_HU) - hu)
    return grown


def _side(terr, left: bool):
    return (terr > 0) & (terr % 2 == (1 if left else 0))


def _age_box(hu, d, spacing_kji, f, terr) -> np.ndarray:
    """:func:`age_brain` on the brain's bounding box (``hu`` a view, changed in place)."""
    grown = np.zeros(hu.shape, np.float32)
    inside = d < 0
    csf = inside & (hu < CSF_ATLAS_HU)
    if f["atrophy_mm"] > 0 and csf.any():
        grown = _widen(hu, csf, inside, spacing_kji, f["atrophy_mm"])
        csf |= grown > 0.5
    ventricles = csf & (d < -VENTRICLE_DEPTH_MM)
    asym = f["ventricle_asym_mm"]
    side = _side(terr, asym > 0) if asym else None
    if asym and (ventricles & side).any():                    # one lateral ventricle wider than the other
        grown = np.maximum(grown, _widen(hu, ventricles & side, inside & side, spacing_kji, abs(asym)))
        csf |= grown > 0.5
        ventricles = csf & (d < -VENTRICLE_DEPTH_MM)
    if f["calcification_hu"] > 0:
        for left in (True, False):
            _calcify(hu, ventricles & _side(terr, left), spacing_kji, f["calcification_hu"])
    if f["leukoaraiosis_hu"] > 0 and ventricles.any():
        dist = ndi.distance_transform_edt(~ventricles, sampling=spacing_kji).astype(np.float32)
        fade = np.clip(1.0 - dist / np.float32(LEUKO_REACH_MM), 0.0, 1.0) * inside * ~csf
        hu -= np.float32(f["leukoaraiosis_hu"]) * fade
    return grown


def _calcify(hu, ventricle, spacing_kji, calc_hu) -> None:
    """A calcified choroid plexus glomus: a ball of ``CALCIFICATION_MM`` radius at ``calc_hu`` HU, centred on
    the middle of the back quarter of one lateral ventricle (its atrium), with partial volume."""
    kji = np.argwhere(ventricle)
    if len(kji) < 10:
        return
    j_back = np.percentile(kji[:, 1], 75)                       # rows run anterior -> posterior
    centre = kji[kji[:, 1] >= j_back].mean(axis=0)
    r = np.float32(CALCIFICATION_MM)
    grid = np.ogrid[tuple(slice(0, n) for n in hu.shape)]
    dist = np.sqrt(sum(((g - c) * np.float32(s)) ** 2 for g, c, s in zip(grid, centre, spacing_kji)))
    ball = np.clip((r - dist) / np.float32(min(spacing_kji[1:])) + 0.5, 0.0, 1.0)
    hu += ball * (np.float32(calc_hu) - hu)
