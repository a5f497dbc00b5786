"""From a CT :class:`~ACATCore.volume.Volume` to the model input, and model-grid maps back again.

:func:`prepare` follows a model card's ``preprocessing`` spec
``{"window": [lo, hi], "slices": S, "size": [H, W], "orientation": "LPS-axial", "midline": ...}``:

1. **Canonical orientation** ("LPS-axial"): the array axes are permuted and flipped (no resampling,
   the same as SimpleITK's ``DICOMOrientImageFilter`` with ``"LPS"``) so that columns run patient
   right -> left, rows anterior -> posterior and slices inferior -> superior. Each input axis goes to
   the LPS axis its direction is closest to, so an oblique scan keeps its obliquity (the canonical
   grid is the input grid, relabelled).
   **Brain extraction** (``"brain_extraction": true``, the brain bundles): the brain is found in the
   CT itself (:mod:`ACATCore.brain_extraction`); slices are then sampled between its first and last
   slice, each slice is cropped around it (:func:`brain_box`: the model input's aspect ratio in mm,
   a small margin, centred on the brain) and everything outside it takes the window's lower value.
   Skull, scalp, holder and the scan's coverage and field of view no longer reach the model.
   **Lung extraction** (``"lung_extraction": true``, an option the shipped lung bundle does not use): the lungs are
   found in the CT itself (:mod:`ACATCore.lung_mask`) and everything outside them, widened by a margin,
   takes the window's lower value; slices and field of view are not changed.
   **Lung box** (``"lung_box": true``): the lungs are found the same way; slices are sampled between their
   first and last slice and each slice is cropped around both lungs (:func:`lung_box`), so the scan's field of
   view, its coverage along the body and the patient's size no longer set where the lungs lie in the input.
2. **Slice sampling**: S slices, evenly spaced and centred: slice ``s`` sits at the continuous
   position ``(s + 0.5 + o) * K / S - 0.5`` of the K canonical slices, rounded, with ``o = offset`` for
   ``offset < 0.5`` and ``offset - 1`` otherwise. ``offset = 0`` is the centred grid; the offsets of
   :func:`coverage_offsets` together see every slice. With fewer than S slices, slices repeat (warned;
   with slabs, below S / 2).
   **Slabs** (``"slab": true``): instead of one slice, model slice ``s`` is the mean of the ``s``-th of
   S contiguous runs of slices (:func:`slab_ranges`), a thick slab, so one sampling sees every slice
   (a lesion cannot fall between samples, thin-slice noise is averaged) and ``offset`` is not used.
   ``"slab_mean": "brain"`` (with brain extraction) averages each pixel over the slab's slices in
   which it is brain only, so a slab at the brain's edge is not darkened by the slices in which that
   pixel is skull or outside the head (the default ``"all"`` averages every slice, outside = ``lo``).
3. **Window** ``[lo, hi]`` HU -> [0, 1] (clipped).
4. **Resize** each slice (or its crop) to ``size`` = (H, W), bilinear (antialiased when shrinking), pixel-centre
   aligned (``align_corners=False``).
5. **Midline** (brain): ``"center"`` takes the image centre as the mid-sagittal line; ``"symmetry"``
   finds the column about which the sampled slices are most mirror-symmetric (flip correlation) and
   shifts the columns by a whole number of pixels so that this midline lies at W/2 (columns shifted
   in are 0). ``None`` does nothing. ``Prepared.midline`` records what was done.

:meth:`Prepared.to_input_grid` inverts 5, 4 and 1 and puts each input slice the value of the NEAREST
sampled slice along k (slices equally near two sampled slices, or sampled several times, get their
mean), so that every input slice carries a value (with slabs: the value of its slab);
:meth:`Prepared.slices_seen` lists the input slices the model actually saw, for callers that want to
mark the others.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, InputError
from .volume import Volume

ORIENTATIONS = ("LPS-axial",)
BOX_MARGIN = 0.06        # brain extraction: crop margin on each side, as a fraction of the brain's extent
LUNG_BOX_MARGIN = 0.1    # lung box: the same around both lungs (the chest wall next to them stays in view)
MIDLINES = ("center", "symmetry", None)
SLAB_MEANS = ("all", "brain")


# ------------------------------------------------------------------------------ orientation
def canonical_axes(direction) -> tuple:
    """For each canonical axis (i->L, j->P, k->S): (input array axis, flipped?) in numpy order.

    Returns ``(perm, flip)`` where ``perm[a]`` is the input numpy axis that becomes canonical numpy
    axis ``a`` (0 = k/S, 1 = j/P, 2 = i/L) and ``flip[a]`` says whether it is reversed.
    """
    d = np.abs(np.asarray(direction, dtype=float))
    # columns of `direction` are the LPS directions of input i, j, k; find the best one-to-one match
    best, best_score = None, -1.0
    for p in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        score = d[0, p[0]] + d[1, p[1]] + d[2, p[2]]   # LPS axis L gets input axis p[0], ...
        if score > best_score + 1e-9:
            best, best_score = p, score
    direction = np.asarray(direction, dtype=float)
    perm, flip = [], []
    for lps_axis in (2, 1, 0):          # canonical numpy axes: S (k), P (j), L (i)
        in_xyz = best[lps_axis]         # input axis in (i, j, k) order
        perm.append(2 - in_xyz)         # numpy axis of that input axis
        flip.append(bool(direction[lps_axis, in_xyz] < 0))
    return tuple(perm), tuple(flip)


def to_canonical(volume: Volume) -> Volume:
    """The volume with axes permuted/flipped to LPS-axial (same voxels, same physical positions)."""
    perm, flip = canonical_axes(volume.direction)
    array = np.transpose(np.asarray(volume.array), perm)
    flips = [a for a in range(3) if flip[a]]
    if flips:
        array = np.flip(array, axis=flips)
    # geometry: canonical (i, j, k) axis a_xyz comes from input xyz axis 2 - perm[2 - a_xyz]
    direction = np.zeros((3, 3))
    spacing = np.zeros(3)
    first = np.zeros(3)                  # input continuous index (i, j, k) of canonical voxel 0
    in_shape_xyz = np.asarray(volume.array.shape)[::-1]
    for a_xyz in range(3):
        a_np = 2 - a_xyz
        src_xyz = 2 - perm[a_np]
        sign = -1.0 if flip[a_np] else 1.0
        direction[:, a_xyz] = sign * volume.direction[:, src_xyz]
        spacing[a_xyz] = volume.spacing[src_xyz]
        if flip[a_np]:
            first[src_xyz] = in_shape_xyz[src_xyz] - 1
    origin = volume.index_to_physical(first)
    return Volume(array=np.ascontiguousarray(array), spacing=tuple(spacing), origin=tuple(origin),
                  direction=direction, metadata=dict(volume.metadata))


def from_canonical(array: np.ndarray, perm, flip) -> np.ndarray:
    """Undo :func:`to_canonical` on an array of the canonical shape."""
    flips = [a for a in range(3) if flip[a]]
    if flips:
        array = np.flip(array, axis=flips)
    return np.ascontiguousarray(np.transpose(array, np.argsort(perm)))


# ------------------------------------------------------------------------------ slice sampling
def sample_positions(num_slices: int, S: int, offset: float = 0.0) -> np.ndarray:
    """Continuous slice positions (S,) of the evenly spaced, centred sampling grid shifted by ``offset``."""
    if not 0.0 <= offset < 1.0:
        raise ConfigError(f"slice offset {offset} must be in [0, 1)")
    o = offset if offset < 0.5 else offset - 1.0
    return (np.arange(S) + 0.5 + o) * (num_slices / S) - 0.5


def sample_slices(num_slices: int, S: int, offset: float = 0.0) -> np.ndarray:
    """Indices (S,) of the sampled slices among ``num_slices`` (repeats when num_slices < S)."""
    positions = sample_positions(num_slices, S, offset)
    return np.clip(np.floor(positions + 0.5), 0, num_slices - 1).astype(np.int64)


def slab_ranges(num_slices: int, S: int) -> np.ndarray:
    """(S, 2) half-open ranges [a, b) of the S contiguous, (nearly) equal runs of ``num_slices`` slices
    that together cover every slice; with fewer slices than S each run is one slice (repeats)."""
    a = np.floor(np.arange(S) * num_slices / S).astype(np.int64)
    b = np.maximum(a + 1, np.floor(np.arange(1, S + 1) * num_slices / S).astype(np.int64))
    return np.stack([a, b], axis=1)


def _few_slices_note(count: int, S: int, spec: dict) -> str:
    """The warning for a volume (or brain) of fewer slices than the model reads. Slabs of single slices
    are what thick-slice scans give a many-slab model (trained so), so with slabs only fewer than S / 2
    slices (some used three or more times) is warned."""
    where = "brain spans" if spec["brain_extraction"] else "lungs span" if spec.get("lung_box") else "volume has"
    if spec["slab"]:
        return f"the {where} {count} slices, fewer than half the model's {S} slabs: some slices are used 3+ times"
    return f"the {where} {count} slices, fewer than the model's {S}: some slices are used twice"


def coverage_offsets(num_slices: int, S: int) -> list:
    """The fewest evenly spaced offsets whose samplings together see every one of ``num_slices``."""
    n = max(1, math.ceil(num_slices / S))
    while True:
        offsets = [m / n for m in range(n)]
        seen = np.unique(np.concatenate([sample_slices(num_slices, S, o) for o in offsets]))
        if len(seen) == num_slices:
            return offsets
        n += 1


# ------------------------------------------------------------------------------ the spec
def check_spec(spec: dict) -> dict:
    """A validated copy of a preprocessing spec (raises ConfigError naming the bad key)."""
    try:
        lo, hi = (float(v) for v in spec["window"])
        S = int(spec["slices"])
        H, W = (int(v) for v in spec["size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"preprocessing spec needs window [lo, hi], slices S and size [H, W] ({exc!r})") from None
    orientation = spec.get("orientation", "LPS-axial")
    midline = spec.get("midline")
    if not lo < hi:
        raise ConfigError(f"preprocessing window {lo}..{hi} must have lo < hi")
    if S < 1 or H < 4 or W < 4:
        raise ConfigError(f"preprocessing slices {S} / size {H}x{W} out of range")
    if orientation not in ORIENTATIONS:
        raise ConfigError(f"orientation {orientation!r} unknown; use one of {ORIENTATIONS}")
    if midline not in MIDLINES:
        raise ConfigError(f"midline {midline!r} unknown; use 'center', 'symmetry' or null")
    extraction, slab = spec.get("brain_extraction", False), spec.get("slab", False)
    lungs, box = spec.get("lung_extraction", False), spec.get("lung_box", False)
    for key, flag in (("brain_extraction", extraction), ("lung_extraction", lungs), ("lung_box", box)):
        if not isinstance(flag, bool):
            raise ConfigError(f"{key} must be true or false, not {flag!r}")
    if extraction and (lungs or box):
        raise ConfigError("brain_extraction excludes lung_extraction and lung_box: a model reads one organ")
    if not isinstance(slab, bool):
        raise ConfigError(f"slab must be true or false, not {slab!r}")
    slab_mean = spec.get("slab_mean", "all")
    if slab_mean not in SLAB_MEANS or (slab_mean == "brain" and not (slab and extraction)):
        raise ConfigError(f"slab_mean {slab_mean!r}: use 'all', or 'brain' together with slab and brain_extraction")
    out = {"window": [lo, hi], "slices": S, "size": [H, W], "orientation": orientation, "midline": midline,
           "brain_extraction": extraction, "slab": slab}
    if slab_mean != "all":          # cards written before the key keep their exact spec
        out["slab_mean"] = slab_mean
    if lungs:
        out["lung_extraction"] = True
    if box:
        out["lung_box"] = True
    return out


def window(array, lo: float, hi: float) -> np.ndarray:
    """HU window [lo, hi] -> [0, 1] float32."""
    return ((np.clip(np.asarray(array, dtype=np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def _resize(stack: np.ndarray, size, antialias: bool) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    out = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)
    return out[:, 0].numpy()


def _crop(stack: np.ndarray, box, fill: float) -> np.ndarray:
    """Rows j0:j1 and columns i0:i1 of every slice of ``stack`` (S, J, I); outside the array: ``fill``."""
    j0, j1, i0, i1 = box
    S, J, I = stack.shape
    out = np.full((S, j1 - j0, i1 - i0), fill, dtype=np.float32)
    sj, si = slice(max(j0, 0), min(j1, J)), slice(max(i0, 0), min(i1, I))
    out[:, sj.start - j0:sj.stop - j0, si.start - i0:si.stop - i0] = stack[:, sj, si]
    return out


def _paste(stack: np.ndarray, box, shape) -> np.ndarray:
    """Inverse of :func:`_crop`: (S, j1-j0, i1-i0) placed on a zero (S, J, I) canvas."""
    j0, j1, i0, i1 = box
    J, I = shape
    out = np.zeros((stack.shape[0], J, I), dtype=np.float32)
    sj, si = slice(max(j0, 0), min(j1, J)), slice(max(i0, 0), min(i1, I))
    out[:, sj, si] = stack[:, sj.start - j0:sj.stop - j0, si.start - i0:si.stop - i0]
    return out


def brain_box(brain, spacing, size, margin: float = BOX_MARGIN) -> tuple:
    """In-plane crop (j0, j1, i0, i1) around the brain, with the model input's aspect ratio in mm and a
    ``margin`` on each side, centred on the brain's bounding box (so the midline lies near the centre)."""
    return _box_around(brain.box, brain.centre, spacing, size, margin)


