"""ACAT-Synth heads (the brain task): the atlas, the drawn factors, the rendering and the lesions.

The benchmark, its options, generation and the command line: :mod:`ACATCore.data.synth`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..errors import ACATError
from ..resources import resource_path
from .synth_aging import AGING_KEYS, age_brain, draw_aging
from .synth_fields import _coarse_field, _sample
from .territories import TERRITORY_LABELS, territories_of_side, territory_map

SIZE_GROUPS = ("IS-1", "IS-2", "IS-3", "IS-4")
SIZE_RADII_MM = {"IS-1": (3.0, 5.0), "IS-2": (5.0, 8.0), "IS-3": (8.0, 12.0), "IS-4": (12.0, 18.0)}
BRAIN_NOISE_HU = (2.5, 4.5)
LESION_EXTRA_CONTRAST_HU = (2.0, 6.0)   # lesion contrast = noise s.d. + this
ATLAS_FILE = ("data", "ct_brain_atlas_1mm.nii.gz")
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
    "atrophy_mm": ("number", 0.0, 10.0), "leukoaraiosis_hu": ("number", 0.0, 20.0),   # synth_aging
    "ventricle_asym_mm": ("number", -10.0, 10.0), "calcification_hu": ("number", 0.0, 1000.0),
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
    """All random factors of one head (see ``BRAIN_FACTORS``), with ``fixed`` (acquisition option) applied;
    the aging factors are 0 unless fixed (``make_brain_case`` draws them for varied heads)."""
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
    f.update(dict.fromkeys(AGING_KEYS, 0.0))
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
        ranges = contrast_hu or LESION_EXTRA_CONTRAST_HU   # several ranges: each lesion's from one of them
        ranges = ranges[rng_lesion.integers(len(ranges))] if np.ndim(ranges) == 2 else ranges
        contrast = noise0 + rng_lesion.uniform(*ranges)
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
           "csf_mm": f["csf_mm"], "atrophy_mm": f["atrophy_mm"], "leukoaraiosis_hu": f["leukoaraiosis_hu"],
           "ventricle_asym_mm": f["ventricle_asym_mm"], "calcification_hu": f["calcification_hu"],
           "cupping_hu": f["cupping_hu"] * f["beam_hardening"],
           "streak_hu": f["streak_hu"] * f["beam_hardening"]}
    return {k: (round(v, 3) if isinstance(v, float) else [round(x, 4) for x in v] if isinstance(v, list)
                and v and isinstance(v[0], float) else v) for k, v in acq.items()}


def make_brain_case(rng, label: int, size_groups=(None, None), return_clean: bool = False,
                    contrast_hu=None, radius_mm=None, variety: bool = True, acquisition=None,
                    ventricle_asym_mm=None) -> dict:
    """One synthetic head CT. ``label``: 0 none, 1 left, 2 right, 3 both. Returns arrays + metadata.

    ``contrast_hu`` ([lo, hi] HU, or a list of such ranges, each lesion's drawn from one of them) replaces the
    standard extra lesion contrast ``LESION_EXTRA_CONTRAST_HU``; ``radius_mm`` ([lo, hi]) the size group's
    radius range (the group is then the one the radius falls in); ``ventricle_asym_mm`` ([lo, hi]) widens one
    lateral ventricle, of a side drawn at random, by so many mm more than the other (varied heads).
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
    seeds = [int(s) for s in rng.integers(0, 2 ** 32, 3)]
    rng_field, rng_lesion, rng_noise = (np.random.default_rng(s) for s in seeds)
    if variety:                                        # an older brain, from its own stream (generator version 4)
        aging = draw_aging(np.random.default_rng([seeds[0], 4]), ventricle_asym_mm)
        f.update({k: v for k, v in aging.items() if k not in (acquisition or {})})
    g = _head_geometry(base, f, variety)
    xs, ys, zs, n_sub = g["xs"], g["ys"], g["zs"], g["n_sub"]
    px, t = g["pixel_mm"], g["slice_mm"]

    # ---- render the sub-slice stack (K * n_sub slices of step mm), then average each slab
    s = _sample_head(base, f, g, rng_field)
    terr_sub = np.repeat(s.code % 16, n_sub, axis=0) if f["ventricle_asym_mm"] or f["calcification_hu"] else None
    csf_added = age_brain(s.hu, s.d, (g["step"], px, px), f, terr_sub)
    _add_tissues(f, g, rng_field, s)
    holder3d = _add_outside(f, g, s)                   # ---- outside the head
    hu, sb, d = _slab(s.hu, n_sub), _slab(s.sb, n_sub), _slab(s.d, n_sub)
    head_w = 1.0 - _slab(s.outside, n_sub)
    holder = _slab(s.outside * holder3d, n_sub) > 0.5 if return_clean else None
    terr, paren = s.code % 16, (s.code >= 16) & (_slab(csf_added, n_sub) < 0.5)
    del s, holder3d, csf_added

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
