"""The older brain of ACAT-Synth heads (synth_aging): atrophy widens the CSF spaces, leukoaraiosis darkens the
white matter around the ventricles on both sides, lesions stay in parenchyma, varied heads draw both; the bench-only
factors widen one lateral ventricle alone and calcify the choroid plexus of both."""
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from ACATCore.brain_extraction import extract_brain
from ACATCore.data import synth
from ACATCore.data.synth_aging import ATROPHY_MM, GROWN_CSF_HU, LEUKO_HU, LEUKO_REACH_MM
from ACATCore.data.territories import TERRITORY_LABELS, territories_of_side
from ACATCore.preprocessing import prepare
from ACATCore.volume import Volume

REPO = Path(__file__).resolve().parents[1]

COMMON = {"seed": 5, "index": 0, "return_clean": True}


def _head(label=0, **aging):
    acquisition = {"atrophy_mm": 0.0, "leukoaraiosis_hu": 0.0, "slice_mm": 2.0, **aging}
    return synth.make_case("brain", label=label, **COMMON, options={"acquisition": acquisition})


@pytest.fixture(scope="module")
def young():
    return _head()


def test_atrophy_widens_the_csf_inside_the_brain_only(young):
    csf = []
    for mm in (0.0, 3.0, 6.0):
        case = young if mm == 0 else _head(atrophy_mm=mm)
        brain = case["brain"]
        np.testing.assert_array_equal(brain, young["brain"])                 # the same head, the same brain
        np.testing.assert_allclose(case["clean"][~brain], young["clean"][~brain], atol=1e-3)
        csf.append(int((case["clean"][brain] < 15).sum()))
        assert case["acquisition"]["atrophy_mm"] == mm
    assert csf[0] < csf[1] < csf[2] and csf[2] > 2 * csf[0], csf
    older = _head(atrophy_mm=6.0)
    assert np.all(older["clean"] <= young["clean"] + 1e-3)                     # CSF added, never tissue


def test_leukoaraiosis_darkens_white_matter_near_the_ventricles_on_both_sides(young):
    case = _head(leukoaraiosis_hu=10.0)
    change = case["clean"] - young["clean"]
    assert change.max() <= 1e-3 and change.min() < -8.0                        # x grey-white gain 0.85-1.15
    darker = change < -1.0
    assert darker.sum() > 1000 and not (darker & ~young["brain"]).any()
    # near the ventricles: every darkened voxel lies within the reach of CSF deep in the brain
    spacing = case["spacing"][::-1]
    deep = ndi.distance_transform_edt(young["brain"], sampling=spacing) > 12.0
    ventricles = deep & (young["clean"] < 15)
    reach = ndi.distance_transform_edt(~ventricles, sampling=spacing)
    assert np.percentile(reach[darker], 95) <= LEUKO_REACH_MM + 3.0
    # both hemispheres alike (each side's territories)
    left, right = (change[np.isin(young["regions"], [TERRITORY_LABELS[t] for t in territories_of_side(side)])].sum()
                   for side in ("left", "right"))
    assert 0.8 < left / right < 1.25, (left, right)


def test_lesions_of_an_atrophied_brain_lie_in_parenchyma():
    for label in (1, 2, 3):
        case = _head(label=label, atrophy_mm=6.0)
        lesion = case["mask"] > 0
        assert lesion.sum() > 20
        assert np.mean(case["clean"][lesion] > GROWN_CSF_HU + 6) > 0.95


def test_varied_heads_draw_their_age_and_plain_heads_stay_young():
    drawn = [synth.make_case("brain", seed=12, index=i, label=0)["acquisition"] for i in range(10)]
    atrophy = [a["atrophy_mm"] for a in drawn]
    leuko = [a["leukoaraiosis_hu"] for a in drawn]
    assert all(ATROPHY_MM[0] <= a <= ATROPHY_MM[1] for a in atrophy) and np.ptp(atrophy) > 2.0
    assert all(v == 0 or LEUKO_HU[0] <= v <= LEUKO_HU[1] for v in leuko)
    assert 0 < sum(v > 0 for v in leuko) < 10
    # fixing one aging factor leaves the other and every acquisition factor as drawn
    fixed = synth.make_case("brain", seed=12, index=0, label=0, options={"acquisition": {"atrophy_mm": 5.0}})
    assert fixed["acquisition"] == {**drawn[0], "atrophy_mm": 5.0}
    plain = synth.make_case("brain", seed=12, index=0, label=0, options={"variety": False})["acquisition"]
    assert plain["atrophy_mm"] == 0 and plain["leukoaraiosis_hu"] == 0