def lung_box(lungs: np.ndarray, spacing, size, margin: float = LUNG_BOX_MARGIN) -> tuple:
    """(first slice, number of slices, in-plane crop) of the lungs (a canonical mask): the slices from the lungs'
    first to their last, and a crop around both lungs as :func:`brain_box` makes one around the brain."""
    from .lung_mask import lung_slices
    js, i_s = (np.flatnonzero(lungs.any(axis=axes)) for axes in ((0, 2), (0, 1)))
    centre = ((js[0] + js[-1]) / 2, (i_s[0] + i_s[-1]) / 2)
    return (*lung_slices(lungs), _box_around((js[0], js[-1], i_s[0], i_s[-1]), centre, spacing, size, margin))


def _box_around(bounds, centre, spacing, size, margin: float) -> tuple:
    (j0, j1, i0, i1), (cj, ci) = bounds, centre
    sx, sy = float(spacing[0]), float(spacing[1])
    H, W = size
    height_mm = max((j1 - j0 + 1) * sy, (i1 - i0 + 1) * sx * H / W) * (1 + 2 * margin)
    rows, cols = int(round(height_mm / sy)), int(round(height_mm * W / H / sx))
    top, left = int(round(cj - (rows - 1) / 2)), int(round(ci - (cols - 1) / 2))
    return top, top + rows, left, left + cols


