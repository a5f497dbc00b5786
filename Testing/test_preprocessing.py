"""Preprocessing: orientation, slice sampling, window/resize/midline, and the inverse mapping."""
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ACATCore.brain_extraction import BrainMask
from ACATCore.errors import ConfigError
from ACATCore.preprocessing import (SliceMerger, _sampled_stack, check_spec, coverage_offsets, estimate_midline,
                                    from_canonical, prepare, sample_slices, slab_ranges, to_canonical, window)
from ACATCore.volume import Volume

SPEC = {"window": [-1000, 1000], "slices": 7, "size": [48, 40], "orientation": "LPS-axial", "midline": None}
ROT = Rotation.from_euler("xyz", [12, -18, 25], degrees=True).as_matrix()
SAGITTAL = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], dtype=float)   # i -> S, j -> L, k -> A
DIRECTIONS = {
    "lps": np.eye(3),
    "ras": np.diag([-1.0, -1.0, 1.0]),
    "oblique": ROT,
    "oblique_sagittal": ROT @ SAGITTAL,
    "oblique_ras": np.diag([-1.0, -1.0, 1.0]) @ ROT,
}


def linear_volume(direction, shape=(23, 30, 37), spacing=(0.8, 1.1, 2.5), coef=(3.0, -2.0, 1.5)):
    """A volume whose value is a linear function of the LPS position (so resampling is exact)."""
    v = Volume(np.zeros(shape, np.float32), spacing, (5.0, -7.0, 11.0), direction)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    v.array = (v.index_to_physical(np.stack([i, j, k], -1)) @ np.asarray(coef)).astype(np.float32)
    return v


def test_slice_sampling_is_centred_evenly_spaced_and_covers_with_offsets():
    ks = sample_slices(100, 11)
    assert len(ks) == 11 and ks.min() >= 0 and ks.max() <= 99
    np.testing.assert_allclose(ks + ks[::-1], 99, atol=1)          # centred
    assert np.ptp(np.diff(ks)) <= 1                                # evenly spaced
    assert (np.diff(ks) > 0).all()
    for K, S in [(100, 11), (34, 11), (11, 11), (5, 11), (257, 7)]:
        offsets = coverage_offsets(K, S)
        seen = np.unique(np.concatenate([sample_slices(K, S, o) for o in offsets]))
        assert seen.tolist() == list(range(K))
        assert all(0 <= o < 1 for o in offsets)
    with pytest.raises(ConfigError):
        sample_slices(10, 3, offset=1.0)


def test_fewer_slices_than_asked_repeat_with_a_warning():
    v = linear_volume(np.eye(3), shape=(5, 20, 20))
    with pytest.warns(UserWarning, match="fewer than"):
        p = prepare(v, SPEC)
    assert p.tensor.shape == (7, 1, 48, 40)
    assert sorted(set(p.slice_indices.tolist())) == [0, 1, 2, 3, 4]
    assert p.warnings and "used twice" in p.warnings[0]
    np.testing.assert_array_equal(p.slices_seen(), [0, 1, 2, 3, 4])


def test_slabs_of_single_slices_are_not_warned_until_fewer_than_half_the_slabs():
    """A thick-slice head gives a many-slab model one slice a slab (some twice): what it was trained on,
    so not warned; fewer than half (slices used three or more times) is."""
    spec = {**SPEC, "slab": True}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = prepare(linear_volume(np.eye(3), shape=(5, 20, 20)), {**spec, "slices": 9})
    assert p.warnings == [] and (p.slabs[:, 1] - p.slabs[:, 0] == 1).all()
    assert sorted(set(p.slabs[:, 0].tolist())) == [0, 1, 2, 3, 4]
    with pytest.warns(UserWarning, match="fewer than half the model's 11 slabs"):
        p = prepare(linear_volume(np.eye(3), shape=(5, 20, 20)), {**spec, "slices": 11})
    assert "3+ times" in p.warnings[0]


