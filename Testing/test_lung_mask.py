"""The lung mask that bounds a lung model's maps (ACATCore.lung_mask), on real CT."""
import numpy as np
import pytest
from scipy import ndimage

from ACATCore.data import synth
from ACATCore.errors import InputError
from ACATCore.io import read_volume
from ACATCore.lung_mask import INPUT_MARGIN_MM, find_lungs, input_region, require_lungs
from ACATCore.preprocessing import to_canonical
from ACATCore.resources import resource_path


def test_lungs_of_the_real_chest_ct_match_its_segmentation():
    base = synth.lung_base()                       # slicerio's chest CT and its lung segments
    ct, truth = base["volume"], base["channels"][1:].sum(0).numpy() > 0.5
    lungs = find_lungs(ct.array, ct.spacing)
    assert lungs.shape == truth.shape
    assert (lungs & truth).sum() / truth.sum() > 0.98                      # measured 0.997
    assert 2 * (lungs & truth).sum() / (lungs.sum() + truth.sum()) > 0.95  # measured 0.993
    assert not lungs[:, 0].any() and not lungs[:, :, -1].any()             # the air around the body is out


def test_a_lung_cut_by_a_narrow_field_of_view_is_still_found():
    """Cut at the side so that a lung touches the image's left or right border (a small reconstruction field of
    view): it is still a lung, not the air around the body, which reaches the anterior or posterior border."""
    base = synth.lung_base()
    ct = base["volume"]
    full = find_lungs(ct.array, ct.spacing)
    cols = np.flatnonzero(full.any(axis=(0, 1)))
    for cut in (np.s_[:, :, cols[0] + 3:], np.s_[:, :, :cols[-1] - 3]):
        a = np.asarray(ct.array)[cut]
        lungs = find_lungs(a, ct.spacing)
        assert lungs is not None and (lungs[:, :, 0].any() or lungs[:, :, -1].any())   # it touches the border
        assert (lungs & full[cut]).sum() / full[cut].sum() > 0.98
        assert not lungs[:, 0].any() and not lungs[:, -1].any()


def test_most_of_the_findings_stay_in_the_mask():
    rng = np.random.default_rng(5)
    covered = []
    for _ in range(4):
        case = synth.make_lung_case(rng, 1, involvement=[0.1, 0.3])
        lungs = find_lungs(case["image"], case["spacing"])
        findings = case["mask"] > 0
        covered.append((lungs & findings).sum() / findings.sum())
    # measured 0.90 / 0.59 / 0.70 / 0.75 (mean 0.745 over 12; plain chests 0.84): consolidation against the chest
    # wall has the wall's HU, and ground glass in lungs of a shallow breath reaches -470 HU, near AIR_HU
    assert np.mean(covered) > 0.65 and min(covered) > 0.5, covered


def test_a_head_ct_or_a_non_volume_has_no_lungs():
    head = to_canonical(read_volume(resource_path("data", "ACATSampleHeadCT.nrrd")))
    assert find_lungs(head.array, head.spacing) is None                     # sinuses: far under 200 ml
    assert find_lungs(np.zeros((8, 8)), (1, 1, 1)) is None
    assert find_lungs(np.full((4, 16, 16), -1000, np.int16), (1, 1, 1)) is None   # all air: the border's


@pytest.mark.parametrize("hu", [40, 1000])
def test_no_air_means_no_lungs(hu):
    assert find_lungs(np.full((4, 16, 16), hu, np.int16), (1.0, 1.0, 5.0)) is None


def test_the_input_region_widens_the_lungs_in_plane_by_the_margin():
    base = synth.lung_base()
    ct = base["volume"]                                                  # 3.05 mm pixels, 10 mm slices
    lungs = find_lungs(ct.array, ct.spacing)
    region = input_region(lungs, ct.spacing)                             # 10 mm: 3 pixels each way
    assert region[lungs].all()
    dist = ndimage.distance_transform_edt(~lungs, sampling=(1e6, ct.spacing[1], ct.spacing[0]))
    assert region[(dist > 0) & (dist <= INPUT_MARGIN_MM)].all()          # every voxel within the margin
    assert not region[dist > INPUT_MARGIN_MM * 1.5].any()                # a square's corner: up to 1.41 x
    assert not region[~lungs.any(axis=(1, 2))].any()                     # slices are not mixed


def test_a_ct_without_lungs_is_refused_with_what_to_give_instead():
    head = to_canonical(read_volume(resource_path("data", "ACATSampleHeadCT.nrrd")))
    with pytest.raises(InputError, match="no lungs were found.*chest CT.*brain model"):
        require_lungs(head.array, head.spacing)