def _shift_columns(stack: np.ndarray, shift: int) -> np.ndarray:
    """Shift along the last axis by ``shift`` pixels (positive: to larger w), filling with 0."""
    if shift == 0:
        return stack
    out = np.zeros_like(stack)
    if shift > 0:
        out[..., shift:] = stack[..., :-shift]
    else:
        out[..., :shift] = stack[..., -shift:]
    return out


def estimate_midline(stack: np.ndarray, max_fraction: float = 0.15) -> float:
    """Column (continuous, pixel centres) about which ``stack`` (S, H, W) is most mirror-symmetric.

    Tries every reflection axis within ``max_fraction * W`` of the centre and keeps the one with the
    highest normalised correlation between the image and its mirror image.
    """
    image = np.asarray(stack, dtype=np.float64).mean(axis=0)
    W = image.shape[1]
    mirrored = image[:, ::-1]
    best_d, best_score = 0, -np.inf
    max_d = max(1, int(round(2 * max_fraction * W)))
    for d in range(-max_d, max_d + 1):
        # mirror about c = (W - 1 + d) / 2: compare image[:, x] with image[:, W - 1 + d - x]
        if d >= 0:
            a, b = image[:, d:], mirrored[:, :W - d]
        else:
            a, b = image[:, :W + d], mirrored[:, -d:]
        a, b = a - a.mean(), b - b.mean()
        denom = np.sqrt((a * a).sum() * (b * b).sum())
        score = (a * b).sum() / denom if denom > 0 else -np.inf
        if score > best_score:
            best_d, best_score = d, score
    return (W - 1 + best_d) / 2.0


