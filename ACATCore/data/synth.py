"""ACAT-Synth: a deterministic benchmark of synthetic lesions on real CT anatomy, with known answers.

``generate(task, n, seed, out_dir)`` writes ``n`` cases and ``datalist.json``; ``main(argv)`` is the
command line (``acat synth --task brain|lung --n N --seed S --out DIR``). Case ``i`` depends only on
``(task, seed, i)`` and the class plan of ``(n, seed)``; the same arguments give identical files.

**brain** (4 classes: ``no lesion``, ``left``, ``right``, ``both``): heads built around the CT brain atlas
(``Resources/data/ct_brain_atlas_1mm.nii.gz``, TotalSegmentator, Apache-2.0), reoriented to LPS-axial.
The one atlas brain is the only real anatomy, so every case varies what it can (``BRAIN_FACTORS``):

- geometry: head size (shared factor 0.88-1.12 x per-axis 0.95-1.05, within 0.85-1.15), rotation
  +-15 deg about each axis (tilt = about left-right), a smooth elastic displacement (1.5-4 mm s.d.);
- skull 2.5-10 mm (+-10-30 % smooth variation) with inner/outer tables (1-2.5 mm, 1400-2100 HU) and
  diploe (400-1000 HU); CSF rim 0.5-3 mm; scalp 2.5-9 mm, sometimes with subcutaneous fat; dense
  (1300-2200 HU) petrous-like skull base in the notches between temporal lobes and cerebellum;
- holder and pillow: in 60 % a curved shell (100-400 HU, 2-5 mm) behind the head, 3-10 mm away;
  a foam pillow (-900..-300 HU) in 70 % of those and 40 % of the others;
- coverage: in 20 % the scan stops 5-25 mm below the brain's top (vertex cut), in 25 % it starts
  15-40 mm above the brain's bottom (skull base cut);
- acquisition: slice thickness 1-5 mm (= spacing) with partial volume (each slice averages 1-4
  sub-slices, the skull's layers box-filtered over the sub-slice and the pixel); pixels drawn 0.6-1.0 mm
  and coarsened to keep ~2 M output and 3 M rendered voxels (speed): in practice ~0.8-1.5 mm at 4-5 mm
  slices, ~1.1-2.2 mm at 1-2 mm; field of view = head (+ holder) + 2-15 mm margins: grids differ per case;
- intensities: grey/white contrast x0.85-1.15, +-3 HU, a smooth +-2 HU bias; HU calibration offset
  +-5 HU; cupping (centre 0-6 HU darker) and low-frequency streaky shading near the skull base (2-12 HU);
  in-plane correlated noise (0.35-1.1 mm, with a ring-like part), 2-4.5 HU s.d. at 5 mm, x (5 / slice
  mm)^0.35, within 2-8 HU;
- lesions: hypodense (ischaemic) lesions grown from a random point of ONE vascular territory's
  parenchyma (:mod:`ACATCore.data.territories`, moved with the head; no CSF) as the connected part of
  (distance + a smooth random field) below a threshold chosen to reach the volume of a ball of the
  drawn radius: irregular and following the parenchyma. Four graded sizes IS-1..IS-4 (radius 3-5,
  5-8, 8-12, 12-18 mm). Where the territory's parenchyma runs out the lesion is smaller: each lesion
  records the drawn ``radius_mm`` and its ``equivalent_radius_mm`` from its voxel count. Contrast =
  the case's noise s.d. + 2-6 HU at the core, fading at the edge, only inside the mask.
  ``left``/``right``: one lesion in a territory of that side; ``both``: one on each side.

Option ``variety: false`` gives plain heads instead (the earlier benchmark's kind: mild warp,
192 x 224 x 34 voxels of 1 x 1 x 5 mm, no holder, no cuts, no beam hardening, 2.5-4.5 HU noise).
Option ``acquisition`` fixes single factors for robustness benchmarks (``ACQUISITION``: slice_mm,
pixel_mm, tilt_deg, noise_scale, hu_offset, head_scale, vertex_cut, bottom_cut, holder, pillow,
beam_hardening); all other factors are drawn as usual, with the same values (only the noise and the
lesion positions differ when the grid changes).
``noise_scale`` multiplies the noise but not the lesion contrast. Each case's drawn factors are in
its datalist item under ``acquisition``.

**lung** (2 classes: ``normal``, ``findings``, like MosMed CT-0 vs CT-2..4): the chest CT
``CTChest4.nrrd`` of the ``slicerio`` package (MIT) with its right/left lung segments, per case
randomly deformed (the same kind of transform), with 10-25 HU noise; positives get 1-4 patches of
ground-glass opacity (to -750..-550 HU) or consolidation (to -150..20 HU), soft-edged, inside the lungs.

Files, under ``out_dir``: ``images/<case>.nrrd`` (int16 HU), ``masks/<case>.nrrd`` (uint8; brain: the
territory label of each lesion voxel, lung: 1 ground-glass, 2 consolidation), ``regions/<case>.nrrd``
(uint8; brain: the six territories, see ``TERRITORIES``; lung: 1 right lung, 2 left lung), and
``datalist.json`` (MONAI style: ``training``/``validation``/``test`` split 70/15/15 stratified by label
with the same seed; each item has ``image``, ``label``, ``label_name``, ``mask``, ``regions``,
``territory`` and ``size_group`` (one per lesion joined by ``+``, e.g. ``"MCA_left+PCA_right"``;
empty for negatives; lung: ``size_group`` LS-1/2/3 by lung involvement < 5 %, 5-15 %, > 15 %),
``noise_hu``, ``lesions`` with per-lesion details and, brain, ``acquisition``).

Options (``generate(..., options={...})``, ``acat synth --size-groups/--contrast/--radius/--involvement``)
make easier or harder variants; the standard benchmark is what you get without them, and each option
only changes the cases it applies to. ``size_groups`` (brain) draws lesion sizes from chosen groups only;
``contrast_hu`` (brain) sets the extra lesion contrast; ``radius_mm`` (brain) sets the lesion radius
(e.g. 20-35 mm: territorial infarcts, the size group then follows the radius); ``variety`` and
``acquisition`` (brain) are described above; ``involvement`` (lung)
adds patches until a drawn fraction of the lungs is involved (MosMed grades its scans by this
fraction: CT-1 < 25 %, CT-2 25-50 %, ...). The options used are recorded in ``datalist.json``.

Classes are balanced by default (``class_fractions`` sets other proportions); positive brain cases
cycle through IS-1..IS-4 so that size groups are balanced too. Brain heads are written on an
identity (LPS) grid (a tilted head is tilted in the image); lung cases keep the chest CT's own
geometry (stored RAS-like, direction diag(-1, -1, 1)), so both orientations are exercised downstream.
See also docs/SYNTH.md.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..errors import ACATError, ConfigError
from ..resources import resource_path
from ..tasks import CLASS_NAMES, TASKS
from .splits import split_counts, stratified_split
from .territories import TERRITORIES, TERRITORY_LABELS, territories_of_side, territory_map

SIZE_GROUPS = ("IS-1", "IS-2", "IS-3", "IS-4")
SIZE_RADII_MM = {"IS-1": (3.0, 5.0), "IS-2": (5.0, 8.0), "IS-3": (8.0, 12.0), "IS-4": (12.0, 18.0)}
BRAIN_NOISE_HU = (2.5, 4.5)
LESION_EXTRA_CONTRAST_HU = (2.0, 6.0)   # lesion contrast = noise s.d. + this
LUNG_NOISE_HU = (10.0, 25.0)
LUNG_FINDINGS = {"ground-glass": (-750.0, -550.0), "consolidation": (-150.0, 20.0)}
LUNG_GROUPS = ("LS-1", "LS-2", "LS-3")  # lung involvement < 5 %, 5-15 %, > 15 %
LUNG_MAX_PATCHES = 40                   # with a target involvement: patches added until it is reached

# Generator options (``generate(..., options=...)``, ``acat synth --size-groups/--contrast/--involvement``).
# None keeps the standard benchmark; any other value changes the cases it applies to (and only those).
DEFAULT_OPTIONS = {
    "size_groups": None,      # brain: draw every lesion's size group from these (e.g. ["IS-3", "IS-4"])
    "contrast_hu": None,      # brain: [lo, hi] extra lesion contrast in HU (standard: LESION_EXTRA_CONTRAST_HU)
    "radius_mm": None,        # brain: [lo, hi] lesion radius in mm instead of the size group's range
                              # (e.g. [20, 35]: territorial infarcts); size_group then follows the radius
    "involvement": None,      # lung: [lo, hi] fraction of the lungs involved in a positive case; patches
                              # are added until a target drawn from it is reached (standard: 1-4 patches)
    "variety": None,          # brain: False gives plain heads (atlas, mild warp, 1 x 1 x 5 mm); standard True
    "acquisition": None,      # brain: fix single factors, e.g. {"slice_mm": 5, "tilt_deg": 10} (ACQUISITION)
}
ATLAS_FILE = ("data", "ct_brain_atlas_1mm.nii.gz")
GENERATOR_VERSION = 2         # raised whenever the same (task, n, seed, options) would give other cases


# ---------------------------------------------------------------------------------- helpers
def _rotation(rng, max_deg) -> np.ndarray:
    """Rotation matrix (x, y, z) from random angles within +-max_deg (per axis x, y, z)."""
    ax, ay, az = np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(max_deg))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _coarse_field(rng, channels, control, shape, scale) -> torch.Tensor:
    """Smooth random field (channels, *shape): Gaussian control points, trilinearly upsampled."""
    coarse = torch.from_numpy(rng.normal(0.0, 1.0, (1, channels) + tuple(control)).astype(np.float32))
    field = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)[0]
    return field * torch.as_tensor(np.asarray(scale, dtype=np.float32)).reshape(-1, 1, 1, 1)


def _warp_grid(rng, out_shape, out_spacing, base_shape, base_spacing, base_centre_ijk,
               rot_deg, scale_range, shift_mm, disp_mm, control=(5, 6, 6)):
    """grid_sample grid (1, K, J, I, 3) mapping output voxels into the base volume.

    Output physical p (mm, relative to the output centre) -> base mm = centre + M @ p + t + d(p), with
    M a random rotation and scaling, t a shift and d a smooth displacement. The map is computed on
    ``control`` points spanning the output grid and trilinearly interpolated (exact for the affine
    part; d is the trilinear interpolation of Gaussian control displacements of ``disp_mm`` s.d.).
    """
    K, J, I = out_shape
    sx, sy, sz = out_spacing
    ck, cj, ci = control
    z = (np.linspace(0, K - 1, ck) - (K - 1) / 2) * sz
    y = (np.linspace(0, J - 1, cj) - (J - 1) / 2) * sy
    x = (np.linspace(0, I - 1, ci) - (I - 1) / 2) * sx
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    p = np.stack([xx, yy, zz], axis=-1)                                    # (ck, cj, ci, 3) x, y, z
    m = _rotation(rng, rot_deg) @ np.diag(rng.uniform(*scale_range, 3))
    t = rng.uniform(-1, 1, 3) * np.asarray(shift_mm)
    q = p @ m.T + t + rng.normal(0.0, disp_mm, p.shape)
    # base mm -> base index (i, j, k) -> normalised [-1, 1] (align_corners=True)
    size = np.array([base_shape[2], base_shape[1], base_shape[0]], dtype=float)
    idx = np.asarray(base_centre_ijk) + q / np.asarray(base_spacing, dtype=float)
    coarse = torch.from_numpy((2 * idx / (size - 1) - 1).astype(np.float32)).permute(3, 0, 1, 2)[None]
    grid = F.interpolate(coarse, size=tuple(out_shape), mode="trilinear", align_corners=True)
    return grid.permute(0, 2, 3, 4, 1).contiguous()


def _sample(volume: torch.Tensor, grid: torch.Tensor, mode: str, padding: str = "border") -> torch.Tensor:
    """Sample (C, K, J, I) base channels at the grid -> (C, k, j, i)."""
    return F.grid_sample(volume[None], grid, mode=mode, padding_mode=padding, align_corners=True)[0]


def _correlated_noise(rng, shape, sigma) -> np.ndarray:
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = ndi.gaussian_filter(noise, sigma=(0, 0.7, 0.7), mode="wrap")
    return noise * np.float32(sigma / max(float(noise.std()), 1e-6))


def _blob(rng, shape, centre, radius_vox, roughness=0.3):
    """An irregular ellipsoid around ``centre`` (k, j, i): returns (slices, f) with f < 1 inside."""
    radii = np.asarray(radius_vox, dtype=float) * rng.uniform(0.75, 1.25, 3)
    half = np.ceil(radii * 1.5).astype(int) + 1
    lo = np.maximum(np.asarray(centre) - half, 0)
    hi = np.minimum(np.asarray(centre) + half + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grids = np.ogrid[box]
    f = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    ctrl = rng.uniform(-roughness, roughness, (4, 4, 4)).astype(np.float32)
    bshape = tuple(int(b - a) for a, b in zip(lo, hi))
    noise = F.interpolate(torch.from_numpy(ctrl)[None, None], size=bshape, mode="trilinear",
                          align_corners=True)[0, 0].numpy()
    return box, (f + noise).astype(np.float32)


def _write(array, spacing, origin, direction, path: Path):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in np.asarray(direction).ravel()))
    sitk.WriteImage(image, str(path), True, 1)


def class_plan(n: int, num_classes: int, seed: int, fractions=None) -> list:
    """The label of every case: counts in proportion to ``fractions`` (default equal), seeded order."""
    fractions = np.ones(num_classes) if fractions is None else np.asarray(fractions, dtype=float)
    if len(fractions) != num_classes:
        raise ConfigError(f"{len(fractions)} class fractions for {num_classes} classes")
    labels = np.repeat(np.arange(num_classes), split_counts(n, fractions))
    return labels[np.random.default_rng([seed, 7]).permutation(n)].tolist()


# ---------------------------------------------------------------------------------- brain
BASE_PAD_MM = 36          # air margin around the atlas brain (covers skull + scalp of any drawn size)


@functools.lru_cache(maxsize=1)
def brain_base():
    """The atlas prepared once per process (padded LPS grid, odd sizes): torch channels + surface points.

    ``atlas``: HU at 1 mm. ``coarse`` (2 mm, same extent): signed mm outside the brain, mm outside the
    head hull (the brain's 30 mm closing, holes filled per slice, so that soft tissue fills the notches
    of the skull base) and the skull-base fraction (the brain's 8 mm closing minus the brain, below
    45 % of its height: petrous ridges, clivus, occipital crest). ``labels`` (1 mm, nearest):
    territory + 16 * parenchyma.
    """
    from ..io import read_volume
    from ..preprocessing import to_canonical
    atlas = to_canonical(read_volume(resource_path(*ATLAS_FILE)))
    a = atlas.array.astype(np.float32)
    mask = ndi.binary_fill_holes(a != 0)
    labels, count = ndi.label(mask)
    mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    pad = BASE_PAD_MM
    ks, js, is_ = (np.flatnonzero(mask.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    lo = np.array([ks[0], js[0], is_[0]]) - pad
    hi = np.array([ks[-1], js[-1], is_[-1]]) + pad + 1
    hi += (hi - lo + 1) % 2                                      # odd sizes: the 2 mm grid spans the same extent
    before, after = np.maximum(-lo, 0), np.maximum(hi - a.shape, 0)
    crop = tuple(slice(max(l, 0), min(h, s)) for l, h, s in zip(lo, hi, a.shape))
    a = np.pad(a[crop], list(zip(before, after)))
    mask = np.pad(mask[crop], list(zip(before, after)))
    territories = territory_map(mask)
    parenchyma = mask & (ndi.uniform_filter(a, size=3) > 15.0)   # brain tissue, not CSF
    m2 = ndi.uniform_filter(mask.astype(np.float32), 3)[::2, ::2, ::2] >= 0.5     # centred on 2c
    out2 = ndi.distance_transform_edt(~m2, sampling=2.0).astype(np.float32)
    signed = np.where(m2, 1.0 - ndi.distance_transform_edt(m2, sampling=2.0), out2 - 1.0)
    closed8 = ndi.distance_transform_edt(out2 <= 8.0, sampling=2.0) > 8.0
    closed30 = ndi.distance_transform_edt(out2 <= 30.0, sampling=2.0) > 30.0
    for k in range(closed30.shape[0]):
        closed30[k] = ndi.binary_fill_holes(closed30[k])
    hull = ndi.distance_transform_edt(~closed30, sampling=2.0)
    k2 = np.flatnonzero(m2.any(axis=(1, 2)))
    low = (np.arange(m2.shape[0]) < k2[0] + 0.45 * (k2[-1] - k2[0]))[:, None, None]
    skullbase = ndi.gaussian_filter((closed8 & ~m2 & low).astype(np.float32), 0.5)
    centre = np.array([(is_[0] + is_[-1]) / 2, (js[0] + js[-1]) / 2, (ks[0] + ks[-1]) / 2]) - lo[::-1]
    edge = np.argwhere(m2 & ~ndi.binary_erosion(m2))[:, ::-1] * 2.0 - centre   # (x, y, z) mm
    return {
        "atlas": torch.from_numpy(a[None]),
        "coarse": torch.from_numpy(np.stack([signed, hull, skullbase]).astype(np.float32)),
        "labels": torch.from_numpy((territories + 16 * parenchyma)[None].astype(np.float32)),
        "centre_ijk": tuple(float(c) for c in centre),
        "shape": a.shape,
        "surface": edge[:: max(len(edge) // 4000, 1)].astype(np.float64),
    }


# What a brain case draws: name -> (range with variety, range without). Every case draws all of
# them in this order from one uniform vector, so fixing one factor leaves the others unchanged.
BRAIN_FACTORS = {
    "head_scale": ((0.88, 1.12), (1.0, 1.0)),      # shared head-size factor
    "scale_x": ((0.95, 1.05), (0.92, 1.08)),       # per-axis factors (x head_scale, clipped 0.85-1.15)
    "scale_y": ((0.95, 1.05), (0.92, 1.08)),
    "scale_z": ((0.95, 1.05), (0.92, 1.08)),
    "tilt_deg": ((-15, 15), (-4, 4)),              # about the left-right axis (x)
    "roll_deg": ((-15, 15), (-4, 4)),              # about y
    "yaw_deg": ((-15, 15), (-7, 7)),               # about z
    "shift_x": ((-5, 5), (-6, 6)), "shift_y": ((-5, 5), (-6, 6)), "shift_z": ((-5, 5), (-6, 6)),
    "elastic_mm": ((1.5, 4.0), (2.5, 2.5)),        # s.d. of the smooth displacement's control points
    "slice_mm": ((1.0, 5.0), (5.0, 5.0)),
    "pixel_mm": ((0.6, 1.0), (1.0, 1.0)),          # before the voxel cap (MAX_VOXELS)
    "margin_left": ((2, 15), (0, 0)), "margin_right": ((2, 15), (0, 0)),
    "margin_front": ((2, 15), (0, 0)), "margin_back": ((2, 10), (0, 0)),
    "vertex_cut": ((0.0, 1.0), (1.0, 1.0)),        # uniform; cut when < VERTEX_CUT_P
    "vertex_depth": ((5, 25), (0, 0)),             # mm below the brain's top
    "bottom_cut": ((0.0, 1.0), (1.0, 1.0)),
    "bottom_depth": ((15, 40), (0, 0)),            # mm above the brain's bottom
    "top_margin": ((0, 10), (0, 0)), "bottom_margin": ((0, 10), (0, 0)),
    "grey_white_gain": ((0.85, 1.15), (0.85, 1.15)),
    "brain_offset": ((-3, 3), (-3, 3)),
    "csf_mm": ((0.5, 3.0), (0.5, 2.5)), "csf_hu": ((2, 10), (4, 10)),
    "skull_mm": ((2.5, 10.0), (4.0, 8.0)),
    "inner_table_mm": ((1.0, 2.5), (1.2, 2.0)), "outer_table_mm": ((1.0, 2.5), (1.2, 2.0)),
    "table_hu": ((1400, 2100), (1600, 1900)), "diploe_hu": ((400, 1000), (700, 900)),
    "skull_variation": ((0.1, 0.3), (0.15, 0.15)),  # relative smooth variation of the skull thickness
    "scalp_mm": ((2.5, 9.0), (3.0, 7.0)), "scalp_hu": ((25, 50), (25, 45)),
    "fat_mm": ((-2.0, 3.0), (0, 0)), "fat_hu": ((-110, -50), (-100, -100)), "skin_mm": ((1.0, 2.0), (1.5, 1.5)),
    "petrous_hu": ((1300, 2200), (1300, 1300)),
    "holder": ((0.0, 1.0), (1.0, 1.0)),            # uniform; a head holder when < HOLDER_P
    "holder_hu": ((100, 400), (0, 0)), "holder_mm": ((2, 5), (0, 0)), "holder_gap_mm": ((3, 10), (0, 0)),
    "holder_rim_mm": ((-15, 25), (0, 0)), "holder_top_mm": ((-40, 30), (0, 0)), "holder_dx": ((-5, 5), (0, 0)),
    "pillow": ((0.0, 1.0), (1.0, 1.0)),
    "pillow_hu": ((-900, -300), (0, 0)), "pillow_mm": ((8, 30), (0, 0)), "pillow_level": ((0.2, 0.7), (0, 0)),
    "hu_offset": ((-5, 5), (0, 0)),
    "noise_5mm_hu": ((2.0, 4.5), BRAIN_NOISE_HU),   # noise s.d. at 5 mm; x (5 / slice)^0.35, 2-8 HU
    "noise_corr_mm": ((0.35, 1.1), (0.7, 0.7)),
    "noise_ring": ((0.0, 0.6), (0.0, 0.0)),         # difference-of-Gaussians part (CT-like texture)
    "cupping_hu": ((0.0, 6.0), (0, 0)),
    "streak_hu": ((2.0, 12.0), (0, 0)),
    "streak_lobes": ((2.0, 6.99), (2, 2)), "streak_phase": ((0, 2 * np.pi), (0, 0)),
}
VERTEX_CUT_P, BOTTOM_CUT_P, HOLDER_P = 0.2, 0.25, 0.6
PILLOW_P = (0.7, 0.4)                   # with / without a holder
MAX_VOXELS = 2.0e6                      # output voxels; coarser pixels beyond
MAX_RENDER_VOXELS = 3.0e6               # voxels of the sub-slice stack averaged into the slices
PLAIN_GRID = (34, 224, 192)             # variety off: output (k, j, i) voxels of 1 x 1 x 5 mm
# acquisition option: key -> (kind, lo, hi); numbers fix the factor, booleans force it on or off
ACQUISITION = {
    "slice_mm": ("number", 0.5, 10.0), "pixel_mm": ("number", 0.3, 3.0), "tilt_deg": ("number", -45.0, 45.0),
    "noise_scale": ("number", 0.0, 10.0), "hu_offset": ("number", -100.0, 100.0),
    "head_scale": ("number", 0.7, 1.3), "vertex_cut": ("bool",), "bottom_cut": ("bool",),
    "holder": ("bool",), "pillow": ("bool",), "beam_hardening": ("bool",),
}


def _rotation_deg(ax, ay, az) -> np.ndarray:
    ax, ay, az = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_1d(rng, n, control=5) -> np.ndarray:
    """A smooth random curve of n values, s.d. ~1 (for separable thickness variations)."""
    if n <= 1:
        return np.zeros(n, np.float32)
    return np.interp(np.linspace(0, control - 1, n), np.arange(control),
                     rng.normal(0, 1, control)).astype(np.float32)


def draw_brain_factors(rng, variety: bool = True, fixed=None) -> dict:
    """All random factors of one head (see ``BRAIN_FACTORS``), with ``fixed`` (acquisition option) applied."""
    u = rng.random(len(BRAIN_FACTORS))
    f = {}
    for x, (name, ranges) in zip(u, BRAIN_FACTORS.items()):
        lo, hi = ranges[0 if variety else 1]
        f[name] = float(lo + (hi - lo) * x)
    f["vertex_cut"] = variety and f["vertex_cut"] < VERTEX_CUT_P
    f["bottom_cut"] = variety and f["bottom_cut"] < BOTTOM_CUT_P
    holder = variety and f["holder"] < HOLDER_P
    f["pillow"] = variety and f["pillow"] < PILLOW_P[0 if holder else 1]
    f["holder"] = holder
    f["beam_hardening"] = variety
    f["noise_scale"] = 1.0
    f["streak_lobes"] = int(f["streak_lobes"])
    f["slice_mm"] = round(f["slice_mm"], 1)                # drawn thicknesses in 0.1 mm steps
    fixed = dict(fixed or {})
    for key, value in fixed.items():
        f[key] = bool(value) if ACQUISITION[key][0] == "bool" else float(value)
    h = f["head_scale"]
    scale = h * np.array([f["scale_x"], f["scale_y"], f["scale_z"]])
    f["scale"] = np.clip(scale, min(0.85, 0.95 * h), max(1.15, 1.05 * h)) if variety else scale
    f["fat_mm"] = max(f["fat_mm"], 0.0)
    return f


def _head_geometry(base, f, variety: bool):
    """The output grid (shape, spacing, origin, sub-slices) and the map output mm -> base mm."""
    scale = f["scale"]
    rot = _rotation_deg(f["tilt_deg"], f["roll_deg"], f["yaw_deg"])
    m = rot @ np.diag(1.0 / scale)                      # output p (mm) -> base q = m p + shift + d(p)
    shift = np.array([f["shift_x"], f["shift_y"], f["shift_z"]])
    t = f["slice_mm"]
    px = f["pixel_mm"]
    ring = f["csf_mm"] + f["skull_mm"] * (1 + 2 * f["skull_variation"]) + f["scalp_mm"] + f["fat_mm"]
    outer = ring + 2 * f["elastic_mm"] + 2.0            # head surface beyond the brain, generously
    p = (base["surface"] - shift) @ np.linalg.inv(m).T  # brain surface in output mm (no elastic part)
    lo, hi = p.min(axis=0), p.max(axis=0)
    xc, yc = (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2
    holder = {"a": (hi[0] - lo[0]) / 2 + outer + f["holder_gap_mm"], "b": hi[1] - yc + outer + f["holder_gap_mm"],
              "xc": xc + f["holder_dx"], "yc": yc}
    if variety:
        back = hi[1] + outer
        if f["holder"]:
            back = yc + holder["b"] + f["holder_mm"]
        elif f["pillow"]:
            back = hi[1] + outer + f["pillow_mm"]
        x0, x1 = lo[0] - outer - f["margin_right"], hi[0] + outer + f["margin_left"]
        y0, y1 = lo[1] - outer - f["margin_front"], back + f["margin_back"]
        z0 = lo[2] + f["bottom_depth"] if f["bottom_cut"] else lo[2] - f["bottom_margin"]
        z1 = hi[2] - f["vertex_depth"] if f["vertex_cut"] else hi[2] + outer + f["top_margin"]
    else:                                               # today's fixed grid around the head's centre
        K, J, I = PLAIN_GRID
        x0, x1, y0, y1 = -I / 2 * 1.0, I / 2 * 1.0, -J / 2 * 1.0, J / 2 * 1.0
        z0, z1 = -K / 2 * 5.0, K / 2 * 5.0
    K = max(int(np.ceil((z1 - z0) / t - 1e-6)), 1)
    n_min, n_want = int(np.ceil(t / 2.5 - 1e-6)), int(np.ceil(t / 1.25 - 1e-6))

    def inplane(px):
        return max(int(np.ceil((y1 - y0) / px - 1e-6)), 8), max(int(np.ceil((x1 - x0) / px - 1e-6)), 8)

    J, I = inplane(px)
    excess = max(K * J * I / MAX_VOXELS, K * J * I * n_min / MAX_RENDER_VOXELS)
    if excess > 1:                                      # cap the voxels: coarser pixels
        px = px * np.sqrt(excess) * 1.002
    px = round(px, 3)
    J, I = inplane(px)
    n_sub = int(max(1, min(n_want, MAX_RENDER_VOXELS // (K * J * I))))
    # centre the grid on the requested field of view
    xs = (x0 + x1) / 2 + (np.arange(I) - (I - 1) / 2) * px
    ys = (y0 + y1) / 2 + (np.arange(J) - (J - 1) / 2) * px
    zs = (z0 + z1) / 2 + (np.arange(K) - (K - 1) / 2) * t
    step = t / n_sub
    zf = (zs[:, None] + (np.arange(n_sub) - (n_sub - 1) / 2) * step).ravel()     # sub-slice centres
    return {"m": m, "shift": shift, "xs": xs, "ys": ys, "zs": zs, "zf": zf, "n_sub": n_sub, "step": step,
            "pixel_mm": float(px), "slice_mm": float(t), "holder": holder, "brain_lo": lo, "brain_hi": hi,
            "centre_xy": (xc, yc)}


def _control_lattice(base, g, rng, elastic_mm, control=(5, 6, 6)) -> torch.Tensor:
    """Normalised base positions (1, 3, ck, J, I) on ``control[0]`` planes spanning the sub-slices.

    Output mm p -> base mm ``m p + shift + d(p)``; d is trilinear between Gaussian control
    displacements (``elastic_mm`` s.d.); the affine part is exact.
    """
    xs, ys, zf = g["xs"], g["ys"], g["zf"]
    ck, cj, ci = control
    zz, yy, xx = np.meshgrid(np.linspace(zf[0], zf[-1], ck), np.linspace(ys[0], ys[-1], cj),
                             np.linspace(xs[0], xs[-1], ci), indexing="ij")
    p = np.stack([xx, yy, zz], axis=-1)
    q = p @ g["m"].T + g["shift"] + rng.normal(0.0, elastic_mm, p.shape)
    size = np.array([base["shape"][2], base["shape"][1], base["shape"][0]], dtype=float)
    idx = np.asarray(base["centre_ijk"]) + q
    coarse = torch.from_numpy((2 * idx / (size - 1) - 1).astype(np.float32)).permute(3, 0, 1, 2)[None]
    return F.interpolate(coarse, size=(ck, len(ys), len(xs)), mode="trilinear", align_corners=True)


def _grid_at(lattice: torch.Tensor, zf, zs) -> torch.Tensor:
    """grid_sample grid (1, len(zs), J, I, 3): the lattice interpolated linearly at the z positions."""
    lat = lattice[0].permute(1, 2, 3, 0)                           # (ck, J, I, 3)
    ck = lat.shape[0]
    span = max(zf[-1] - zf[0], 1e-6)
    pos = np.clip((np.asarray(zs, dtype=float) - zf[0]) / span, 0, 1) * (ck - 1)
    k0 = np.clip(np.floor(pos).astype(int), 0, max(ck - 2, 0))
    k1 = np.minimum(k0 + 1, ck - 1)
    frac = torch.from_numpy((pos - k0).astype(np.float32)).reshape(-1, 1, 1, 1)
    return torch.lerp(lat[k0], lat[k1], frac)[None]


def _grow_lesion(rng, allowed, centre, radius_mm, spacing_kji, roughness):
    """An irregular lesion grown from ``centre`` inside ``allowed`` to the volume of a ball of ``radius_mm``.

    Score = distance from the centre / radius + a smooth random field (s.d. ``roughness``); the lesion
    is the connected part of ``score < tau`` inside ``allowed`` that holds the centre, with ``tau``
    bisected to reach the target volume (less where the territory's parenchyma runs out).
    Returns (box, inside, profile): profile is 1 in the core, falling to 0 at the edge.
    """
    sp = np.asarray(spacing_kji, dtype=float)
    half = np.ceil(2.2 * radius_mm / sp).astype(int) + 1
    lo = np.maximum(np.asarray(centre) - half, 0)
    hi = np.minimum(np.asarray(centre) + half + 1, allowed.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    local = tuple(int(c - s.start) for c, s in zip(centre, box))
    ok = allowed[box]
    parts, _ = ndi.label(ok)
    ok = parts == parts[local]                              # the parenchyma reachable from the centre
    grids = np.ogrid[box]
    r = np.sqrt(sum(((gr - c) * s / radius_mm) ** 2 for gr, c, s in zip(grids, centre, sp)))
    ctrl = rng.normal(0.0, roughness, (5, 5, 5)).astype(np.float32)
    field = F.interpolate(torch.from_numpy(ctrl)[None, None], size=ok.shape, mode="trilinear",
                          align_corners=True)[0, 0].numpy()
    score = (r + field - field[local]).astype(np.float32)
    target = 4.0 / 3.0 * np.pi * radius_mm ** 3 / float(np.prod(sp))

    def region(tau):
        comp, _ = ndi.label((score < tau) & ok)
        reg = comp == comp[local]
        return reg, int(reg.sum())

    lo_t, hi_t = 1e-3, 2.0
    low, high = region(lo_t), region(hi_t)
    if high[1] > target:
        for _ in range(9):
            mid = (lo_t + hi_t) / 2
            reg = region(mid)
            if reg[1] > target:
                hi_t, high = mid, reg
            else:
                lo_t, low = mid, reg
        tau, (inside, _) = ((lo_t, low) if target - low[1] <= high[1] - target else (hi_t, high))
    else:
        tau, inside = hi_t, high[0]
    edge = min(0.25, tau / 2)
    profile = np.where(inside, np.clip((tau - score) / edge, 0.0, 1.0), 0.0).astype(np.float32)
    return box, inside, profile


@dataclass
class _Stack:
    """One head on the sub-slices while it is rendered; ``code`` is already on the output slices."""
    hu: np.ndarray                      # HU (atlas HU until the tissues are added)
    d: np.ndarray                       # mm outside the brain (output scale)
    dh: np.ndarray | None               # mm outside the head hull (output scale); dropped after use
    sb: np.ndarray                      # skull-base (dense bone) fraction
    code: np.ndarray                    # territory + 16 * parenchyma (uint8)
    inv_w: np.ndarray                   # 1 / partial-volume box-filter width (1 / mm)
    outside: np.ndarray | None = None   # fraction of each voxel outside the head


def _ramp(x, b, inv_w):
    """Fraction of each voxel beyond level ``b`` of ``x`` (box filter of width 1 / ``inv_w``)."""
    return np.clip((x - b) * inv_w + 0.5, 0.0, 1.0)


def _variation(rng, shape, amount):
    """A smooth relative thickness variation over ``shape`` (k, j, i): 1 + ``amount`` * s.d. 1, in 0.5-1.7."""
    nf, J, I = shape
    v = (_smooth_1d(rng, nf)[:, None, None] + _smooth_1d(rng, J)[None, :, None]
         + _smooth_1d(rng, I)[None, None, :]) / np.float32(np.sqrt(3.0))
    return np.clip(1.0 + np.float32(amount) * v, 0.5, 1.7)


def _ellipse_sd(X, Y, a, b):
    """~ Signed distance (mm) to the ellipse of half-axes ``a``, ``b``; > 0 outside."""
    fval = np.sqrt((X / a) ** 2 + (Y / b) ** 2)
    grad = np.sqrt((X / a ** 2) ** 2 + (Y / b ** 2) ** 2) / np.maximum(fval, 1e-6)
    return (fval - 1.0) / np.maximum(grad, 1e-6)


def _band(x, lo, hi, px):
    """Fraction of each pixel (``px`` mm) with ``lo`` <= x <= ``hi``."""
    return np.clip((x - lo) / px + 0.5, 0, 1) - np.clip((x - hi) / px + 0.5, 0, 1)


def _slab(x, n_sub):
    """Average each run of ``n_sub`` sub-slices into one slice."""
    return x.reshape(x.shape[0] // n_sub, n_sub, *x.shape[1:]).mean(axis=1) if n_sub > 1 else x


def _sample_head(base, f, g, rng_field) -> _Stack:
    """The elastically warped atlas on the sub-slices: HU, distances, skull base, codes, filter widths."""
    zf, step, px = g["zf"], g["step"], g["pixel_mm"]
    lattice = _control_lattice(base, g, rng_field, f["elastic_mm"])
    grid = _grid_at(lattice, zf, zf)
    hu_a = _sample(base["atlas"], grid, "bilinear")[0].numpy()
    d, dh, sb = _sample(base["coarse"], grid, "bilinear").numpy()
    del grid
    code = _sample(base["labels"], _grid_at(lattice, zf, g["zs"]), "nearest", padding="zeros")[0].numpy()
    code = code.astype(np.uint8)
    s_mean = np.float32(np.mean(f["scale"]))
    d *= s_mean                                        # mm outside the brain, output scale
    dh *= s_mean
    gz = np.gradient(d, step, axis=0) if len(zf) > 1 else np.zeros_like(d)
    gz2 = np.minimum(gz * gz, 1.0)
    inv_w = 1.0 / np.maximum(np.sqrt(gz2 * step ** 2 + (1.0 - gz2) * px ** 2), 0.3)   # box filter width
    return _Stack(hu=hu_a, d=d, dh=dh, sb=sb, code=code, inv_w=inv_w)


def _add_tissues(f, g, rng_field, s: _Stack) -> None:
    """Brain, CSF rim, skull (tables, diploe, dense base), scalp and fat: sets ``s.hu`` and ``s.outside``."""
    nf_shape = (len(g["zf"]), len(g["ys"]), len(g["xs"]))
    d, dh, inv_w = s.d, s.dh, s.inv_w
    brain = np.float32(30.0) + (s.hu - np.float32(30.0)) * np.float32(f["grey_white_gain"]) \
        + np.float32(f["brain_offset"])
    b0 = 0.0
    b1 = b0 + f["csf_mm"]
    bone = np.float32(f["skull_mm"]) * _variation(rng_field, nf_shape, f["skull_variation"])
    b4 = b1 + bone
    b2 = b1 + np.minimum(np.float32(f["inner_table_mm"]), 0.4 * bone)
    b3 = b4 - np.minimum(np.float32(f["outer_table_mm"]), 0.4 * bone)
    del bone
    table, diploe, scalp_hu = f["table_hu"], f["diploe_hu"], f["scalp_hu"]
    hu = brain + (f["csf_hu"] - brain) * _ramp(d, b0, inv_w)
    del brain
    for level, step_hu in ((b1, table - f["csf_hu"]), (b2, diploe - table), (b3, table - diploe),
                           (b4, scalp_hu - table)):
        hu += np.float32(step_hu) * _ramp(d, level, inv_w)
    del b2, b3
    s.sb *= _ramp(d, b0, inv_w)                        # skull base: dense (petrous-like) bone
    hu += s.sb * (np.float32(f["petrous_hu"]) - hu)
    b5 = b4 + np.float32(f["scalp_mm"]) * _variation(rng_field, nf_shape, 0.3)
    if f["fat_mm"] > 0.2:                              # subcutaneous fat under the skin
        fat = (_ramp(dh, b5 - f["skin_mm"] - f["fat_mm"], inv_w) - _ramp(dh, b5 - f["skin_mm"], inv_w)) \
            * _ramp(d, b4 + 0.5, inv_w)
        hu += fat * np.float32(f["fat_hu"] - scalp_hu)
        del fat
    s.hu, s.outside, s.dh = hu, _ramp(dh, b5, inv_w), None


def _add_outside(f, g, s: _Stack) -> np.ndarray:
    """Air, a foam pillow, a head holder (fixed to the table: not tilted) into ``s.hu``; returns the holder."""
    xs, ys, zf, px, step = g["xs"], g["ys"], g["zf"], g["pixel_mm"], g["step"]
    J, I = len(ys), len(xs)
    yc = g["centre_xy"][1]
    hd = g["holder"]
    X = (xs[None, :] - hd["xc"]).astype(np.float32)
    Y = (ys[:, None] - yc).astype(np.float32)
    holder2d = np.zeros((J, I), np.float32)
    pillow2d = np.zeros((J, I), np.float32)
    if f["holder"]:
        sd = _ellipse_sd(X, Y, hd["a"], hd["b"])
        holder2d = _band(sd, 0.0, f["holder_mm"], px) * np.clip((Y - f["holder_rim_mm"]) / px + 0.5, 0, 1)
        b_pillow = hd["b"]
    else:
        b_pillow = g["brain_hi"][1] - yc + (hd["b"] - (g["brain_hi"][1] - yc)) - f["holder_gap_mm"] \
            + f["pillow_mm"]
    if f["pillow"]:
        sd = _ellipse_sd(X, Y, hd["a"], b_pillow)
        pillow2d = np.clip(-sd / px + 0.5, 0, 1) * np.clip((Y - f["pillow_level"] * b_pillow) / px + 0.5, 0, 1)
    holder_top = g["brain_hi"][2] + f["holder_top_mm"]
    hz = np.clip((holder_top - zf) / step + 0.5, 0, 1).astype(np.float32)[:, None, None]
    holder3d = holder2d[None] * hz
    v_out = np.float32(-1000.0) + pillow2d[None] * np.float32(f["pillow_hu"] + 1000.0) \
        + holder3d * np.float32(f["holder_hu"] + 1000.0)
    s.hu += s.outside * (v_out - s.hu)
    return holder3d


def _scanner_effects(f, g, rng_field, hu, sb, d, head_w):
    """Brain bias, calibration offset and beam hardening on the output grid; returns (hu float32, brain_w)."""
    xs, ys, px = g["xs"], g["ys"], g["pixel_mm"]
    J, I = len(ys), len(xs)
    brain_w = np.clip(0.5 - d, 0.0, 1.0)
    hu += _coarse_field(rng_field, 1, (4, 4, 4), (len(g["zs"]), J, I), 2.0)[0].numpy() * brain_w
    hu += np.float32(f["hu_offset"])
    if f["beam_hardening"]:
        xc, yc = g["centre_xy"]
        lo, hi = g["brain_lo"], g["brain_hi"]
        rx, ry = (hi[0] - lo[0]) / 2 + 5.0, (hi[1] - lo[1]) / 2 + 5.0
        Xc = (xs[None, :] - xc).astype(np.float32)
        Y = (ys[:, None] - yc).astype(np.float32)
        cup = np.clip(1.0 - (Xc / rx) ** 2 - (Y / ry) ** 2, 0.0, 1.0)          # cupping: darker centre
        hu -= np.float32(f["cupping_hu"]) * cup[None] * head_w
        shade = ndi.gaussian_filter(sb[:, ::4, ::4], (0, 1.5 / px, 1.5 / px))  # shading near the skull base
        shade = F.interpolate(torch.from_numpy(shade)[None], size=(J, I), mode="bilinear",
                              align_corners=False)[0].numpy()
        shade /= max(float(shade.max()), 0.05)
        lobes = 0.55 + 0.45 * np.cos(f["streak_lobes"] * np.arctan2(Y, Xc) + f["streak_phase"])
        hu -= np.float32(f["streak_hu"]) * shade * lobes[None].astype(np.float32) * head_w
        del shade
    return hu.astype(np.float32), brain_w


def _brain_noise(f, t, variety: bool):
    """(noise0, noise_sd): the noise s.d. in HU before ``noise_scale`` (the lesion contrast's base) and after."""
    noise0 = f["noise_5mm_hu"] * ((5.0 / t) ** 0.35 if variety else 1.0)
    noise0 = float(np.clip(noise0, 2.0, 8.0)) if variety else float(noise0)
    return noise0, noise0 * f["noise_scale"]


def _add_lesions(rng_lesion, hu, terr, paren, label: int, size_groups, *, radius_mm, contrast_hu, noise0,
                 spacing_kji):
    """The lesions of ``label`` darkened into ``hu`` (in place); returns (mask, one record per lesion)."""
    shape = hu.shape
    sides = {0: [], 1: ["left"], 2: ["right"], 3: ["left", "right"]}[label]
    mask = np.zeros(shape, dtype=np.uint8)
    lesions = []
    for n_lesion, side in enumerate(sides):
        group = size_groups[n_lesion] or SIZE_GROUPS[rng_lesion.integers(4)]
        choices = list(territories_of_side(side))
        rng_lesion.shuffle(choices)
        for territory in choices:      # a territory present in this head's slices (always, in practice)
            allowed = (terr == TERRITORY_LABELS[territory]) & paren & (mask == 0)
            candidates = np.flatnonzero(allowed)
            if len(candidates):
                break
        else:
            raise ACATError(f"no parenchyma of the {side} hemisphere in the generated head")
        centre = np.unravel_index(candidates[rng_lesion.integers(len(candidates))], shape)
        if radius_mm is None:
            radius = rng_lesion.uniform(*SIZE_RADII_MM[group])
        else:
            radius = rng_lesion.uniform(*radius_mm)
            group = next((g_ for g_ in SIZE_GROUPS if radius < SIZE_RADII_MM[g_][1]), SIZE_GROUPS[-1])
        box, inside, profile = _grow_lesion(rng_lesion, allowed, centre, radius, spacing_kji,
                                            rng_lesion.uniform(0.15, 0.4))
        contrast = noise0 + rng_lesion.uniform(*(contrast_hu or LESION_EXTRA_CONTRAST_HU))
        hu[box] -= np.float32(contrast) * profile
        mask[box][inside] = TERRITORY_LABELS[territory]
        voxels = int(inside.sum())
        depth = ndi.distance_transform_edt(np.pad(inside, 1), sampling=spacing_kji)[1:-1, 1:-1, 1:-1]
        centre = [s_.start + int(c) for s_, c in zip(box, np.unravel_index(np.argmax(depth), inside.shape))]
        lesions.append({"territory": territory, "side": side, "size_group": group,
                        "radius_mm": round(float(radius), 2),
                        "equivalent_radius_mm": round(float((voxels * np.prod(spacing_kji) * 3 / (4 * np.pi))
                                                            ** (1 / 3)), 2),
                        "contrast_hu": round(float(contrast), 2), "voxels": voxels,
                        "centre_kji": [int(c) for c in centre]})
    return mask, lesions


def _acquisition_record(f, g, variety: bool) -> dict:
    """What was drawn for the case (the datalist item's ``acquisition``), rounded."""
    K, J, I = len(g["zs"]), len(g["ys"]), len(g["xs"])
    acq = {"variety": bool(variety), "slice_mm": round(g["slice_mm"], 3), "pixel_mm": round(g["pixel_mm"], 3),
           "sub_slices": g["n_sub"],
           "shape_kji": [K, J, I], "tilt_deg": f["tilt_deg"], "roll_deg": f["roll_deg"], "yaw_deg": f["yaw_deg"],
           "head_scale": f["head_scale"], "scale_xyz": [float(s) for s in f["scale"]],
           "elastic_mm": f["elastic_mm"], "hu_offset": f["hu_offset"], "noise_scale": f["noise_scale"],
           "noise_corr_mm": f["noise_corr_mm"], "vertex_cut": bool(f["vertex_cut"]),
           "bottom_cut": bool(f["bottom_cut"]), "holder": bool(f["holder"]), "pillow": bool(f["pillow"]),
           "beam_hardening": bool(f["beam_hardening"]), "skull_mm": f["skull_mm"], "scalp_mm": f["scalp_mm"],
           "csf_mm": f["csf_mm"], "cupping_hu": f["cupping_hu"] * f["beam_hardening"],
           "streak_hu": f["streak_hu"] * f["beam_hardening"]}
    return {k: (round(v, 3) if isinstance(v, float) else [round(x, 4) for x in v] if isinstance(v, list)
                and v and isinstance(v[0], float) else v) for k, v in acq.items()}


def make_brain_case(rng, label: int, size_groups=(None, None), return_clean: bool = False,
                    contrast_hu=None, radius_mm=None, variety: bool = True, acquisition=None) -> dict:
    """One synthetic head CT. ``label``: 0 none, 1 left, 2 right, 3 both. Returns arrays + metadata.

    ``contrast_hu`` ([lo, hi] HU) replaces the standard extra lesion contrast ``LESION_EXTRA_CONTRAST_HU``;
    ``radius_mm`` ([lo, hi]) the size group's radius range (the group is then the one the radius falls in).
    ``variety`` False gives the plain heads (mild warp, 1 x 1 x 5 mm, 192 x 224 x 34); ``acquisition``
    fixes single factors (see ``ACQUISITION``). Each lesion records its drawn ``radius_mm`` and its
    ``equivalent_radius_mm`` from the voxel count (smaller where the territory's parenchyma runs out)
    and ``centre_kji``, its deepest voxel.

    Arrays are canonical LPS-axial ``[k, j, i]`` (identity direction), all on one grid: ``image`` int16 HU,
    ``mask`` uint8 (territory label of each lesion voxel), ``regions`` uint8 (territory labels).
    ``acquisition`` (dict) says what was drawn. With ``return_clean``: ``clean`` (before lesions and
    noise), ``noiseless`` (before noise), ``head``, ``brain`` and ``holder`` (bool masks).
    """
    base = brain_base()
    f = draw_brain_factors(rng, variety, acquisition)
    rng_field, rng_lesion, rng_noise = (np.random.default_rng(int(s)) for s in rng.integers(0, 2 ** 32, 3))
    g = _head_geometry(base, f, variety)
    xs, ys, zs, n_sub = g["xs"], g["ys"], g["zs"], g["n_sub"]
    px, t = g["pixel_mm"], g["slice_mm"]

    # ---- render the sub-slice stack (K * n_sub slices of step mm), then average each slab
    s = _sample_head(base, f, g, rng_field)
    _add_tissues(f, g, rng_field, s)
    holder3d = _add_outside(f, g, s)                   # ---- outside the head
    hu, sb, d = _slab(s.hu, n_sub), _slab(s.sb, n_sub), _slab(s.d, n_sub)
    head_w = 1.0 - _slab(s.outside, n_sub)
    holder = _slab(s.outside * holder3d, n_sub) > 0.5 if return_clean else None
    terr, paren = s.code % 16, s.code >= 16
    del s, holder3d

    # ---- on the output grid: brain bias, calibration offset, beam hardening
    hu, brain_w = _scanner_effects(f, g, rng_field, hu, sb, d, head_w)
    clean = hu.copy() if return_clean else None

    # ---- lesions (output grid: the mask is exact), then noise
    noise0, noise_sd = _brain_noise(f, t, variety)
    mask, lesions = _add_lesions(rng_lesion, hu, terr, paren, label, size_groups, radius_mm=radius_mm,
                                 contrast_hu=contrast_hu, noise0=noise0, spacing_kji=(t, px, px))
    noiseless = hu.copy() if return_clean else None
    if noise_sd > 0:
        hu += _ct_noise(rng_noise, hu.shape, noise_sd, f["noise_corr_mm"] / px, f["noise_ring"])
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    case = {"image": image, "mask": mask, "regions": terr, "lesions": lesions, "noise_hu": float(noise_sd),
            "spacing": (px, px, t), "direction": np.eye(3), "origin": (float(xs[0]), float(ys[0]), float(zs[0])),
            "acquisition": _acquisition_record(f, g, variety)}
    if return_clean:   # for tests: the head before lesions and before noise
        case["clean"], case["noiseless"] = clean, noiseless
        case["head"], case["holder"], case["brain"] = head_w > 0.5, holder, brain_w > 0.5
    return case


def _ct_noise(rng, shape, sd, sigma_vox, ring) -> np.ndarray:
    """Correlated in-plane noise of s.d. ``sd``: Gaussian-filtered white noise minus ``ring`` times a
    wider copy (the mottled, ring-like texture of filtered back-projection)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    noise = ndi.gaussian_filter(white, (0, sigma_vox, sigma_vox), mode="wrap")
    if ring > 0:
        noise -= np.float32(ring) * ndi.gaussian_filter(white, (0, 2 * sigma_vox, 2 * sigma_vox), mode="wrap")
    return noise * np.float32(sd / max(float(noise.std()), 1e-6))


# ---------------------------------------------------------------------------------- lung
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


def make_lung_case(rng, label: int, return_clean: bool = False, involvement=None) -> dict:
    """One synthetic chest CT; ``label`` 1 adds ground-glass / consolidation patches in the lungs.

    Standard: 1-4 patches. ``involvement`` ([lo, hi], fractions of the lungs): patches are added until
    a target drawn from [lo, hi] is reached (at most ``LUNG_MAX_PATCHES``), like MosMed's CT-1..CT-4
    grades, which are defined by the fraction of lung involved.
    """
    base = lung_base()
    ct = base["volume"]
    shape = ct.array.shape
    grid = _warp_grid(rng, shape, ct.spacing, shape, ct.spacing, base["centre_ijk"],
                      rot_deg=(2, 2, 6), scale_range=(0.93, 1.07), shift_mm=(6, 6, 8), disp_mm=4.0)
    hu, right, left = _sample(base["channels"], grid, "bilinear").numpy()
    lungs = np.where(right > 0.5, 1, np.where(left > 0.5, 2, 0)).astype(np.uint8)
    hu = hu + rng.uniform(-10, 10)
    clean = hu.copy() if return_clean else None
    mask = np.zeros(shape, dtype=np.uint8)
    lesions = []
    if label == 1:
        lung_voxels = np.flatnonzero(lungs > 0)
        if involvement is None:
            n_patches, target = int(rng.integers(1, 5)), None
        else:
            n_patches, target = LUNG_MAX_PATCHES, rng.uniform(*involvement) * len(lung_voxels)
        for _ in range(n_patches):
            kind = "ground-glass" if rng.random() < 0.65 else "consolidation"
            centre = np.unravel_index(lung_voxels[rng.integers(len(lung_voxels))], shape)
            radius = rng.uniform(10.0, 40.0)
            box, f = _blob(rng, shape, centre, radius / np.asarray(ct.spacing[::-1]), roughness=0.4)
            inside = (f < 1) & (lungs[box] > 0)
            target_hu = rng.uniform(*LUNG_FINDINGS[kind])
            alpha = np.where(inside, np.clip((1.0 - f) / 0.4, 0.0, 1.0), 0.0)
            hu[box] += (alpha * (target_hu - hu[box])).astype(np.float32)
            code = 1 if kind == "ground-glass" else 2
            mask[box][inside & (mask[box] == 0)] = code
            lesions.append({"finding": kind, "radius_mm": round(float(radius), 2),
                            "target_hu": round(float(target_hu), 1), "voxels": int(inside.sum()),
                            "centre_kji": [int(c) for c in centre]})
            if target is not None and np.count_nonzero(mask) >= target:
                break
    noise_sd = rng.uniform(*LUNG_NOISE_HU)
    noiseless = hu.copy() if return_clean else None
    hu = hu + _correlated_noise(rng, shape, noise_sd)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    involvement = float((mask > 0).sum() / max((lungs > 0).sum(), 1))
    case = {"image": image, "mask": mask, "regions": lungs, "lesions": lesions, "noise_hu": float(noise_sd),
            "involvement": involvement, "spacing": ct.spacing, "origin": ct.origin, "direction": ct.direction}
    if return_clean:   # for tests: the head before lesions and before noise
        case["clean"], case["noiseless"] = clean, noiseless
    return case


def lung_size_group(involvement: float) -> str:
    return "LS-1" if involvement < 0.05 else ("LS-2" if involvement < 0.15 else "LS-3")


# ---------------------------------------------------------------------------------- generate
def _check_acquisition(value) -> dict:
    """The ``acquisition`` option validated: known keys, numbers in range, booleans."""
    if not isinstance(value, dict):
        raise ConfigError(f"acquisition {value!r}: give a mapping like {{\"slice_mm\": 5, \"tilt_deg\": 10}}")
    out = {}
    for key, v in value.items():
        if key not in ACQUISITION:
            raise ConfigError(f"acquisition key {key!r} unknown; use {sorted(ACQUISITION)}")
        kind = ACQUISITION[key]
        if kind[0] == "bool":
            if not isinstance(v, bool):
                raise ConfigError(f"acquisition {key} {v!r}: give true or false")
            out[key] = v
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ConfigError(f"acquisition {key} {v!r}: give a number")
        if not kind[1] <= v <= kind[2] or (key in ("slice_mm", "pixel_mm", "head_scale") and v <= 0):
            raise ConfigError(f"acquisition {key} {v}: need {kind[1]} <= {key} <= {kind[2]}")
        out[key] = float(v)
    return out


def check_options(task: str, options=None) -> dict:
    """The generator options (``DEFAULT_OPTIONS`` updated with ``options``), validated for ``task``."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown ACAT-Synth option(s) {unknown}; use {sorted(DEFAULT_OPTIONS)}")
    full = {**DEFAULT_OPTIONS, **options}
    groups = full["size_groups"]
    if groups is not None:
        if isinstance(groups, str) or not groups or any(g not in SIZE_GROUPS for g in groups):
            raise ConfigError(f"size_groups {groups!r}: give a list of {', '.join(SIZE_GROUPS)}")
        full["size_groups"] = list(groups)
    for key, lo_min, hi_max in (("contrast_hu", 0.0, 200.0), ("radius_mm", 1.0, 60.0),
                                ("involvement", 0.0, 0.9)):
        value = full[key]
        if value is None:
            continue
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} {value!r}: give two numbers [lo, hi]") from None
        if not lo_min <= lo <= hi <= hi_max:
            raise ConfigError(f"{key} [{lo}, {hi}]: need {lo_min} <= lo <= hi <= {hi_max}")
        full[key] = [lo, hi]
    if full["size_groups"] is not None and full["radius_mm"] is not None:
        raise ConfigError("give size_groups or radius_mm, not both (the radius decides the size group)")
    if full["variety"] is not None and not isinstance(full["variety"], bool):
        raise ConfigError(f"variety {full['variety']!r}: give true or false")
    if full["acquisition"] is not None:
        full["acquisition"] = _check_acquisition(full["acquisition"])
    wrong_task = [k for k in (("involvement",) if task == "brain" else
                              ("size_groups", "contrast_hu", "radius_mm", "variety", "acquisition"))
                  if full[k] is not None]
    if wrong_task:
        raise ConfigError(f"ACAT-Synth option(s) {wrong_task} do not apply to the {task} task")
    return full