def test_output_contract_and_window():
    p = prepare(linear_volume(np.eye(3)), SPEC)
    assert isinstance(p.tensor, torch.Tensor) and p.tensor.dtype == torch.float32
    assert p.tensor.shape == (7, 1, 48, 40)
    assert 0.0 <= float(p.tensor.min()) and float(p.tensor.max()) <= 1.0
    assert p.slice_indices.shape == (7,)
    np.testing.assert_allclose(window([-2000, -1000, 0, 1000, 3000], -1000, 1000), [0, 0, 0.5, 1, 1])


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_forward_samples_the_right_physical_points(name):
    v = linear_volume(DIRECTIONS[name])
    p = prepare(v, SPEC)
    s, h, w = np.meshgrid(np.arange(7), np.arange(48), np.arange(40), indexing="ij")
    expected = window(p.model_to_physical(s, h, w) @ np.array([3.0, -2.0, 1.5]), -1000, 1000)
    got = p.tensor[:, 0].numpy()
    np.testing.assert_allclose(got[:, 2:-2, 2:-2], expected[:, 2:-2, 2:-2], atol=1e-5)


def test_canonical_orientation_rows_anterior_columns_patient_right_first():
    # the same physical head stored LPS and RAS: identical model input; patient right in w < W/2
    lps = Volume(np.full((8, 30, 30), -1000.0, np.float32), (1, 1, 3), (0, 0, 0), np.eye(3))
    lps.array[:, 5:10, 3:8] = 1000          # anterior (small j) and patient right (small i: x < 0 side)
    ras_array = lps.array[:, ::-1, ::-1].copy()
    ras_origin = lps.index_to_physical([29, 29, 0])
    ras = Volume(ras_array, (1, 1, 3), ras_origin, np.diag([-1.0, -1.0, 1.0]))
    p1, p2 = prepare(lps, SPEC), prepare(ras, SPEC)
    torch.testing.assert_close(p1.tensor, p2.tensor)
    bright = np.argwhere(p1.tensor[3, 0].numpy() > 0.5)
    assert bright[:, 1].max() < 20 and bright[:, 0].max() < 24      # right side, anterior half
    canonical = to_canonical(ras)
    np.testing.assert_allclose(canonical.direction, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(canonical.origin, lps.origin, atol=1e-9)


@pytest.mark.parametrize("name", list(DIRECTIONS))
@pytest.mark.parametrize("midline", [None, "symmetry"])
def test_inverse_mapping_lands_within_one_voxel(name, midline):
    v = linear_volume(DIRECTIONS[name])
    p = prepare(v, {**SPEC, "midline": midline})
    rng = np.random.default_rng(0)
    for _ in range(4):
        s, h, w = int(rng.integers(7)), int(rng.integers(6, 42)), int(rng.integers(6, 34))
        shift = p.midline["shift_px"]
        if not 0 <= w - shift < 40:
            continue
        m = np.zeros((7, 48, 40), np.float32)
        m[s, h, w] = 1.0
        back = p.to_input_grid(m)
        assert back.array.shape == v.array.shape and back.array.dtype == np.float32
        target = v.physical_to_index(p.model_to_physical(s, h, w))         # continuous (i, j, k)
        # look at the input slice this model slice was sampled from
        axis = p.slice_axis
        plane = np.take(back.array, p.slice_indices[s], axis=axis)
        peak = list(np.unravel_index(np.argmax(plane), plane.shape))
        peak.insert(axis, p.slice_indices[s])
        peak_ijk = np.asarray(peak[::-1], dtype=float)
        assert np.abs(peak_ijk - target).max() <= 1.0, (peak_ijk, target)


def test_inverse_gives_every_slice_the_nearest_sampled_slice():
    v = linear_volume(np.eye(3), shape=(21, 20, 20))
    p = prepare(v, SPEC)
    m = np.broadcast_to(np.arange(7, dtype=np.float32)[:, None, None], (7, 48, 40))
    back = p.to_input_grid(m).array[:, 10, 10]
    for k in range(21):
        nearest = np.abs(p.slice_indices - k)
        assert back[k] == pytest.approx(np.mean(np.flatnonzero(nearest == nearest.min())), abs=1e-5)


def test_symmetry_midline_finds_an_off_centre_head():
    W = 64
    yy, xx = np.mgrid[:48, :W]
    head = (((xx - 38.0) / 16) ** 2 + ((yy - 24.0) / 20) ** 2 < 1).astype(np.float32)   # centred at column 38
    head += 0.5 * (((xx - 38.0) / 6) ** 2 + ((yy - 14.0) / 4) ** 2 < 1)
    assert estimate_midline(head[None]) == pytest.approx(38.0, abs=0.6)
    array = np.where(np.repeat(head[None], 9, 0) > 0, 40.0, -1000.0).astype(np.float32)
    p = prepare(Volume(array), {**SPEC, "size": [48, W], "midline": "symmetry"})
    assert p.midline["method"] == "symmetry"
    assert abs(p.midline["shift_px"] - ((W - 1) / 2 - 38.0)) <= 0.5      # 38 -> 31.5: 6 or 7 columns left
    cols = np.flatnonzero(p.tensor[4, 0].numpy().max(axis=0) > 0.5)
    assert abs((cols[0] + cols[-1]) / 2 - (W - 1) / 2) <= 1.0
    assert prepare(Volume(array), {**SPEC, "size": [48, W], "midline": "center"}).midline["shift_px"] == 0


def test_to_model_grid_samples_a_mask_like_the_image():
    v = linear_volume(ROT)
    mask = v.with_array((v.array > 0).astype(np.uint8))
    p = prepare(v, SPEC)
    m = p.to_model_grid(mask)
    assert m.shape == (7, 48, 40) and set(np.unique(m)) <= {0.0, 1.0}
    image = p.tensor[:, 0].numpy()
    agree = ((image > 0.5) == (m > 0.5))[:, 2:-2, 2:-2].mean()
    assert agree > 0.97


def test_bad_spec_is_a_config_error():
    v = linear_volume(np.eye(3))
    for bad in ({**SPEC, "window": [100, 0]}, {**SPEC, "midline": "left"}, {**SPEC, "orientation": "RAS"},
                {"slices": 3}, {**SPEC, "slab": "yes"}, {**SPEC, "lung_extraction": "yes"},
                {**SPEC, "lung_extraction": True, "brain_extraction": True}, {**SPEC, "lung_box": 1},
                {**SPEC, "lung_box": True, "brain_extraction": True}):
        with pytest.raises(ConfigError):
            prepare(v, bad)


def test_lung_extraction_keeps_the_ct_around_the_lungs_only():
    from ACATCore.data import synth
    from ACATCore.lung_mask import find_lungs, input_region
    chest = synth.lung_base()["volume"]                                  # slicerio's real chest CT
    spec = {**SPEC, "window": [-1000, 400], "slices": 11, "size": [64, 64]}
    plain, lungs_only = prepare(chest, spec), prepare(chest, {**spec, "lung_extraction": True})
    assert check_spec({**spec, "lung_extraction": True})["lung_extraction"] is True
    assert "lung_extraction" not in check_spec(spec)                    # older cards keep their exact spec
    canonical = to_canonical(chest)
    np.testing.assert_array_equal(lungs_only.lungs, find_lungs(canonical.array, canonical.spacing))
    region = from_canonical(input_region(lungs_only.lungs, canonical.spacing), lungs_only.perm, lungs_only.flip)
    keep = lungs_only.to_model_grid(chest.with_array(region.astype(np.float32)), mode="nearest") > 0
    a, b = plain.tensor[:, 0].numpy(), lungs_only.tensor[:, 0].numpy()
    inner = ndimage.binary_erosion(keep, structure=np.ones((1, 5, 5), bool))   # away from the resized edge
    np.testing.assert_allclose(b[inner], a[inner])
    assert (b[~ndimage.binary_dilation(keep, structure=np.ones((1, 3, 3), bool))] == 0).all()
    assert (a[~keep] > 0.5).mean() > 0.2                                 # the body that was there is gone
    assert plain.lungs is None


def test_the_lung_box_reads_the_same_lungs_whatever_the_field_of_view_and_coverage():
    """A wider field of view (the chest padded with air) or a scan that reaches far below the lungs (slices of
    abdomen added) moves and shrinks the lungs in the plain input, not in the lung box's."""
    from ACATCore.data import synth
    from ACATCore.errors import InputError
    from ACATCore.lung_mask import find_lungs
    chest = synth.lung_base()["volume"]                                  # slicerio's real chest CT
    spec = {**SPEC, "window": [-1000, 400], "slices": 11, "size": [64, 64]}
    a = np.asarray(chest.array)
    body = ndimage.binary_fill_holes(a[0] > -500)                     # an abdomen: the body, no air inside
    abdomen = np.repeat(np.where(body, 40, -1024)[None], 12, axis=0).astype(a.dtype)
    wide, long = (Volume(x, chest.spacing, chest.origin, chest.direction)
                  for x in (np.pad(a, ((0, 0), (20, 20), (20, 20)), constant_values=-1024),
                            np.concatenate([abdomen, a])))             # the first array slice is the inferior one
    canonical = to_canonical(chest)
    lungs = find_lungs(canonical.array, canonical.spacing)
    boxed = prepare(chest, {**spec, "lung_box": True})
    assert check_spec({**spec, "lung_box": True})["lung_box"] is True and "lung_box" not in check_spec(spec)
    ks = np.flatnonzero(lungs.any(axis=(1, 2)))
    assert boxed.canonical_indices.min() >= ks[0] and boxed.canonical_indices.max() <= ks[-1]
    j0, j1, i0, i1 = boxed.box
    js, i_s = np.flatnonzero(lungs.any(axis=(0, 2))), np.flatnonzero(lungs.any(axis=(0, 1)))
    assert j0 < js[0] and j1 > js[-1] and i0 < i_s[0] and i1 > i_s[-1]  # both lungs and a margin
    assert (j1 - j0) < 0.95 * a.shape[1]                                 # a crop, not the whole slice
    for shifted in (wide, long):
        plain = prepare(shifted, spec).tensor
        moved = prepare(shifted, {**spec, "lung_box": True})
        assert moved.lungs is not None
        np.testing.assert_allclose(moved.tensor.numpy(), boxed.tensor.numpy(), atol=1e-5)
        assert plain.shape == boxed.tensor.shape and not torch.allclose(plain, prepare(chest, spec).tensor)
    model_map = np.zeros((11, 64, 64), np.float32)
    model_map[5, 32, 32] = 1.0
    back = boxed.to_canonical_grid(model_map)                            # maps go back through the box
    k, j, i = np.unravel_index(np.argmax(back), back.shape)
    assert abs(j - (j0 + j1) / 2) < 3 and abs(i - (i0 + i1) / 2) < 3
    with pytest.raises(InputError, match="no lungs were found"):
        prepare(chest.with_array(np.full_like(a, 40)), {**spec, "lung_box": True})


# ------------------------------------------------------------------------------ slabs
def slice_ramp(shape=(30, 20, 20), direction=np.eye(3)) -> Volume:
    """Every voxel of input slice k (along axis 0) holds 10 * k HU: slab means are easy to know."""
    array = np.broadcast_to(10.0 * np.arange(shape[0], dtype=np.float32)[:, None, None], shape).copy()
    return Volume(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), direction)