# ------------------------------------------------------------------------------ Prepared
@dataclass
class Prepared:
    """A volume prepared for a model, with what is needed to map results back."""
    tensor: torch.Tensor              # (S, 1, H, W) float32 in [0, 1]
    input: Volume                     # the input volume (geometry reference; not modified)
    canonical: Volume                 # the input relabelled to LPS-axial (same voxels)
    canonical_indices: np.ndarray     # (S,) sampled canonical k indices (with slabs: each slab's middle)
    perm: tuple                       # numpy axis permutation input -> canonical
    flip: tuple                       # flips applied after the permutation
    spec: dict
    offset: float = 0.0
    midline: dict = field(default_factory=dict)   # {"method", "column", "shift_px"}
    warnings: list = field(default_factory=list)
    box: tuple = None                 # canonical in-plane crop (j0, j1, i0, i1) resized to the model size
    brain: object = None              # BrainMask (canonical) when the spec asks for brain extraction
    lungs: np.ndarray = None          # lung mask (canonical) when the spec asks for lung extraction
    slabs: np.ndarray = None          # (S, 2) canonical [a, b) of each model slice's slab; None: one slice

    def __post_init__(self):
        if self.box is None:
            K, J, I = self.canonical.array.shape
            self.box = (0, J, 0, I)

    @property
    def slice_axis(self) -> int:
        """The input numpy axis along which slices were sampled (0 for an axial scan)."""
        return int(self.perm[0])

    def _input_index(self, ks) -> np.ndarray:
        """Canonical k indices as indices along the input's slice axis (undoing the slice flip)."""
        ks = np.asarray(ks, dtype=np.int64)
        return self.input.array.shape[self.slice_axis] - 1 - ks if self.flip[0] else ks

    @property
    def slice_indices(self) -> np.ndarray:
        """(S,) input slice indices of the sampled slices (with slabs: each slab's middle slice)."""
        return self._input_index(self.canonical_indices)

    def canonical_members(self) -> list:
        """For each model slice, the canonical k indices it was made from (one, or its slab's)."""
        if self.slabs is None:
            return [np.array([k]) for k in np.asarray(self.canonical_indices, dtype=np.int64)]
        return [np.arange(a, b) for a, b in self.slabs]

    def members(self) -> list:
        """For each model slice, the input slice indices (along :attr:`slice_axis`) it was made from."""
        return [self._input_index(ks) for ks in self.canonical_members()]

    def slices_seen(self) -> np.ndarray:
        """Sorted unique indices of the input slices (along :attr:`slice_axis`) the model saw."""
        return np.unique(np.concatenate(self.members()))

    # model grid -> canonical continuous index
    def model_to_canonical(self, s, h, w) -> np.ndarray:
        """Continuous canonical (i, j, k) of model pixel (s, h, w) (arrays broadcast)."""
        j0, j1, i0, i1 = self.box
        H, W = self.spec["size"]
        shift = self.midline.get("shift_px", 0)
        j = j0 + (np.asarray(h, dtype=float) + 0.5) * (j1 - j0) / H - 0.5
        i = i0 + (np.asarray(w, dtype=float) - shift + 0.5) * (i1 - i0) / W - 0.5
        k = self.canonical_indices[np.asarray(s)].astype(float)
        return np.stack(np.broadcast_arrays(i, j, k), axis=-1)

    def model_to_physical(self, s, h, w) -> np.ndarray:
        """LPS millimetres of the centre of model pixel (s, h, w)."""
        return self.canonical.index_to_physical(self.model_to_canonical(s, h, w))

    def to_canonical_grid(self, map_shw) -> np.ndarray:
        """A model-grid map (S, H, W) on the canonical grid (K, J, I): inverse shift and resize,
        nearest sampled slice along k (mean over ties and repeats)."""
        m = np.asarray(map_shw.detach().cpu() if torch.is_tensor(map_shw) else map_shw, dtype=np.float32)
        if m.ndim == 4 and m.shape[1] == 1:
            m = m[:, 0]
        S = self.spec["slices"]
        H, W = self.spec["size"]
        if m.shape != (S, H, W):
            raise ValueError(f"map of shape {m.shape}; expected (S, H, W) = {(S, H, W)}")
        K, J, I = self.canonical.array.shape
        j0, j1, i0, i1 = self.box
        m = _shift_columns(m, -self.midline.get("shift_px", 0))
        m = _paste(_resize(m, (j1 - j0, i1 - i0), antialias=False), self.box, (J, I))
        out = np.empty((K, J, I), dtype=np.float32)
        positions = self.canonical_indices.astype(float)
        for k in range(K):
            inside = [] if self.slabs is None else np.flatnonzero((self.slabs[:, 0] <= k) & (k < self.slabs[:, 1]))
            dist = np.abs(positions - k)
            nearest = inside if len(inside) else np.flatnonzero(dist <= dist.min() + 1e-9)
            out[k] = m[nearest].mean(axis=0) if len(nearest) > 1 else m[nearest[0]]
        return out

    def to_input_grid(self, map_shw, **metadata) -> Volume:
        """A model-grid map (S, H, W) as a float32 Volume on the input volume's grid."""
        canonical = self.to_canonical_grid(map_shw)
        return self.input.with_array(from_canonical(canonical, self.perm, self.flip), **metadata)

    def to_model_grid(self, volume: Volume, mode: str = "nearest") -> np.ndarray:
        """Another volume on the input grid (e.g. a lesion mask) sampled like the input: (S, H, W)
        float32, without windowing. ``mode`` "nearest" for labels (with slabs: the slab's middle slice),
        "max" for masks (with slabs: set where any slice of the slab is), "bilinear" for intensities
        (with slabs: the slab's mean)."""
        if tuple(volume.array.shape) != tuple(self.input.array.shape):
            raise ValueError(f"volume of shape {volume.array.shape} is not on the input grid {self.input.array.shape}")
        array = np.transpose(np.asarray(volume.array), self.perm)
        flips = [a for a in range(3) if self.flip[a]]
        if flips:
            array = np.flip(array, axis=flips)
        if mode not in ("nearest", "max", "bilinear"):
            raise ValueError(f"mode {mode!r}: use 'nearest', 'max' or 'bilinear'")
        if self.slabs is None or mode == "nearest":
            stack = np.asarray(array[self.canonical_indices], dtype=np.float32)
        else:
            reduce = np.max if mode == "max" else np.mean
            stack = np.stack([reduce(np.asarray(array[ks], dtype=np.float32), axis=0)
                              for ks in self.canonical_members()])
        stack = _crop(stack, self.box, 0.0)
        t = torch.from_numpy(np.ascontiguousarray(stack))[:, None]
        if mode in ("nearest", "max"):
            out = F.interpolate(t, size=tuple(self.spec["size"]), mode="nearest-exact")
        else:
            out = F.interpolate(t, size=tuple(self.spec["size"]), mode="bilinear", align_corners=False)
        return _shift_columns(out[:, 0].numpy(), self.midline.get("shift_px", 0))


