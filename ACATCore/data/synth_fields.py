"""Random smooth fields, warps and blobs shared by the ACAT-Synth brain and lung generators."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi


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
