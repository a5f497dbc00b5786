"""The saliency maps ``analyze`` makes from one batched counterfactual search, each for its reader.

- :func:`counterfactual_saliency`: the class-agnostic map of Sec. 3.2 (per target |D(E(x)) - D(z')|,
  each normalised by its own max, averaged).
- :func:`acat_saliency`: the map ACAT reads, made exactly as the maps it was trained with (its card says
  which), so the shipped network sees what it learnt from.
- :func:`input_grid_saliency`: the map a reader sees and whose peak is reported, made on the input grid
  from the counterfactual changes once the samplings are merged and bounded to the brain or lungs: the
  class-agnostic map smoothed in-plane by ``SHOWN_SMOOTHING`` model-grid pixels (0: the paper's map
  unchanged). A lone bright pixel of decoder noise no longer takes the peak away from the lesion
  (docs/RESULTS.md, "Smoothing the shown map"), nor does a change outside the organ or, for a lung model,
  at its edge (``EDGE_BAND``, :func:`inner_region`: "The shown map made on the input grid").
- :func:`shown_saliency`: the same smoothing on the model grid, for ``training.evaluate``'s scores.
- :func:`salient_peak`: the peak ``analyze`` reports: the maximum of the most salient region (the connected
  region of the map's top ``PEAK_TOP[task]`` voxels with the largest summed saliency), not the lone arg-max.
  Brain since 2026-12-04 (docs/RESULTS.md, "The reported peak"); lung since 2026-12-06, when it put the
  peak in a finding more often than the arg-max on five fresh seeds of the varied-chest bundle
  (docs/RESULTS.md, "Asymmetric ventricles, calcifications, dark infarcts, and the lung's peak").
"""
from __future__ import annotations

import math

from .errors import ConfigError, ModelFileError

SHOWN_SMOOTHING = 2.0      # Gaussian sigma, model-grid pixels, in-plane (slices are not mixed)
MAX_SMOOTHING = 20.0
PEAK_TOP = {"brain": 0.02, "lung": 0.02}  # per task: the share of the map's positive voxels whose regions
                                          # compete for the peak (a task not named: the plain arg-max)
EDGE_BAND = {"lung": 2.0}   # per task: model-grid pixels inside the organ mask's edge whose changes the
                            # shown map drops (the decoder's blurred pleura); a task not named: none


def check_smoothing(sigma) -> float:
    """``sigma`` as a float in [0, MAX_SMOOTHING] model-grid pixels, else a ConfigError."""
    ok = isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and math.isfinite(sigma)
    if not ok or not 0 <= sigma <= MAX_SMOOTHING:
        raise ConfigError(f"saliency smoothing must be a number of model-grid pixels in 0..{MAX_SMOOTHING:g} "
                          f"(0: the paper's unsmoothed map), not {sigma!r}")
    return float(sigma)


def shown_saliency(sal: torch.Tensor, sigma: float) -> torch.Tensor:
    """The class-agnostic ``sal`` (B, S, 1, H, W) smoothed in-plane by ``sigma`` pixels, max 1 per
    volume; ``sal`` itself when sigma is 0."""
    if not sigma:
        return sal
    from .filters import gaussian_smooth
    return _normalise(gaussian_smooth(sal.float(), float(sigma)))


def input_grid_saliency(deltas: list, sigmas: tuple, keep=None):
    """The map ``analyze`` shows, made on the input grid from the merged counterfactual changes:
    per target |delta_t| normalised by its own max, averaged over targets (Sec. 3.2's class-agnostic
    map), smoothed by ``sigmas`` (input-grid pixels per axis; 0 along the slice axis), max 1. With
    ``keep`` (the brain or the lungs, when found) the changes outside it are dropped before smoothing:
    a strong change in the chest wall or the skull no longer bleeds into the organ's edge and takes the
    peak there (docs/RESULTS.md, "The shown map made on the input grid"). Only ``keep``'s bounding box
    is computed (zero beyond it: the same map)."""
    import numpy as np
    from scipy import ndimage as ndi
    shape = deltas[0].shape
    box = (slice(None),) * len(shape)
    if keep is not None:
        found = ndi.find_objects(np.asarray(keep, dtype=np.uint8))
        if not found:
            return np.zeros(shape, dtype=np.float32)
        box = found[0]
    inside = None if keep is None else np.asarray(keep[box], dtype=bool)
    mean = np.zeros(deltas[0][box].shape, dtype=np.float32)
    for d in deltas:
        a = np.abs(np.nan_to_num(np.asarray(d[box], dtype=np.float32)))
        if inside is not None:
            a[~inside] = 0.0
        peak = float(a.max())
        if peak > 0:
            mean += a / (peak * len(deltas))
    if any(sigmas):
        mean = ndi.gaussian_filter(mean, sigmas, mode="constant").astype(np.float32)
    if inside is not None:
        mean[~inside] = 0.0
    out = np.zeros(shape, dtype=np.float32)
    out[box] = mean
    peak = float(out.max())
    return out / peak if peak > 0 else out


