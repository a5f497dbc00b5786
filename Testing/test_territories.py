"""Vascular territories on a rotated brain: analyze's territories follow the brain's own axes."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ACATCore.data.territories import brain_frame, territory_map


def ellipsoid_brain(shape=(48, 90, 76), radii=(20.0, 40.0, 32.0)) -> np.ndarray:
    """An upright brain-like ellipsoid [k, j, i] (longest anterior-posterior, 1 mm voxels)."""
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    c = [(n - 1) / 2 for n in shape]
    return ((k - c[0]) / radii[0]) ** 2 + ((j - c[1]) / radii[1]) ** 2 + ((i - c[2]) / radii[2]) ** 2 <= 1


def yawed(array: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate every axial slice (the (j, i) plane) by `degrees`, nearest neighbour."""
    return ndimage.rotate(array, degrees, axes=(1, 2), reshape=False, order=0)


def test_an_upright_brain_gets_the_same_territories_with_or_without_spacing():
    mask = ellipsoid_brain()
    centre, rotation = brain_frame(mask, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(rotation, np.eye(3), atol=0.01)   # within half a degree
    assert (territory_map(mask, spacing=(1.0, 1.0, 1.0)) == territory_map(mask)).mean() > 0.99


def test_a_yawed_brain_keeps_its_territories():
    mask = ellipsoid_brain()
    truth = yawed(territory_map(mask), 14.0)          # the upright territories, turned with the head
    rotated = yawed(mask.astype(np.uint8), 14.0) > 0
    _, rotation = brain_frame(rotated, (1.0, 1.0, 1.0))
    yaw = np.degrees(np.arctan2(rotation[2, 1], rotation[1, 1]))
    assert abs(abs(yaw) - 14.0) < 2.0                 # the yaw is found
    inside = rotated & (truth > 0)
    image_axes = (territory_map(rotated)[inside] == truth[inside]).mean()
    brain_axes = (territory_map(rotated, spacing=(1.0, 1.0, 1.0))[inside] == truth[inside]).mean()
    assert brain_axes > 0.95 and brain_axes > image_axes + 0.05


def test_anisotropic_voxels_are_measured_in_mm():
    mask = ellipsoid_brain()
    thick = mask[::4]                                  # 4 mm slices: the same brain, fewer slices
    _, rotation = brain_frame(thick, (1.0, 1.0, 4.0))
    np.testing.assert_allclose(rotation, np.eye(3), atol=0.05)


def test_the_peaks_territory_is_the_maps_label_at_the_peak():
    """analyze names the peak's territory from that one point (not the whole map): the same answer as the
    full label map at that voxel, for every voxel (brain or not) of a yawed, tilted head with thick slices."""
    from ACATCore.data.territories import TERRITORIES, labels_at
    mask = ndimage.rotate(yawed(ellipsoid_brain().astype(np.uint8), 12.0), 8.0, axes=(0, 1), reshape=False,
                          order=0)[::3] > 0
    spacing = (1.0, 1.0, 3.0)
    full = territory_map(mask, spacing=spacing)
    points = np.argwhere(np.ones(mask.shape, bool))
    at_points = labels_at(mask, spacing, points)
    np.testing.assert_array_equal(at_points, full[tuple(points.T)])
    assert set(np.unique(at_points[mask[tuple(points.T)]])) >= set(range(1, len(TERRITORIES) + 1))  # all six
    assert not at_points[~mask[tuple(points.T)]].any()                          # outside the brain: 0
