"""ACAT-Synth lung cases: slicerio's chest CT, varied per case, with ground-glass / consolidation findings.

The one chest CT (``CTChest4.nrrd`` of the ``slicerio`` package, MIT; 128 x 128 x 34 voxels of 3.05 x 3.05 x 10 mm)
is the only real anatomy, so every standard case varies what it can (``LUNG_VARIETY``):

- geometry: rotation +-4 deg about the left-right and front-back axes and +-10 deg in the slice plane, per-axis
  scale 0.88-1.12 (a wider or flatter chest), shift +-10 mm, a smooth elastic displacement (6 mm s.d.);
- lung density (how deep the breath was): the lungs' air-like voxels (not vessels) -50..+80 HU, denser towards the
  back by 0-50 HU (dependent density of a supine patient), and a smooth patchiness of 12 HU s.d.;
- HU calibration offset +-20 HU; correlated noise 10-35 HU s.d.
- findings: 1-4 soft-edged patches (radius 10-40 mm) inside the lungs, ground-glass opacity (to 115-315 HU above
  the case's own lung density, i.e. -750..-550 HU in lungs of the template's density) or consolidation (to -150..20
  HU). Option ``involvement`` adds patches until a drawn fraction of the lungs is involved.

``variety=False`` gives the earlier plain chests (rotation +-2 / 6 deg, scale 0.93-1.07, shift 6-8 mm, 4 mm
displacement, +-10 HU, 10-25 HU noise, the template's lung density, ground glass at -750..-550 HU): exactly the
cases of ACAT-Synth version 2.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from ..errors import ACATError
from .synth_fields import _blob, _coarse_field, _correlated_noise, _sample, _warp_grid

LUNG_NOISE_HU = (10.0, 25.0)             # plain chests; varied ones: LUNG_VARIETY["noise_hu"]
LUNG_FINDINGS = {"ground-glass": (-750.0, -550.0), "consolidation": (-150.0, 20.0)}
LUNG_GROUPS = ("LS-1", "LS-2", "LS-3")  # lung involvement < 5 %, 5-15 %, > 15 %
LUNG_MAX_PATCHES = 40                   # with a target involvement: patches added until it is reached
LUNG_VARIETY = {"rot_deg": (4, 4, 10), "scale": (0.88, 1.12), "shift_mm": (10, 10, 10), "disp_mm": 6.0,
                "lung_hu": (-50.0, 80.0), "dependent_hu": (0.0, 50.0), "patchy_hu": 12.0,
                "hu_offset": 20.0, "noise_hu": (10.0, 35.0)}
PLAIN = {"rot_deg": (2, 2, 6), "scale": (0.93, 1.07), "shift_mm": (6, 6, 8), "disp_mm": 4.0, "hu_offset": 10.0,
         "noise_hu": LUNG_NOISE_HU}


@functools.lru_cache(maxsize=1)
def lung_base():
    """The slicerio chest CT and its lung segments (1 right lung, 2 left lung), as torch channels."""
    try:
        import slicerio
    except ImportError:
        raise ACATError("the lung benchmark needs the slicerio package (pip install slicerio)") from None
    from ..io import read_volume
    folder = Path(slicerio.__file__).parent / "data"
    ct = read_volume(folder / "CTChest4.nrrd")
    seg = slicerio.read_segmentation(str(folder / "Segmentation.seg.nrrd"))
    voxels = np.transpose(np.asarray(seg["voxels"]), (2, 1, 0))       # (i, j, k) -> (k, j, i)
    if voxels.shape != ct.array.shape:
        raise ACATError("the slicerio chest segmentation does not match its CT")
    value = {s["name"]: s["labelValue"] for s in seg["segments"]}
    lungs = np.zeros(voxels.shape, dtype=np.float32)
    lungs[voxels == value["right lung"]] = 1
    lungs[voxels == value["left lung"]] = 2
    hu = np.maximum(ct.array.astype(np.float32), -1024.0)
    centre = np.argwhere(lungs > 0).mean(axis=0)[::-1]
    # one bilinear pass samples HU and both lungs (one-hot, thresholded at 0.5 afterwards)
    channels = np.stack([hu, lungs == 1, lungs == 2]).astype(np.float32)
    return {"channels": torch.from_numpy(channels), "volume": ct, "centre_ijk": tuple(float(c) for c in centre)}


def _breath(rng, hu, lungs, direction) -> dict:
    """Change the lungs' density in place (air-like voxels only, vessels kept): a level, denser towards the back,
    and smooth patchiness. Returns the drawn factors."""
    v = LUNG_VARIETY
    level, dependent = rng.uniform(*v["lung_hu"]), rng.uniform(*v["dependent_hu"])
    rows = np.nonzero((lungs > 0).any(axis=(0, 2)))[0]
    j = np.arange(hu.shape[1], dtype=np.float32)
    towards_back = (j - rows.min()) / max(rows.max() - rows.min(), 1)       # 0 at the lungs' first row, 1 at last
    if np.asarray(direction)[1, 1] < 0:                                     # rows run from back to front
        towards_back = 1 - towards_back
    patchy = _coarse_field(rng, 1, (4, 6, 6), hu.shape, v["patchy_hu"])[0].numpy()
    change = level + dependent * np.clip(towards_back, 0, 1)[None, :, None] + patchy
    air_like = np.clip((-500.0 - hu) / 300.0, 0.0, 1.0) * (lungs > 0)
    hu += (air_like * change).astype(np.float32)
    return {"lung_hu": round(float(level), 1), "dependent_hu": round(float(dependent), 1)}


def _add_findings(rng, hu, lungs, spacing, involvement, glass_shift: float):
    """Ground-glass / consolidation patches inside the lungs, in place; (mask, lesion records)."""
    shape = hu.shape
    mask = np.zeros(shape, dtype=np.uint8)
    lesions = []
    lung_voxels = np.flatnonzero(lungs > 0)
    if involvement is None:
        n_patches, target = int(rng.integers(1, 5)), None
    else:
        n_patches, target = LUNG_MAX_PATCHES, rng.uniform(*involvement) * len(lung_voxels)
    for _ in range(n_patches):
        kind = "ground-glass" if rng.random() < 0.65 else "consolidation"
        centre = np.unravel_index(lung_voxels[rng.integers(len(lung_voxels))], shape)
        radius = rng.uniform(10.0, 40.0)
        box, f = _blob(rng, shape, centre, radius / np.asarray(spacing[::-1]), roughness=0.4)
        inside = (f < 1) & (lungs[box] > 0)
        target_hu = rng.uniform(*LUNG_FINDINGS[kind]) + (glass_shift if kind == "ground-glass" else 0.0)
        alpha = np.where(inside, np.clip((1.0 - f) / 0.4, 0.0, 1.0), 0.0)
        hu[box] += (alpha * (target_hu - hu[box])).astype(np.float32)
        mask[box][inside & (mask[box] == 0)] = 1 if kind == "ground-glass" else 2
        lesions.append({"finding": kind, "radius_mm": round(float(radius), 2),
                        "target_hu": round(float(target_hu), 1), "voxels": int(inside.sum()),
                        "centre_kji": [int(c) for c in centre]})
        if target is not None and np.count_nonzero(mask) >= target:
            break
    return mask, lesions


def make_lung_case(rng, label: int, return_clean: bool = False, involvement=None, variety: bool = True) -> dict:
    """One synthetic chest CT; ``label`` 1 adds ground-glass / consolidation patches in the lungs.

    Standard: 1-4 patches. ``involvement`` ([lo, hi], fractions of the lungs): patches are added until
    a target drawn from [lo, hi] is reached (at most ``LUNG_MAX_PATCHES``), like MosMed's CT-1..CT-4
    grades, which are defined by the fraction of lung involved. ``variety`` False: a plain chest (module doc).
    """
    base = lung_base()
    ct = base["volume"]
    shape = ct.array.shape
    v = LUNG_VARIETY if variety else PLAIN
    grid = _warp_grid(rng, shape, ct.spacing, shape, ct.spacing, base["centre_ijk"],
                      rot_deg=v["rot_deg"], scale_range=v["scale"], shift_mm=v["shift_mm"], disp_mm=v["disp_mm"])
    hu, right, left = _sample(base["channels"], grid, "bilinear").numpy()
    lungs = np.where(right > 0.5, 1, np.where(left > 0.5, 2, 0)).astype(np.uint8)
    offset = rng.uniform(-v["hu_offset"], v["hu_offset"])
    hu = hu + offset
    factors = {"hu_offset": round(float(offset), 1)}
    if variety:
        factors.update(_breath(rng, hu, lungs, ct.direction))
    clean = hu.copy() if return_clean else None
    mask, lesions = np.zeros(shape, dtype=np.uint8), []
    if label == 1:
        mask, lesions = _add_findings(rng, hu, lungs, ct.spacing, involvement, factors.get("lung_hu", 0.0))
    noise_sd = rng.uniform(*v["noise_hu"])
    noiseless = hu.copy() if return_clean else None
    hu = hu + _correlated_noise(rng, shape, noise_sd)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    involved = float((mask > 0).sum() / max((lungs > 0).sum(), 1))
    case = {"image": image, "mask": mask, "regions": lungs, "lesions": lesions, "noise_hu": float(noise_sd),
            "involvement": involved, "anatomy": factors, "spacing": ct.spacing, "origin": ct.origin,
            "direction": ct.direction}
    if return_clean:   # for tests: the chest before findings and before noise
        case["clean"], case["noiseless"] = clean, noiseless
    return case


def lung_size_group(involvement: float) -> str:
    return "LS-1" if involvement < 0.05 else ("LS-2" if involvement < 0.15 else "LS-3")