def inner_region(keep, pixel_sizes: tuple, band: float):
    """The voxels of ``keep`` farther than ``band`` model-grid pixels, in-plane, from the nearest voxel
    outside it. ``pixel_sizes``: per input axis, the size of an input pixel in model-grid pixels, None
    for the slice axis (slices are not crossed). ``band`` 0, or no voxel that far (a sliver of lung): ``keep``
    itself, so that the band never empties the map."""
    import numpy as np
    from scipy import ndimage as ndi
    if not band or not keep.any():
        return keep
    axis = pixel_sizes.index(None)
    sampling = [p for p in pixel_sizes if p is not None]
    box = ndi.find_objects(keep.astype(np.uint8))[0]
    box = tuple(slice(max(0, b.start - 1), b.stop + 1) if a != axis else b for a, b in enumerate(box))
    part = np.moveaxis(keep[box], axis, 0)
    far = np.stack([ndi.distance_transform_edt(sl, sampling=sampling) > band for sl in part])
    if not far.any():
        return keep
    inner = np.zeros_like(keep, dtype=bool)
    inner[box] = np.moveaxis(far, 0, axis)
    return inner


def acat_map_options(card: dict) -> dict:
    """The ``target`` / ``scale`` of the maps ACAT was trained with (its card's data.training.saliency
    options); empty for the paper's class-agnostic, per-volume normalised map."""
    spec = ((card.get("data") or {}).get("training") or {}).get("saliency") or {}
    opts = spec.get("options") or {}
    return {k: opts[k] for k in ("target", "scale", "smooth_sigma") if opts.get(k) is not None}


def acat_saliency(card: dict, cf, ref, sal):
    """The map ACAT reads, made as its training maps were: the class-agnostic ``sal`` (the paper), or,
    with a ``scale`` in :func:`acat_map_options`, the raw |ref - cf_t| of its ``target`` (else the mean
    over targets) at that fixed scale, as ``compute_saliency(..., target=, scale=)`` makes it; either
    smoothed in-plane when the card gives a ``smooth_sigma`` (``compute_saliency(..., smooth_sigma=)``).
    ``cf``: (B, T, S, 1, H, W)."""
    from .filters import gaussian_smooth
    opts = acat_map_options(card)
    sigma = check_smoothing(opts.get("smooth_sigma", 0.0))
    if "scale" not in opts:
        return shown_saliency(sal, sigma)
    diff = (cf - ref[:, None]).abs()
    t = opts.get("target")
    if t is not None and not 0 <= int(t) < diff.shape[1]:
        raise ModelFileError(f"the ACAT card's saliency target {t} is not one of the {diff.shape[1]} classes")
    from .saliency._common import fixed_scale
    m = fixed_scale(diff.mean(1) if t is None else diff[:, int(t)], opts["scale"])
    return gaussian_smooth(m, sigma) if sigma else m


def counterfactual_saliency(cf, ref):
    """Paper Sec. 3.2: mean over targets of |ref - cf_t|, each map normalised to [0, 1] by its own
    max per volume, then the mean normalised per volume (as ``ACATCore.saliency.postprocess``).
    ``cf``: (B, T, S, 1, H, W); ``ref``: (B, S, 1, H, W) -> (B, S, 1, H, W)."""
    diff = (cf - ref[:, None]).abs().float()
    sal = _normalise(diff.flatten(0, 1)).reshape(diff.shape).mean(dim=1)
    return _normalise(sal)


def _normalise(m):
    """Each item of dim 0 scaled to [0, 1] by its max; all-zero stays zero."""
    import torch                   # here, so that the command line's option check stays light
    m = torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    mx = m.reshape(m.shape[0], -1).amax(1).reshape(-1, *([1] * (m.dim() - 1)))
    return torch.where(mx > 0, m / mx.clamp_min(1e-30), torch.zeros_like(m))


def salient_peak(array, top: float = PEAK_TOP["brain"]):
    """(k, j, i) of the maximum of ``array``'s most salient region: its voxels in the ``top`` share of the
    positive values, split into face-connected regions; the region of largest summed value wins. A broad
    lesion response beats a brighter lone speck of decoder noise elsewhere. ``top`` 0: the plain arg-max.
    None if nothing is positive."""
    import numpy as np
    from scipy import ndimage as ndi
    positive = array[array > 0]
    if positive.size == 0:
        return None
    if not top:
        return tuple(int(v) for v in np.unravel_index(int(np.argmax(array)), array.shape))
    hot = array >= np.quantile(positive, 1.0 - top)
    regions, n = ndi.label(hot)
    mass = ndi.sum(array, regions, index=np.arange(1, n + 1))
    best = np.where(regions == int(np.argmax(mass)) + 1, array, 0)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(best)), array.shape))
