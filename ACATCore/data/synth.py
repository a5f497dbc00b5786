"""ACAT-Synth: a deterministic benchmark of synthetic lesions on real CT anatomy, with known answers.

``generate(task, n, seed, out_dir)`` writes ``n`` cases and ``datalist.json``; ``main(argv)`` is the
command line (``acat synth --task brain|lung --n N --seed S --out DIR``). Case ``i`` depends only on
``(task, seed, i)`` and the class plan of ``(n, seed)``; the same arguments give identical files.

**brain** (4 classes: ``no lesion``, ``left``, ``right``, ``both``): every head is the CT brain atlas
(``Resources/data/ct_brain_atlas_1mm.nii.gz``, TotalSegmentator, Apache-2.0) reoriented to LPS-axial,
averaged over 5 mm slabs, then per case:

- a random smooth deformation: rotation (+-7 deg axial, +-4 deg otherwise), anisotropic scaling
  (0.92-1.08), translation (+-6 mm) and a smooth displacement field (5x6x6 control points, 2.5 mm
  s.d.), resampled onto a 192 x 224 x 34 grid of 1 x 1 x 5 mm (like a clinical head CT);
- brain intensity variation (grey/white contrast x0.85-1.15, offset +-3 HU, a smooth +-2 HU bias);
- a CSF rim, a skull (cortical tables ~1600-1900 HU, diploe ~700-900 HU, 4-8 mm, varying), scalp and air;
- correlated Gaussian noise of 2.5-4.5 HU s.d.;
- lesions: hypodense (ischaemic) blobs, irregular ellipsoids restricted to brain parenchyma (no CSF)
  inside ONE vascular territory (:mod:`ACATCore.data.territories`, warped with the head), of four
  graded sizes IS-1..IS-4 (equivalent radius 3-5, 5-8, 8-12, 12-18 mm). The contrast is the case's
  noise s.d. plus 2-6 HU: the smallest lesions are a few HU above the noise. ``left``/``right``: one
  lesion in a territory of that side; ``both``: one lesion on each side.

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
``noise_hu`` and ``lesions`` with per-lesion details).

Options (``generate(..., options={...})``, ``acat synth --size-groups/--contrast/--radius/--involvement``)
make easier or harder variants; the standard benchmark is what you get without them, and each option
only changes the cases it applies to. ``size_groups`` (brain) draws lesion sizes from chosen groups only;
``contrast_hu`` (brain) sets the extra lesion contrast; ``radius_mm`` (brain) sets the lesion radius
(e.g. 20-35 mm: territorial infarcts, the size group then follows the radius); ``involvement`` (lung)
adds patches until a drawn fraction of the lungs is involved (MosMed grades its scans by this
fraction: CT-1 < 25 %, CT-2 25-50 %, ...). The options used are recorded in ``datalist.json``.

Classes are balanced by default (``class_fractions`` sets other proportions); positive brain cases
cycle through IS-1..IS-4 so that size groups are balanced too. Brain heads are written on an
identity (LPS) grid; lung cases keep the chest CT's own geometry (stored RAS-like, direction
diag(-1, -1, 1)), so both orientations are exercised downstream.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..errors import ACATError, ConfigError
from ..resources import resource_path
from .splits import split_counts, stratified_split
from .territories import TERRITORIES, TERRITORY_LABELS, territories_of_side, territory_map

TASKS = ("brain", "lung")
BRAIN_CLASSES = ("no lesion", "left", "right", "both")
LUNG_CLASSES = ("normal", "findings")
SIZE_GROUPS = ("IS-1", "IS-2", "IS-3", "IS-4")
SIZE_RADII_MM = {"IS-1": (3.0, 5.0), "IS-2": (5.0, 8.0), "IS-3": (8.0, 12.0), "IS-4": (12.0, 18.0)}
BRAIN_NOISE_HU = (2.5, 4.5)
LESION_EXTRA_CONTRAST_HU = (2.0, 6.0)   # lesion contrast = noise s.d. + this
BRAIN_GRID = (34, 224, 192)             # output (k, j, i) voxels
BRAIN_SPACING = (1.0, 1.0, 5.0)         # output (x, y, z) mm
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
}
ATLAS_FILE = ("data", "ct_brain_atlas_1mm.nii.gz")


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
@functools.lru_cache(maxsize=1)
def brain_base():
    """The atlas prepared once per process: dict of torch channels on a padded 1 mm canonical grid."""
    from ..io import read_volume
    from ..preprocessing import to_canonical
    atlas = to_canonical(read_volume(resource_path(*ATLAS_FILE)))
    a = atlas.array.astype(np.float32)
    mask = ndi.binary_fill_holes(a != 0)
    labels, count = ndi.label(mask)
    mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    pad = 26
    ks, js, is_ = (np.flatnonzero(mask.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    lo = np.array([ks[0], js[0], is_[0]]) - pad
    hi = np.array([ks[-1], js[-1], is_[-1]]) + pad + 1
    before, after = np.maximum(-lo, 0), np.maximum(hi - a.shape, 0)
    crop = tuple(slice(max(l, 0), min(h, s)) for l, h, s in zip(lo, hi, a.shape))
    a = np.pad(a[crop], list(zip(before, after)))
    mask = np.pad(mask[crop], list(zip(before, after)))
    a_slab = ndi.uniform_filter1d(a, size=5, axis=0)             # 5 mm slab average
    territories = territory_map(mask)
    parenchyma = mask & (ndi.uniform_filter(a, size=3) > 15.0)   # brain tissue, not CSF
    # mm outside the brain; computed at 2 mm and interpolated (within ~1 mm; 8x faster)
    coarse = ndi.distance_transform_edt(~mask[::2, ::2, ::2], sampling=2.0).astype(np.float32)
    distance = F.interpolate(torch.from_numpy(coarse)[None, None], size=a.shape, mode="trilinear",
                             align_corners=True)[0, 0].numpy()
    distance = np.where(mask, 0.0, np.maximum(distance, 0.5)).astype(np.float32)
    centre = np.array([(is_[0] + is_[-1]) / 2, (js[0] + js[-1]) / 2, (ks[0] + ks[-1]) / 2]) - lo[::-1]
    return {
        "linear": torch.from_numpy(np.stack([a_slab, distance]).astype(np.float32)),
        "labels": torch.from_numpy((territories + 16 * parenchyma)[None].astype(np.float32)),
        "centre_ijk": tuple(float(c) for c in centre),
        "shape": a.shape,
    }


def make_brain_case(rng, label: int, size_groups=(None, None), return_clean: bool = False,
                    contrast_hu=None, radius_mm=None) -> dict:
    """One synthetic head CT. ``label``: 0 none, 1 left, 2 right, 3 both. Returns arrays + metadata.

    ``contrast_hu`` ([lo, hi] HU) replaces the standard extra lesion contrast ``LESION_EXTRA_CONTRAST_HU``;
    ``radius_mm`` ([lo, hi]) the size group's radius range (the group is then the one the radius falls in).

    Arrays are canonical LPS-axial ``[k, j, i]`` (identity direction): ``image`` int16 HU, ``mask``
    uint8 (territory label of each lesion voxel), ``regions`` uint8 (territory labels).
    """
    base = brain_base()
    K, J, I = BRAIN_GRID
    grid = _warp_grid(rng, BRAIN_GRID, BRAIN_SPACING, base["shape"], (1.0, 1.0, 1.0), base["centre_ijk"],
                      rot_deg=(4, 4, 7), scale_range=(0.92, 1.08), shift_mm=(6, 6, 6), disp_mm=2.5)
    hu_brain, dist = _sample(base["linear"], grid, "bilinear").numpy()   # base is padded: border = air
    code = _sample(base["labels"], grid, "nearest", padding="zeros")[0].numpy().astype(np.uint8)
    terr, paren = code % 16, code >= 16

    # intensities
    smooth = _coarse_field(rng, 3, (4, 4, 4), BRAIN_GRID, (2.0, 1.5, 1.0)).numpy()
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-3, 3)
    brain = 30.0 + (hu_brain - 30.0) * gain + offset + smooth[0]
    csf_mm = rng.uniform(0.5, 2.5)
    bone_mm = np.clip(rng.uniform(4.0, 8.0) + smooth[1], 2.5, 10.0)
    scalp_mm = rng.uniform(3.0, 7.0)
    table, diploe = rng.uniform(1600, 1900), rng.uniform(700, 900)
    x = np.clip((dist - csf_mm) / bone_mm, 0, 1)
    bone = diploe + (table - diploe) * (2 * x - 1) ** 2
    hu = np.full(BRAIN_GRID, -1000.0, dtype=np.float32)
    hu = np.where(dist < csf_mm + bone_mm + scalp_mm, rng.uniform(25, 45) + 2 * smooth[2], hu)
    hu = np.where(dist < csf_mm + bone_mm, bone, hu)
    hu = np.where(dist < csf_mm, rng.uniform(4, 10), hu)
    hu = np.where(dist < 0.5, brain, hu).astype(np.float32)
    clean = hu.copy() if return_clean else None

    # lesions
    noise_sd = rng.uniform(*BRAIN_NOISE_HU)
    sides = {0: [], 1: ["left"], 2: ["right"], 3: ["left", "right"]}[label]
    mask = np.zeros(BRAIN_GRID, dtype=np.uint8)
    lesions = []
    for n_lesion, side in enumerate(sides):
        group = size_groups[n_lesion] or SIZE_GROUPS[rng.integers(4)]
        choices = list(territories_of_side(side))
        rng.shuffle(choices)
        for territory in choices:      # a territory present in this head's slab (always, in practice)
            candidates = np.flatnonzero((terr == TERRITORY_LABELS[territory]) & paren & (mask == 0))
            if len(candidates):
                break
        else:
            raise ACATError(f"no parenchyma of the {side} hemisphere in the generated head")
        centre = np.unravel_index(candidates[rng.integers(len(candidates))], BRAIN_GRID)
        if radius_mm is None:
            radius = rng.uniform(*SIZE_RADII_MM[group])
        else:
            radius = rng.uniform(*radius_mm)
            group = next((g for g in SIZE_GROUPS if radius < SIZE_RADII_MM[g][1]), SIZE_GROUPS[-1])
        box, f = _blob(rng, BRAIN_GRID, centre, radius / np.asarray(BRAIN_SPACING[::-1]))
        inside = (f < 1) & (terr[box] == TERRITORY_LABELS[territory]) & paren[box] & (mask[box] == 0)
        components, _ = ndi.label(inside)
        local = tuple(int(c - s.start) for c, s in zip(centre, box))
        inside = components == components[local]
        contrast = noise_sd + rng.uniform(*(contrast_hu or LESION_EXTRA_CONTRAST_HU))
        profile = np.clip((1.0 - f) / 0.25, 0.0, 1.0)
        hu[box] -= np.where(inside, contrast * profile, 0.0).astype(np.float32)
        mask[box][inside] = TERRITORY_LABELS[territory]
        lesions.append({"territory": territory, "side": side, "size_group": group,
                        "radius_mm": round(float(radius), 2), "contrast_hu": round(float(contrast), 2),
                        "voxels": int(inside.sum()), "centre_kji": [int(c) for c in centre]})
    noiseless = hu.copy() if return_clean else None
    hu += _correlated_noise(rng, BRAIN_GRID, noise_sd)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    case = {"image": image, "mask": mask, "regions": terr, "lesions": lesions, "noise_hu": float(noise_sd),
            "spacing": BRAIN_SPACING, "direction": np.eye(3),
            "origin": (-(I - 1) / 2 * BRAIN_SPACING[0], -(J - 1) / 2 * BRAIN_SPACING[1], -80.0)}
    if return_clean:   # for tests: the head before lesions and before noise
        case["clean"], case["noiseless"] = clean, noiseless
    return case


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
    wrong_task = [k for k in (("involvement",) if task == "brain" else
                              ("size_groups", "contrast_hu", "radius_mm"))
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
                               options["radius_mm"])
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
    class_names = BRAIN_CLASSES if task == "brain" else LUNG_CLASSES
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
        else:
            item["involvement"] = round(case["involvement"], 4)
            item["size_group"] = lung_size_group(case["involvement"]) if label else ""
            item["territory"] = ""
        items.append(item)
        if progress is not None:
            progress(index + 1, n)
    datalist = {
        "name": f"ACAT-Synth {task}", "task": task, "seed": seed, "n": n,
        "description": "synthetic lesions on real CT anatomy (ACATCore.data.synth)",
        "options": {k: v for k, v in options.items() if v is not None},
        "class_names": list(class_names),
        "region_names": list(TERRITORIES) if task == "brain" else ["right lung", "left lung"],
        "label_counts": {name: labels.count(i) for i, name in enumerate(class_names)},
        **stratified_split(items, seed=seed),
    }
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return datalist


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
    args = parser.parse_args(argv)
    options = {"size_groups": args.size_groups, "contrast_hu": args.contrast,
               "radius_mm": args.radius, "involvement": args.involvement}
    options = {k: v for k, v in options.items() if v is not None}
    try:
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
