"""Brain extraction from a head CT itself: what the skull encloses, minus skull, scalp and holder.

One implementation for training, ``analyze`` and Slicer: :func:`prepare` runs it when a model card's
``preprocessing`` says ``"brain_extraction": true`` (on for the brain bundles), and the pipeline uses
the same mask to bound the saliency peak search, the territories and the overlays.

The steps, on a canonical LPS-axial array ``[k, j, i]`` in HU, at about 1.5 mm in-plane:

1. **Bone** is every voxel above ``BONE_HU``; it is dilated in-plane by ``SEAL_MM`` to seal small
   gaps (sutures, thin or beam-hardened bone, foramina seen in one slice).
2. **Enclosed** space: per slice, the holes of the sealed bone (what cannot be reached from the
   image border without crossing bone). Slice by slice, so a scan that stops below the vertex or
   above the skull base, or a tilted gantry, needs nothing special; scalp, face, neck, pillow and
   head holder lie outside the skull ring and are never enclosed.
3. **Soft tissue** in ``TISSUE_HU`` inside it (brain, CSF, lesions, fresh blood), minus a one-pixel
   rim along the bone (the inner table's partial volume).
4. **One brain**: an in-plane erosion by ``SEAL_MM`` cuts bridges through skull-base foramina and
   orbits; the largest 3-D part is kept and grown back inside the tissue (geodesic dilation), then
   the holes of each slice are filled (calcifications, dense vessels).
5. **Plausibility**: a brain of at least ``MIN_BRAIN_ML`` and at most ``MAX_BRAIN_ML`` millilitres, no
   wider than ``MAX_WIDTH_MM`` in-plane, with most of the skull's inside being soft tissue. A chest CT, a
   face-only scan or an MR fails with one :class:`InputError` naming what was wrong.

Beam hardening at the skull base darkens tissue by tens of HU at most, which stays inside the tissue
window; dense streaks that cross into the bone range are removed by the rim and the erosion.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError

BONE_HU = 190.0               # cortical bone and diploe lie above; brain, blood and scalp below
TISSUE_HU = (-15.0, 100.0)    # CSF ... acute blood
SEAL_MM = 3.0                 # in-plane closing of gaps in the skull, and the erosion that cuts bridges
WORK_MM = 1.5                 # in-plane resolution the mask is computed at (then upsampled)
MIN_BRAIN_ML = 150.0          # less: no brain (a face-only scan, a chest, a neck)
MAX_BRAIN_ML = 2500.0
MAX_WIDTH_MM = 210.0          # widest brain is about 160 mm (left-right) and 200 mm (front-back)
MIN_TISSUE_FRACTION = 0.6     # of the space the bone encloses (a head: > 0.85; a chest: lungs are air)


@dataclass
class BrainMask:
    """A brain mask on a canonical LPS-axial grid, with its extent."""
    mask: np.ndarray          # bool [k, j, i], the canonical grid
    slices: tuple             # (k0, k1): first and last slice holding brain
    box: tuple                # (j0, j1, i0, i1): in-plane bounding box, inclusive
    volume_ml: float

    @property
    def centre(self) -> tuple:
        """(j, i) centre of the in-plane bounding box."""
        j0, j1, i0, i1 = self.box
        return (j0 + j1) / 2.0, (i0 + i1) / 2.0


def _in_plane(radius_px: int) -> np.ndarray:
    """A (1, n, n) disc: a structuring element that acts on each slice alone."""
    r = max(int(radius_px), 0)
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y <= r * r + r)[None]


def _downsample(hu: np.ndarray, spacing) -> tuple:
    """In-plane stride so that pixels are about WORK_MM; returns (array, stride_j, stride_i)."""
    sx, sy = float(spacing[0]), float(spacing[1])
    fi, fj = max(1, int(round(WORK_MM / sx))), max(1, int(round(WORK_MM / sy)))
    return hu[:, ::fj, ::fi], fj, fi


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _mask_at_work_resolution(hu: np.ndarray, px_mm: float) -> tuple:
    """Steps 1-4 on an array whose pixels are about ``px_mm``; returns (brain, enclosed)."""
    seal = _in_plane(round(SEAL_MM / px_mm))
    bone = hu > BONE_HU
    sealed = ndi.binary_dilation(bone, structure=seal)
    in_plane = _in_plane(1)
    enclosed = ndi.binary_fill_holes(sealed, structure=in_plane) & ~sealed
    # the sealing dilation ate SEAL_MM of the inside: give it back, away from bone
    inside = ndi.binary_dilation(enclosed, structure=seal) & ~ndi.binary_dilation(bone, structure=in_plane)
    tissue = inside & (hu >= TISSUE_HU[0]) & (hu <= TISSUE_HU[1])
    core = _largest_component(ndi.binary_erosion(tissue, structure=seal))
    if not core.any():
        return core, inside
    brain = ndi.binary_dilation(core, structure=_in_plane(1), iterations=int(seal.shape[1]), mask=tissue)
    brain = ndi.binary_fill_holes(brain, structure=in_plane)
    return brain, inside


def extract_brain(hu: np.ndarray, spacing, check: bool = True) -> BrainMask:
    """The brain of a canonical LPS-axial head CT ``hu`` ``[k, j, i]`` (HU), ``spacing`` (x, y, z) mm.

    Raises :class:`InputError` (when ``check``) if no plausible brain is found: not a head CT.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise InputError(f"brain extraction needs a 3-D volume, got {hu.ndim}-D")
    small, fj, fi = _downsample(hu, spacing)
    px_mm = float(np.sqrt(spacing[0] * fi * spacing[1] * fj))
    brain_small, inside = _mask_at_work_resolution(small, px_mm)
    voxel_small_ml = spacing[0] * fi * spacing[1] * fj * spacing[2] / 1000.0
    volume_ml = float(brain_small.sum() * voxel_small_ml)
    if check:
        _check_plausible(brain_small, inside, volume_ml, (spacing[1] * fj, spacing[0] * fi))
    mask = np.repeat(np.repeat(brain_small, fj, axis=1), fi, axis=2)[:, :hu.shape[1], :hu.shape[2]]
    mask &= hu <= BONE_HU       # bone that the hole filling took in (skull base), and upsampled edges
    if fj > 1 or fi > 1:
        mask &= hu >= TISSUE_HU[0]
    if not mask.any():
        return BrainMask(mask, (0, hu.shape[0] - 1), (0, hu.shape[1] - 1, 0, hu.shape[2] - 1), 0.0)
    ks, js, is_ = (np.flatnonzero(mask.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    return BrainMask(mask, (int(ks[0]), int(ks[-1])), (int(js[0]), int(js[-1]), int(is_[0]), int(is_[-1])),
                     volume_ml)


def _check_plausible(brain: np.ndarray, inside: np.ndarray, volume_ml: float, pixel_mm) -> None:
    what = "no brain was found in this volume"
    advice = "give a head CT (the brain model needs the skull and the brain inside it)"
    if volume_ml < MIN_BRAIN_ML:
        raise InputError(f"{what}: the skull encloses {volume_ml:.0f} mL of brain-like tissue, less than "
                         f"{MIN_BRAIN_ML:.0f} mL; {advice}")
    if volume_ml > MAX_BRAIN_ML:
        raise InputError(f"{what}: {volume_ml:.0f} mL of enclosed soft tissue is more than a brain "
                         f"({MAX_BRAIN_ML:.0f} mL); {advice}")
    js, is_ = np.flatnonzero(brain.any(axis=(0, 2))), np.flatnonzero(brain.any(axis=(0, 1)))
    width = max((js[-1] - js[0] + 1) * pixel_mm[0], (is_[-1] - is_[0] + 1) * pixel_mm[1])
    if width > MAX_WIDTH_MM:
        raise InputError(f"{what}: the enclosed tissue is {width:.0f} mm wide, wider than a head "
                         f"({MAX_WIDTH_MM:.0f} mm); {advice}")
    fraction = float(brain.sum()) / max(float(inside.sum()), 1.0)
    if fraction < MIN_TISSUE_FRACTION:
        raise InputError(f"{what}: only {100 * fraction:.0f}% of what the bone encloses is soft tissue "
                         f"(a skull holds > 85%); {advice}")


def brain_mask_volume(volume):
    """The brain mask of a head CT :class:`~ACATCore.volume.Volume` on its own grid (uint8 0/1)."""
    from .preprocessing import canonical_axes, from_canonical, to_canonical
    perm, flip = canonical_axes(volume.direction)
    canonical = to_canonical(volume)
    brain = extract_brain(canonical.array, canonical.spacing)
    return volume.with_array(from_canonical(brain.mask.astype(np.uint8), perm, flip), kind="brain mask")
