"""Acquisition shifts of a fresh ACAT-Synth chest CT, one factor each, for bench/bench_lung.py's ``--shifts``.

The lung generator draws every case on slicerio's chest CT grid (128 x 128 x 34, 3.05 x 3.05 x 10 mm, a 39 cm field
of view) with the patient at one size; real chest CT differ in each of these. Each shift transforms the case's
image, finding mask and lung labels alike (linear interpolation for the image, nearest for the labels):

  fov50      the field of view widened to 50 cm (air around the slice)
  fov32      narrowed to 32 cm (the body's sides cut off)
  abdomen    12 slices (12 cm) of upper abdomen below the lungs (the body, soft tissue, no air)
  pixel1.5   1.5 mm pixels (the same field of view on a 256 x 256 grid)
  slices2.5  2.5 mm slices (4x as many)
  noise2x    20 HU more of correlated noise (about twice the generator's)
  hu+20      a calibration offset of +20 HU
  scale0.87, scale1.15   a smaller or larger patient (in-plane scale about the slice's centre)
  lungs+60   lung parenchyma 60 HU denser (a shallower breath), findings unchanged
  lungs-40   lung parenchyma 40 HU lighter (a deeper breath)
  rotate10   the patient turned 10 degrees in the slice plane
  aspect1.15 a wider, flatter chest (left-right x 1.15, front-back / 1.15)
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ACATCore.volume import Volume

SHIFTS = ("fov50", "fov32", "abdomen", "pixel1.5", "slices2.5", "noise2x", "hu+20", "scale0.87", "scale1.15",
          "lungs+60", "lungs-40", "rotate10", "aspect1.15")


def _zoom(arrays, factors):
    image, *labels = arrays
    return (ndi.zoom(image, factors, order=1), *(ndi.zoom(a, factors, order=0) for a in labels))


def _scaled(a, scale: float, order: int, fill: float, aspect: float = 1.0, deg: float = 0.0):
    """``a`` (k, j, i) scaled in-plane by ``scale`` (rows by scale / aspect, columns by scale * aspect) and turned
    by ``deg`` about the slice's centre."""
    c = (np.array(a.shape[1:]) - 1) / 2
    t = np.deg2rad(deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    inverse = np.diag([aspect / scale, 1 / (scale * aspect)]) @ rot.T                    # output (j, i) -> input (j, i)
    matrix = np.eye(3)
    matrix[1:, 1:] = inverse
    return ndi.affine_transform(a, matrix, np.array([0.0, *(c - inverse @ c)]), order=order, cval=fill)


def _transformed(name: str, image, mask, regions, spacing, rng):
    """(image, mask, regions, spacing) of the shift ``name``; arrays (k, j, i), spacing (x, y, z) mm."""
    sx, sy, sz = spacing
    if name in ("fov50", "fov32"):
        p = 18 if name == "fov50" else -12
        if p > 0:
            pad = ((0, 0), (p, p), (p, p))
            return np.pad(image, pad, constant_values=-1024), np.pad(mask, pad), np.pad(regions, pad), spacing
        return image[:, -p:p, -p:p], mask[:, -p:p, -p:p], regions[:, -p:p, -p:p], spacing
    if name == "abdomen":
        body = ndi.binary_fill_holes(image[0] > -500)
        below = np.repeat(np.where(body, 40.0, -1024.0)[None], 12, axis=0).astype(image.dtype)
        zeros = np.zeros((12, *mask.shape[1:]), mask.dtype)
        return np.concatenate([below, image]), np.concatenate([zeros, mask]), np.concatenate([zeros, regions]), spacing
    if name == "pixel1.5":
        return (*_zoom((image, mask, regions), (1, 2, 2)), (sx / 2, sy / 2, sz))
    if name == "slices2.5":
        return (*_zoom((image, mask, regions), (4, 1, 1)), (sx, sy, sz / 4))
    if name == "noise2x":
        noise = ndi.gaussian_filter(rng.normal(0.0, 1.0, image.shape), (0, 0.8, 0.8))
        return image + noise * (20.0 / noise.std()), mask, regions, spacing
    if name == "hu+20":
        return image + 20.0, mask, regions, spacing
    if name.startswith("lungs"):
        parenchyma = (regions > 0) & (mask == 0)
        return np.where(parenchyma, image + float(name[5:]), image), mask, regions, spacing
    if name.startswith(("scale", "aspect", "rotate")):
        form = {"scale": float(name[5:]) if name.startswith("scale") else 1.0,
                "aspect": float(name[6:]) if name.startswith("aspect") else 1.0,
                "deg": float(name[6:]) if name.startswith("rotate") else 0.0}
        return (_scaled(image, fill=-1024.0, order=1, **form), _scaled(mask, fill=0, order=0, **form),
                _scaled(regions, fill=0, order=0, **form), spacing)
    raise SystemExit(f"unknown shift {name!r}: choose from {', '.join(SHIFTS)}")


def shifted(name: str, volume: Volume, case: dict, rng) -> tuple:
    """(volume, case) with the shift ``name`` applied to the image, ``case["mask"]`` and ``case["regions"]``."""
    image, mask, regions, spacing = _transformed(name, volume.array.astype(np.float32), case["mask"],
                                                 case["regions"], tuple(volume.spacing), rng)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return (Volume(image, spacing, volume.origin, volume.direction),
            {**case, "image": image, "mask": mask, "regions": regions})
