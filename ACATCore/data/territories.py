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

With the voxel spacing given (``territory_map(mask, spacing=...)``, as ``analyze`` does), the box is
taken in the brain's own frame rather than the image's: the head's yaw, tilt and roll (each up to
20 degrees) are estimated from the principal axes of the mask in three planes and undone first. On
fresh ACAT-Synth heads (rotated up to 15 degrees about each axis) this raises the voxel agreement with
the generator's own warped territories from 75% to 81% (16 heads, ``bench/bench_brain.py``'s seed).

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


MAX_ROTATION_DEG = 20.0     # a principal axis further than this from the image axis is not trusted


def _plane_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Rotation (radians) of the points' principal axis from the nearest of the a / b axes; 0 if > 20 deg."""
    cov = np.cov(np.stack([a, b]))
    theta = 0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1])
    theta = (theta + np.pi / 4) % (np.pi / 2) - np.pi / 4      # the nearest axis, a or b
    return float(theta) if abs(np.degrees(theta)) <= MAX_ROTATION_DEG else 0.0


def _plane_rotation(axis: int, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    a, b = [x for x in range(3) if x != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def brain_frame(mask: np.ndarray, spacing) -> tuple:
    """(centre mm, rotation R) of the brain: columns of R are its (k, j, i) axes in the image's mm frame.

    Yaw (about k), tilt (about i) and roll (about j), each from the principal axis of the mask's voxels
    in that plane, in turn; ``spacing`` is the volume's (x, y, z) = (i, j, k) voxel size in mm."""
    k, j, i = np.nonzero(mask)
    points = np.stack([k, j, i], 1)[::5] * np.asarray(spacing, float)[::-1]
    centre = points.mean(0)
    rotation = np.eye(3)
    for axis in (0, 2, 1):
        q = (points - centre) @ rotation
        a, b = [x for x in range(3) if x != axis]
        rotation = rotation @ _plane_rotation(axis, _plane_angle(q[:, a], q[:, b]))
    return centre, rotation


def aligned_coordinates(mask: np.ndarray, spacing, points=None) -> tuple:
    """(u, v, w) full grids as :func:`normalised_coordinates`, in the brain's frame (:func:`brain_frame`);
    with ``points`` ((N, 3) voxel indices k, j, i) the (N,) coordinates of those points only."""
    centre, rotation = brain_frame(mask, spacing)
    sp = np.asarray(spacing, float)[::-1]
    inside = (np.argwhere(mask) * sp - centre) @ rotation            # (k, j, i) of the brain in the frame
    lo, hi = inside.min(axis=0), inside.max(axis=0)
    if points is None:
        grids = np.meshgrid(*(np.arange(n) * sp[a] - centre[a] for a, n in enumerate(mask.shape)), indexing="ij")
        q = [sum(grids[a] * rotation[a, b] for a in range(3)) for b in range(3)]
    else:
        q = list(((np.asarray(points, float).reshape(-1, 3) * sp - centre) @ rotation).T)
    mid = (lo[2] + hi[2]) / 2.0
    u = (q[2] - mid) / max(mid - lo[2], hi[2] - mid, 1e-6)
    v = (q[1] - lo[1]) / max(hi[1] - lo[1], 1e-6)
    w = (q[0] - lo[0]) / max(hi[0] - lo[0], 1e-6)
    return u, v, w


def territory_map(brain_mask: np.ndarray, midline_column: float | None = None, spacing=None) -> np.ndarray:
    """uint8 label map ``[k, j, i]`` of the six territories (0 outside / infratentorial).

    With ``spacing`` ((x, y, z) mm) the territories follow the brain's own axes (:func:`brain_frame`);
    without, the image's (the generator's atlas is upright)."""
    mask = np.asarray(brain_mask, dtype=bool)
    if spacing is not None and midline_column is None and mask.any():
        u, v, w = aligned_coordinates(mask, spacing)
    else:
        u, v, w = normalised_coordinates(mask, midline_column)
    return _labels(u, v, w, mask)


def _labels(u, v, w, inside) -> np.ndarray:
    """uint8 territory labels of coordinates (u, v, w) (broadcast together with ``inside``), by the rules."""
    au = np.abs(u)
    infratentorial = ((v > 0.55) & (w < 0.38)) | ((v > 0.45) & (w < 0.22))
    pca_occipital = v > 0.75
    aca = (au < 0.30) & (v < 0.65) & (w > 0.42)
    pca_medial = (au < 0.45) & (v > 0.45) & (v <= 0.75) & (w < 0.48)
    shape = np.broadcast(u, v, w, inside).shape
    kind = np.full(shape, 1, dtype=np.uint8)           # 1 MCA, 2 ACA, 3 PCA (per side below)
    kind = np.where(pca_medial, 3, kind)
    kind = np.where(aca, 2, kind)
    kind = np.where(pca_occipital, 3, kind)
    kind = np.where(infratentorial | ~np.asarray(inside, bool), 0, kind).astype(np.uint8)
    right = np.broadcast_to(u < 0, shape)
    # label = 1 + index in TERRITORIES: MCA_left 1, MCA_right 2, ACA_left 3, ACA_right 4, PCA_left 5, PCA_right 6
    labels = np.where(kind > 0, 2 * (kind.astype(np.int16) - 1) + 1 + right, 0)
    return labels.astype(np.uint8)


def labels_at(brain_mask: np.ndarray, spacing, points) -> np.ndarray:
    """(N,) uint8 labels at voxels ``points`` ((N, 3) k, j, i), the values ``territory_map(brain_mask,
    spacing=spacing)`` has there, without making the whole map (``analyze`` names one peak)."""
    mask = np.asarray(brain_mask, dtype=bool)
    points = np.asarray(points, dtype=np.int64).reshape(-1, 3)
    u, v, w = aligned_coordinates(mask, spacing, points=points)
    return _labels(u, v, w, mask[tuple(points.T)])


def _name(label: int) -> str | None:
    return TERRITORIES[label - 1] if label > 0 else None


def territory_at(labels: np.ndarray, index_kji) -> str | None:
    """Territory name at voxel ``(k, j, i)`` of a territory label map, or None."""
    return _name(int(labels[tuple(int(round(x)) for x in index_kji)]))


def territory_volume(volume):
    """The six territories (uint8 labels, see module docstring) of a head CT Volume, on its own grid.

    The volume is relabelled to LPS-axial, its brain extracted (:mod:`ACATCore.brain_extraction`), the
    territory boxes are placed on it and the labels are mapped back onto the input grid.
    """
    from ..brain_extraction import extract_brain
    from ..preprocessing import canonical_axes, from_canonical, to_canonical
    perm, flip = canonical_axes(volume.direction)
    canonical = to_canonical(volume)
    labels = territory_map(extract_brain(canonical.array, canonical.spacing, check=False).mask,
                           spacing=canonical.spacing)
    return volume.with_array(from_canonical(labels, perm, flip), kind="territories")


def peak_territory(volume, peak_index, brain=None) -> tuple:
    """(vascular territory name or None, note or None) at ``peak_index`` (i, j, k) of a head CT.

    Uses the geometric territories (``ACATCore.data.territories``) on the brain mask
    (``brain``, a canonical :class:`~ACATCore.brain_extraction.BrainMask`; extracted here when None);
    None with a note when the peak is outside the brain."""
    from ..brain_extraction import extract_brain
    from ..preprocessing import canonical_axes, to_canonical
    perm, flip = canonical_axes(volume.direction)
    canonical = to_canonical(volume)
    if brain is None:
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
        name = _name(int(labels_at(mask, canonical.spacing, [c])[0]))
        if name is None:
            return None, "the saliency peak lies in the posterior fossa, outside the six vascular territories"
        return name, None
    except ValueError as exc:
        return None, f"vascular territory not reported: {exc}"