def test_slab_ranges_cover_every_slice_in_nearly_equal_runs():
    for K, S in [(100, 11), (30, 7), (11, 11), (257, 7)]:
        r = slab_ranges(K, S)
        assert r[0, 0] == 0 and r[-1, 1] == K and (r[1:, 0] == r[:-1, 1]).all()   # contiguous, all of 0..K-1
        assert np.ptp(r[:, 1] - r[:, 0]) <= 1
    np.testing.assert_array_equal(slab_ranges(5, 7)[:, 1] - slab_ranges(5, 7)[:, 0], 1)   # fewer: one each


def test_a_slab_slice_is_the_mean_of_its_windowed_slices_and_sees_every_slice():
    v = slice_ramp()
    p = prepare(v, {**SPEC, "window": [0, 1000], "slab": True})
    for s, (a, b) in enumerate(p.slabs):
        want = np.mean(10.0 * np.arange(a, b)) / 1000
        np.testing.assert_allclose(p.tensor[s, 0].numpy(), want, atol=1e-6)
    np.testing.assert_array_equal(p.slices_seen(), np.arange(30))
    point = prepare(v, {**SPEC, "window": [0, 1000]})
    assert len(point.slices_seen()) == 7 and p.offset == 0.0


def test_a_brain_slab_mean_averages_only_the_slices_in_which_the_pixel_is_brain():
    array = np.full((6, 4, 4), 40.0, np.float32)        # 40 HU everywhere: 0.5 in the window [0, 80]
    mask = np.zeros((6, 4, 4), bool)
    mask[:, :, :2] = True                               # columns 0-1: brain in every slice
    mask[0, :, 2:] = True                               # columns 2-3: brain in slice 0 only
    brain = BrainMask(mask, (0, 5), (0, 3, 0, 3), 1.0)
    slabs = np.array([[0, 3], [3, 6]])
    every = _sampled_stack(array, 0.0, 80.0, None, slabs, brain.mask, "all")
    only = _sampled_stack(array, 0.0, 80.0, None, slabs, brain.mask, "brain")
    np.testing.assert_allclose(every[0, :, :2], 0.5)
    np.testing.assert_allclose(every[0, :, 2:], 0.5 / 3, rtol=1e-6)     # darkened by 2 non-brain slices
    np.testing.assert_allclose(only[0], 0.5)                           # the brain's own value
    np.testing.assert_allclose(only[1, :, :2], 0.5)
    np.testing.assert_array_equal(only[1, :, 2:], 0.0)                 # brain in none of its slices


