"""The six vascular territories (MCA, ACA, PCA x patient left / right), defined geometrically.

No public CT territory atlas is available offline, so the territories are boxes in coordinates
normalised to the brain's bounding box, on a brain mask in canonical LPS-axial order ``[k, j, i]``
(columns patient right -> left, rows anterior -> posterior, slices inferior -> superior):

- ``u`` in [-1, 1]: left-right position relative to the midline, ``u < 0`` is the patient's RIGHT;
  ``|u| = 1`` at the lateral edge of the brain's bounding box.
- ``v`` in [0, 1]: anterior (0) -> posterior (1) over the bounding box.
- ``w`` in [0, 1]: inferior (0) -> superior (1) over the bounding box.

Rules, applied in this order (first match wins), inside the brain mask only:

1. **Infratentorial** (cerebellum and brainstem: label 0, no territory):
   ``(v > 0.55 and w < 0.38) or (v > 0.45 and w < 0.22)``.
2. **PCA, occipital lobe**: ``v > 0.75``.
3. **ACA**, the medial frontal and parietal strip along the midline above the basal ganglia:
   ``|u| < 0.30 and v < 0.65 and w > 0.42``.
4. **PCA, medial temporal lobe and thalamus**: ``|u| < 0.45 and 0.45 < v <= 0.75 and w < 0.48``.
5. **MCA**: the rest of the cerebral hemisphere (lateral cortex, insula, basal ganglia, white matter).

The side comes from the sign of ``u``. These boxes follow the textbook territory maps loosely
(ACA medial, PCA posterior and infero-medial, MCA lateral); they are a stand-in fit for a
benchmark with known answers and for naming where a saliency peak lies, not for clinical use.
Label values are 1 + the index in :data:`TERRITORIES`.
"""
from __future__ import annotations

import numpy as np

TERRITORIES = ("MCA_left", "MCA_right", "ACA_left", "ACA_right", "PCA_left", "PCA_right")
TERRITORY_LABELS = {name: i + 1 for i, name in enumerate(TERRITORIES)}


def territory_side(name: str) -> str:
    """'left' or 'right' (the patient's) for a territory name."""
    return name.split("_")[1]


def territories_of_side(side: str) -> tuple:
    return tuple(t for t in TERRITORIES if territory_side(t) == side)


def normalised_coordinates(brain_mask: np.ndarray, midline_column: float | None = None):
    """(u, v, w) open grids (see module docstring) for a canonical brain mask ``[k, j, i]``."""
    mask = np.asarray(brain_mask, dtype=bool)
    if not mask.any():
        raise ValueError("the brain mask is empty")
    ks, js, is_ = (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    k0, k1, j0, j1, i0, i1 = ks[0], ks[-1], js[0], js[-1], is_[0], is_[-1]
    mid = (i0 + i1) / 2.0 if midline_column is None else float(midline_column)
    half = max(mid - i0, i1 - mid, 1.0)
    K, J, I = mask.shape
    u = ((np.arange(I) - mid) / half)[None, None, :]
    v = ((np.arange(J) - j0) / max(j1 - j0, 1))[None, :, None]
    w = ((np.arange(K) - k0) / max(k1 - k0, 1))[:, None, None]
    return u, v, w


def territory_map(brain_mask: np.ndarray, midline_column: float | None = None) -> np.ndarray:
    """uint8 label map ``[k, j, i]`` of the six territories (0 outside / infratentorial)."""
    mask = np.asarray(brain_mask, dtype=bool)
    u, v, w = normalised_coordinates(mask, midline_column)
    au = np.abs(u)
    infratentorial = ((v > 0.55) & (w < 0.38)) | ((v > 0.45) & (w < 0.22))
    pca_occipital = v > 0.75
    aca = (au < 0.30) & (v < 0.65) & (w > 0.42)
    pca_medial = (au < 0.45) & (v > 0.45) & (v <= 0.75) & (w < 0.48)
    kind = np.full(mask.shape, 1, dtype=np.uint8)      # 1 MCA, 2 ACA, 3 PCA (per side below)
    kind = np.where(pca_medial, 3, kind)
    kind = np.where(aca, 2, kind)
    kind = np.where(pca_occipital, 3, kind)
    kind = np.where(infratentorial | ~mask, 0, kind).astype(np.uint8)
    right = np.broadcast_to(u < 0, mask.shape)
    # label = 1 + index in TERRITORIES: MCA_left 1, MCA_right 2, ACA_left 3, ACA_right 4, PCA_left 5, PCA_right 6
    labels = np.where(kind > 0, 2 * (kind.astype(np.int16) - 1) + 1 + right, 0)
    return labels.astype(np.uint8)


def territory_at(labels: np.ndarray, index_kji) -> str | None:
    """Territory name at voxel ``(k, j, i)`` of a territory label map, or None."""
    value = int(labels[tuple(int(round(x)) for x in index_kji)])
    return TERRITORIES[value - 1] if value > 0 else None


def territory_volume(volume):
    """The six territories (uint8 labels, see module docstring) of a head CT Volume, on its own grid.

    The volume is relabelled to LPS-axial, its brain extracted (:mod:`ACATCore.brain_extraction`), the
    territory boxes are placed on it and the labels are mapped back onto the input grid.
    """
    from ..brain_extraction import extract_brain
    from ..preprocessing import canonical_axes, from_canonical, to_canonical
    perm, flip = canonical_axes(volume.direction)
    canonical = to_canonical(volume)
    labels = territory_map(extract_brain(canonical.array, canonical.spacing, check=False).mask)
    return volume.with_array(from_canonical(labels, perm, flip), kind="territories")


def peak_territory(volume, peak_index, brain=None) -> tuple:
    """(vascular territory name or None, note or None) at ``peak_index`` (i, j, k) of a head CT.

    Uses the geometric territories (``ACATCore.data.territories``) on the brain mask
    (``brain``, a canonical :class:`~ACATCore.brain_extraction.BrainMask`; extracted here when None);
    None with a note when the peak is outside the brain."""
    from ..brain_extraction import extract_brain
    from ..preprocessing import canonical_axes, to_canonical
    perm, flip = canonical_axes(volume.direction)
    if brain is None:
        canonical = to_canonical(volume)
        brain = extract_brain(canonical.array, canonical.spacing, check=False)
    mask = brain.mask
    kji = (peak_index[2], peak_index[1], peak_index[0])
    c = [kji[perm[a]] for a in range(3)]
    c = [mask.shape[a] - 1 - c[a] if flip[a] else c[a] for a in range(3)]
    if not mask.any():
        return None, "vascular territory not reported: no brain found in the volume"
    if not mask[tuple(c)]:
        return None, "vascular territory not reported: the saliency peak lies outside the brain"
    try:
        name = territory_at(territory_map(mask), c)
        if name is None:
            return None, "the saliency peak lies in the posterior fossa, outside the six vascular territories"
        return name, None
    except ValueError as exc:
        return None, f"vascular territory not reported: {exc}"