def prepare(volume: Volume, spec: dict, offset: float = 0.0, brain=None, lungs=None) -> Prepared:
    """Prepare ``volume`` (HU) for a model as its card's ``spec`` says (see the module docstring).

    With ``"brain_extraction": true`` the brain is found (:mod:`ACATCore.brain_extraction`; pass
    ``brain``, a :class:`~ACATCore.brain_extraction.BrainMask` of the canonical volume, to reuse one):
    the slices are sampled between the brain's first and last slice, each slice is cropped around the
    brain (:func:`brain_box`) and everything outside the brain gets the window's lower value. With
    ``"lung_extraction": true`` the lungs are found (or ``lungs``, a canonical mask, is reused) and
    everything outside :func:`ACATCore.lung_mask.input_region` gets it.
    """
    spec = check_spec(spec)
    if np.asarray(volume.array).ndim != 3:
        raise InputError(f"the image is {np.asarray(volume.array).ndim}-D; ACAT needs a 3-D CT volume")
    S = spec["slices"]
    H, W = spec["size"]
    lo, hi = spec["window"]
    notes = []
    perm, flip = canonical_axes(volume.direction)
    canonical = to_canonical(volume)
    K, J, I = canonical.array.shape
    first, count, box = 0, K, (0, J, 0, I)
    if spec["brain_extraction"]:
        if brain is None:
            from .brain_extraction import extract_brain
            brain = extract_brain(canonical.array, canonical.spacing)
        first, count = brain.slices[0], brain.slices[1] - brain.slices[0] + 1
        box = brain_box(brain, canonical.spacing, (H, W))
    keep = brain.mask if brain is not None else None
    if spec.get("lung_extraction") or spec.get("lung_box"):
        from .lung_mask import input_region, require_lungs
        lungs = require_lungs(canonical.array, canonical.spacing) if lungs is None else lungs
        keep = input_region(lungs, canonical.spacing) if spec.get("lung_extraction") else keep
        if spec.get("lung_box"):
            first, count, box = lung_box(lungs, canonical.spacing, (H, W))
    if count < (S / 2 if spec["slab"] else S):
        notes.append(_few_slices_note(count, S, spec))
        warnings.warn(notes[-1], stacklevel=2)
    slabs = first + slab_ranges(count, S) if spec["slab"] else None
    ks = (slabs[:, 0] + slabs[:, 1] - 1) // 2 if spec["slab"] else first + sample_slices(count, S, offset)
    stack = _sampled_stack(canonical.array, lo, hi, ks, slabs, keep, spec.get("slab_mean", "all"))
    stack = _crop(stack, box, 0.0)
    stack = _resize(stack, (H, W), antialias=(H < box[1] - box[0] or W < box[3] - box[2]))
    midline = {"method": spec["midline"], "column": (W - 1) / 2.0, "shift_px": 0}
    if spec["midline"] == "symmetry":
        column = estimate_midline(stack)
        shift = int(round((W - 1) / 2.0 - column))
        stack = _shift_columns(stack, shift)
        midline.update(column=column, shift_px=shift)
    tensor = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    return Prepared(tensor=tensor, input=volume,
                    canonical=canonical, canonical_indices=ks, perm=perm, flip=flip, spec=spec,
                    offset=float(offset), midline=midline, warnings=notes, box=box, brain=brain, slabs=slabs,
                    lungs=lungs if spec.get("lung_extraction") or spec.get("lung_box") else None)