def test_slab_mean_is_checked_and_old_specs_stay_as_they_were():
    brain_spec = {**SPEC, "brain_extraction": True, "slab": True}
    assert "slab_mean" not in check_spec(brain_spec)                   # cards without the key: unchanged
    assert check_spec({**brain_spec, "slab_mean": "brain"})["slab_mean"] == "brain"
    for bad in ({**brain_spec, "slab_mean": "median"}, {**SPEC, "slab": True, "slab_mean": "brain"},
                {**SPEC, "brain_extraction": True, "slab_mean": "brain"}):
        with pytest.raises(ConfigError, match="slab_mean"):
            check_spec(bad)


def test_slab_members_follow_a_flipped_slice_axis():
    flipped = np.diag([1.0, 1.0, -1.0])          # input slice 0 is the most superior
    p = prepare(slice_ramp(direction=flipped), {**SPEC, "window": [0, 1000], "slab": True})
    for s, members in enumerate(p.members()):
        want = np.mean(10.0 * members) / 1000
        np.testing.assert_allclose(p.tensor[s, 0].numpy(), want, atol=1e-6)


def test_slab_maps_go_back_to_every_slice_of_their_slab():
    v = slice_ramp()
    p = prepare(v, {**SPEC, "slab": True})
    m = np.broadcast_to(np.arange(7, dtype=np.float32)[:, None, None], (7, 48, 40))
    back = p.to_input_grid(m).array[:, 10, 10]
    for s, (a, b) in enumerate(p.slabs):
        np.testing.assert_allclose(back[a:b], s)
    merger = SliceMerger(v, [p])
    merger.add_slice_values("w", 0, np.arange(7.0))
    values = merger.slice_values_of("w")
    for s, (a, b) in enumerate(p.slabs):
        np.testing.assert_allclose(values[a:b], s)


def test_a_lesion_on_one_slice_of_a_slab_shows_in_its_max_not_its_middle():
    v = slice_ramp()
    p = prepare(v, {**SPEC, "slab": True})
    a, b = p.slabs[3]
    mask = np.zeros(v.shape, np.uint8)
    mask[a, 5:15, 5:15] = 1                       # the slab's first slice, not its middle
    mask = v.with_array(mask)
    assert p.to_model_grid(mask, mode="max")[3].max() == 1.0
    assert p.to_model_grid(mask, mode="max").sum(axis=(1, 2)).astype(bool).tolist() == [s == 3 for s in range(7)]
    assert p.to_model_grid(mask, mode="nearest")[3].max() == 0.0
    assert 0.0 < p.to_model_grid(mask, mode="bilinear")[3].max() < 1.0