def _side_sum(case, values, side):
    return values[np.isin(case["regions"], [TERRITORY_LABELS[t] for t in territories_of_side(side)])].sum()


@pytest.mark.parametrize("side,sign", [("left", 1.0), ("right", -1.0)])
def test_asymmetric_ventricles_widen_one_side_only(young, side, sign):
    case = _head(ventricle_asym_mm=4.0 * sign)
    assert case["acquisition"]["ventricle_asym_mm"] == 4.0 * sign
    change = case["clean"] - young["clean"]
    assert change.max() <= 1e-3                                                # CSF added, never tissue
    grown = (change < -5.0) & (case["clean"] < 15)
    other = "right" if side == "left" else "left"
    assert _side_sum(case, grown, side) > 500 and _side_sum(case, grown, other) == 0
    # deep in the brain: around the ventricles, not at the brain's rim
    spacing = case["spacing"][::-1]
    depth = ndi.distance_transform_edt(young["brain"], sampling=spacing)
    assert np.percentile(depth[grown], 5) > 8.0


def test_ventricle_asymmetry_option_draws_a_side_and_a_width_for_every_varied_head():
    drawn = [synth.make_case("brain", seed=12, index=i, label=0)["acquisition"] for i in range(8)]
    options = {"ventricle_asym_mm": [2.0, 6.0]}
    asym = [synth.make_case("brain", seed=12, index=i, label=0, options=options)["acquisition"] for i in range(8)]
    widths = [a["ventricle_asym_mm"] for a in asym]
    assert all(2.0 <= abs(w) <= 6.0 for w in widths) and min(widths) < 0 < max(widths), widths   # both sides
    for a, d in zip(asym, drawn):                # every other factor as drawn without the option
        assert a == {**d, "ventricle_asym_mm": a["ventricle_asym_mm"]}
    # the drawn asymmetry is the bench's fixed one: the same head, voxel for voxel
    fixed = synth.make_case("brain", seed=12, index=0, label=1,
                            options={"acquisition": {"ventricle_asym_mm": widths[0]}})
    with_option = synth.make_case("brain", seed=12, index=0, label=1, options=options)
    np.testing.assert_array_equal(with_option["image"], fixed["image"])
    assert not np.array_equal(with_option["image"], synth.make_case("brain", seed=12, index=0, label=1)["image"])


def test_calcified_choroid_plexus_is_bright_on_both_sides_deep_in_the_brain(young):
    case = _head(calcification_hu=300.0)
    assert case["acquisition"]["calcification_hu"] == 300.0
    change = case["clean"] - young["clean"]
    bright = change > 100.0
    assert change.min() >= -1e-3 and case["clean"][bright].max() > 200.0      # x grey-white gain 0.85-1.15
    for side in ("left", "right"):                                            # one glomus each side
        assert 10 < _side_sum(case, bright, side) < 400
    spacing = case["spacing"][::-1]
    depth = ndi.distance_transform_edt(young["brain"], sampling=spacing)
    assert depth[bright].min() > 10.0
    # brain extraction leaves its voxels above 190 HU out (as it does the atlas' own calcifications), yet the brain
    # model's input is brighter there over many more pixels than it is darker (where a whole slab is left out)
    assert not extract_brain(case["image"], case["spacing"]).mask[case["image"] > 190].any()
    pre = json.loads((REPO / "Resources" / "models" / "brain" / "classifier.json").read_text())["preprocessing"]
    x = [prepare(Volume(c["image"], c["spacing"], c["origin"], c["direction"]), pre).tensor for c in (young, case)]
    change = (x[1] - x[0]).numpy()
    assert (change > 0.05).sum() > 4 * (change < -0.05).sum() and change.max() > 0.2, (change.min(), change.max())