def _sampled_stack(array: np.ndarray, lo: float, hi: float, ks, slabs, keep, slab_mean: str = "all") -> np.ndarray:
    """(S, J, I) windowed slices ``ks`` of the canonical ``array``, or the mean of each slab's windowed
    slices (``slab_mean`` "brain": over the slices in which the pixel is in ``keep``, the brain);
    outside ``keep`` (a canonical boolean mask, when given) the window's lower value."""
    def windowed(k):
        return window(np.where(keep[k], array[k], lo) if keep is not None else array[k], lo, hi)
    if slabs is None:
        return windowed(ks)
    if slab_mean == "all":
        return np.stack([windowed(np.arange(a, b)).mean(axis=0) for a, b in slabs])
    means = []
    for a, b in slabs:           # outside every slice's brain: windowed value 0 (lo), count 0
        count = keep[a:b].sum(axis=0)
        means.append(windowed(np.arange(a, b)).sum(axis=0) / np.maximum(count, 1))
    return np.stack(means).astype(np.float32)


class SliceMerger:
    """Maps per-sampling model-grid maps back onto the input grid and merges the samplings as
    they come: each input slice takes its values from the samplings that saw it (mean if several);
    slices that no sampling saw stay zero (slice values: NaN). Slices are counted along the input
    axis the model sampled (``Prepared.slice_axis``; axis k for an axial scan)."""

    def __init__(self, volume: Volume, prepared: list):
        self.volume = volume
        self.prepared = prepared
        self.axis = int(prepared[0].slice_axis)
        n = volume.shape[self.axis]
        self.count = np.zeros(n, dtype=np.int32)
        self.seen_by = []
        for p in prepared:
            mask = np.zeros(n, dtype=bool)
            mask[p.slices_seen()] = True
            self.seen_by.append(mask)
            self.count += mask
        self.sums = {}
        self.slice_sums = {}
        self.keep = None

    def restrict_to(self, mask: np.ndarray):
        """Maps are zero outside ``mask`` (input grid), e.g. outside the brain."""
        self.keep = np.asarray(mask, dtype=bool)

    def _index(self, mask):
        index = [slice(None)] * 3
        index[self.axis] = mask
        return tuple(index)

    def add(self, name: str, sampling: int, model_map: np.ndarray):
        """``model_map`` (S, H, W) of sampling ``sampling`` on the model grid."""
        vol = self.prepared[sampling].to_input_grid(np.asarray(model_map, dtype=np.float32))
        arr = vol.array if isinstance(vol, Volume) else np.asarray(vol)
        if name not in self.sums:
            self.sums[name] = np.zeros(self.volume.shape, dtype=np.float32)
        idx = self._index(self.seen_by[sampling])
        self.sums[name][idx] += arr[idx]

    def volume_of(self, name: str) -> Volume:
        total = self.sums.pop(name)
        shape = [1, 1, 1]
        shape[self.axis] = -1
        total /= np.maximum(self.count, 1).reshape(shape).astype(np.float32)
        if self.keep is not None:
            total[~self.keep] = 0.0
        return self.volume.with_array(total, kind=name)

    def add_slice_values(self, name: str, sampling: int, values: np.ndarray):
        n = self.volume.shape[self.axis]
        total, count = self.slice_sums.setdefault(name, (np.zeros(n), np.zeros(n)))
        members = self.prepared[sampling].members()          # each model slice's input slices
        k = np.concatenate(members)
        np.add.at(total, k, np.repeat(np.asarray(values, dtype=float), [len(m) for m in members]))
        np.add.at(count, k, 1)

    def slice_values_of(self, name: str) -> np.ndarray:
        """One value per input slice, NaN where no sampling saw the slice."""
        total, count = self.slice_sums.pop(name)
        out = np.full(total.shape, np.nan)
        out[count > 0] = total[count > 0] / count[count > 0]
        return out