def make_case(task: str, seed: int, index: int, label: int, size_group=None, return_clean=False,
              options=None) -> dict:
    """Case ``index`` of a benchmark: deterministic in (task, seed, index, label, size_group, options)."""
    options = check_options(task, options)
    rng = np.random.default_rng([seed, index, TASKS.index(task)])
    if task == "brain":
        groups = options["size_groups"] or SIZE_GROUPS
        extra = groups[rng.integers(len(groups))]
        return make_brain_case(rng, label, (size_group, extra), return_clean, options["contrast_hu"],
                               options["radius_mm"], options["variety"] is not False, options["acquisition"])
    return make_lung_case(rng, label, return_clean, options["involvement"])


def generate(task: str = "brain", n: int = 10, seed: int = 0, out_dir=".", class_fractions=None,
             progress=None, options=None) -> dict:
    """Write ``n`` cases of ``task`` into ``out_dir`` and return the datalist (also in datalist.json).

    ``options`` (see ``DEFAULT_OPTIONS``) makes an easier or harder variant of the benchmark; they are
    recorded in the datalist.
    """
    if task not in TASKS:
        raise ConfigError(f"task {task!r} unknown; use 'brain' or 'lung'")
    if int(n) < 1:
        raise ConfigError(f"n = {n}: give at least one case")
    options = check_options(task, options)
    n, seed = int(n), int(seed)
    out = Path(out_dir)
    for sub in ("images", "masks", "regions"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    class_names = CLASS_NAMES[task]
    labels = class_plan(n, len(class_names), seed, class_fractions)
    items = []
    positives = 0
    for index, label in enumerate(labels):
        group = None
        if task == "brain" and label > 0:
            groups = options["size_groups"] or SIZE_GROUPS
            group = groups[positives % len(groups)]
            positives += 1
        case = make_case(task, seed, index, label, group, options=options)
        name = f"{task}_{index:05d}"
        paths = {key: f"{key}/{name}.nrrd" for key in ("images", "masks", "regions")}
        for key, array_key in (("images", "image"), ("masks", "mask"), ("regions", "regions")):
            _write(case[array_key], case["spacing"], case["origin"], case["direction"], out / paths[key])
        item = {"case": name, "image": paths["images"], "label": int(label), "label_name": class_names[label],
                "mask": paths["masks"], "regions": paths["regions"], "noise_hu": round(case["noise_hu"], 2),
                "lesions": case["lesions"]}
        if task == "brain":
            item["territory"] = "+".join(les["territory"] for les in case["lesions"])
            item["size_group"] = "+".join(les["size_group"] for les in case["lesions"])
            item["acquisition"] = case["acquisition"]
        else:
            item["involvement"] = round(case["involvement"], 4)
            item["size_group"] = lung_size_group(case["involvement"]) if label else ""
            item["territory"] = ""
        items.append(item)
        if progress is not None:
            progress(index + 1, n)
    datalist = {
        "name": f"ACAT-Synth {task}", "task": task, "seed": seed, "n": n, "version": GENERATOR_VERSION,
        "description": "synthetic lesions on real CT anatomy (ACATCore.data.synth)",
        "options": {k: v for k, v in options.items() if v is not None},
        "class_names": list(class_names),
        "region_names": list(TERRITORIES) if task == "brain" else ["right lung", "left lung"],
        "label_counts": {name: labels.count(i) for i, name in enumerate(class_names)},
        **stratified_split(items, seed=seed),
    }
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return datalist


def parse_acquisition(items) -> dict:
    """``["slice_mm=5", "holder=true"]`` -> ``{"slice_mm": 5, "holder": True}`` (values read as JSON)."""
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep:
            raise ConfigError(f"acquisition {item!r}: give KEY=VALUE, e.g. slice_mm=5")
        try:
            out[key.strip()] = json.loads(value.strip().lower() if value.strip().lower() in ("true", "false")
                                          else value)
        except json.JSONDecodeError:
            raise ConfigError(f"acquisition {item!r}: the value must be a number, true or false") from None
    return _check_acquisition(out)


def main(argv=None) -> int:
    """``acat synth --task brain|lung --n N --seed S --out DIR [options]``."""
    parser = argparse.ArgumentParser(prog="acat synth", description="Generate the ACAT-Synth benchmark.")
    parser.add_argument("--task", choices=TASKS, default="brain")
    parser.add_argument("--n", type=int, default=100, help="number of cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size-groups", nargs="+", metavar="IS-k",
                        help="brain: draw lesion sizes from these groups only (e.g. IS-3 IS-4)")
    parser.add_argument("--contrast", nargs=2, type=float, metavar=("LO", "HI"),
                        help="brain: extra lesion contrast in HU (standard "
                             f"{LESION_EXTRA_CONTRAST_HU[0]:g} {LESION_EXTRA_CONTRAST_HU[1]:g})")
    parser.add_argument("--radius", nargs=2, type=float, metavar=("LO", "HI"),
                        help="brain: lesion radius in mm instead of the size groups' (e.g. 20 35)")
    parser.add_argument("--involvement", nargs=2, type=float, metavar=("LO", "HI"),
                        help="lung: fraction of the lungs involved in positive cases (e.g. 0.1 0.3)")
    parser.add_argument("--no-variety", action="store_true",
                        help="brain: plain heads (atlas with a mild warp, 1 x 1 x 5 mm) instead of varied ones")
    parser.add_argument("--acquisition", nargs="+", metavar="KEY=VALUE",
                        help="brain: fix single factors, e.g. slice_mm=5 tilt_deg=10 holder=true "
                             f"(keys: {', '.join(ACQUISITION)})")
    args = parser.parse_args(argv)
    options = {"size_groups": args.size_groups, "contrast_hu": args.contrast,
               "radius_mm": args.radius, "involvement": args.involvement,
               "variety": False if args.no_variety else None}
    options = {k: v for k, v in options.items() if v is not None}
    try:
        if args.acquisition:
            options["acquisition"] = parse_acquisition(args.acquisition)
        check_options(args.task, options)
    except ConfigError as exc:
        parser.error(str(exc))
    start = time.perf_counter()

    def progress(done, total):
        if done == total or done % 10 == 0:
            print(f"\r{done}/{total} cases", end="", file=sys.stderr, flush=True)

    datalist = generate(args.task, args.n, args.seed, args.out, progress=progress, options=options)
    seconds = time.perf_counter() - start
    print(f"\nwrote {args.n} {args.task} cases ({datalist['label_counts']}) to {args.out} "
          f"in {seconds:.1f} s; datalist: {Path(args.out) / 'datalist.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
