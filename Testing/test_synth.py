"""ACAT-Synth: determinism, label counts, lesions inside their territory and mask, file outputs."""
import json

import numpy as np
import pytest

from ACATCore.data import synth
from ACATCore.data.datalists import load_datalist
from ACATCore.data.territories import TERRITORIES, TERRITORY_LABELS, territory_map
from ACATCore.io import read_volume, validate_ct


@pytest.fixture(scope="module")
def brain_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("brain")
    return out, synth.generate("brain", n=8, seed=3, out_dir=out)


@pytest.fixture(scope="module")
def lung_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("lung")
    return out, synth.generate("lung", n=6, seed=5, out_dir=out)


def all_items(datalist):
    return datalist["training"] + datalist["validation"] + datalist["test"]


def test_brain_labels_counts_and_datalist(brain_set):
    out, datalist = brain_set
    items = all_items(datalist)
    assert len(items) == 8
    assert datalist["label_counts"] == {"no lesion": 2, "left": 2, "right": 2, "both": 2}
    assert sorted(i["label"] for i in items) == [0, 0, 1, 1, 2, 2, 3, 3]
    on_disk = json.loads((out / "datalist.json").read_text())
    assert on_disk["class_names"] == ["no lesion", "left", "right", "both"]
    assert len(load_datalist(out / "datalist.json", "training")) == len(datalist["training"])
    groups = [les["size_group"] for i in items for les in i["lesions"]]
    assert {"IS-1", "IS-2", "IS-3", "IS-4"} <= set(groups)


def test_every_brain_lesion_lies_inside_its_territory_and_mask(brain_set):
    out, datalist = brain_set
    for item in all_items(datalist):
        image = read_volume(out / item["image"])
        mask = read_volume(out / item["mask"]).array
        regions = read_volume(out / item["regions"]).array
        validate_ct(image)                                   # a plausible head CT in HU
        assert image.array.dtype == np.int16 and image.array.shape == mask.shape == regions.shape
        sides = [les["side"] for les in item["lesions"]]
        assert sides == {0: [], 1: ["left"], 2: ["right"], 3: ["left", "right"]}[item["label"]]
        assert set(np.unique(mask)) == {0} | {TERRITORY_LABELS[les["territory"]] for les in item["lesions"]}
        for lesion in item["lesions"]:
            label = TERRITORY_LABELS[lesion["territory"]]
            assert lesion["territory"].endswith(lesion["side"])
            lesion_voxels = mask == label
            assert lesion_voxels.sum() == lesion["voxels"] > 0
            assert (regions[lesion_voxels] == label).all()          # inside its territory
            assert mask[tuple(lesion["centre_kji"])] == label


def test_brain_lesions_are_hypodense_only_inside_the_mask():
    for label, group in ((3, "IS-1"), (1, "IS-4")):
        case = synth.make_case("brain", seed=11, index=label, label=label, size_group=group, return_clean=True)
        change = case["clean"] - case["noiseless"]
        assert (change >= -1e-4).all()                              # lesions only darken
        assert (case["mask"][change > 1e-4] > 0).all()              # ... and only inside the mask
        for lesion in case["lesions"]:
            inside = case["mask"] == TERRITORY_LABELS[lesion["territory"]]
            assert change[inside].max() == pytest.approx(lesion["contrast_hu"], abs=0.01)
            # the smallest lesions are a few HU above the noise
            assert case["noise_hu"] + 1.9 <= lesion["contrast_hu"] <= case["noise_hu"] + 6.1


def test_generator_is_deterministic_and_seed_dependent(tmp_path):
    a = synth.make_case("brain", seed=1, index=2, label=3, size_group="IS-2")
    b = synth.make_case("brain", seed=1, index=2, label=3, size_group="IS-2")
    c = synth.make_case("brain", seed=2, index=2, label=3, size_group="IS-2")
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    assert a["lesions"] == b["lesions"]
    assert not np.array_equal(a["image"], c["image"])
    d1 = synth.generate("lung", n=3, seed=9, out_dir=tmp_path / "one")
    d2 = synth.generate("lung", n=3, seed=9, out_dir=tmp_path / "two")
    assert d1 == d2
    for item in all_items(d1):
        for key in ("image", "mask"):
            np.testing.assert_array_equal(read_volume(tmp_path / "one" / item[key]).array,
                                          read_volume(tmp_path / "two" / item[key]).array)


def test_cases_made_in_several_processes_are_the_same_files(tmp_path):
    one = synth.generate("brain", n=4, seed=7, out_dir=tmp_path / "one")
    two = synth.generate("brain", n=4, seed=7, out_dir=tmp_path / "two", workers=2)
    assert one == two                                   # same items, same order, same split
    for item in all_items(one):
        for key in ("image", "mask", "regions"):
            assert (tmp_path / "one" / item[key]).read_bytes() == (tmp_path / "two" / item[key]).read_bytes()
    with pytest.raises(synth.ConfigError, match="workers"):
        synth.generate("brain", n=1, seed=7, out_dir=tmp_path / "three", workers=0)


def test_lung_cases(lung_set):
    out, datalist = lung_set
    items = all_items(datalist)
    assert datalist["label_counts"] == {"normal": 3, "findings": 3}
    for item in items:
        image = read_volume(out / item["image"])
        mask = read_volume(out / item["mask"]).array
        lungs = read_volume(out / item["regions"]).array
        validate_ct(image)
        assert set(np.unique(lungs)) == {0, 1, 2}
        assert set(item["anatomy"]) == {"hu_offset", "lung_hu", "dependent_hu"}     # the drawn breath, recorded
        assert (lungs[mask > 0] > 0).all()                          # findings inside the lungs
        if item["label"] == 1:
            assert (mask > 0).sum() > 0 and len(item["lesions"]) >= 1
            assert image.array[mask > 0].mean() > image.array[lungs > 0].mean()   # denser than lung
        else:
            assert (mask == 0).all() and item["lesions"] == []
    np.testing.assert_allclose(image.direction, np.diag([-1.0, -1.0, 1.0]))       # the chest CT's geometry


def test_lung_findings_change_only_inside_the_mask():
    case = synth.make_case("lung", seed=0, index=4, label=1, return_clean=True)
    changed = np.abs(case["noiseless"] - case["clean"]) > 1e-3
    assert changed.any() and (case["mask"][changed] > 0).all()


def test_territory_map_is_lateralised():
    mask = np.zeros((40, 60, 50), bool)
    mask[5:35, 5:55, 5:45] = True
    labels = territory_map(mask)
    assert set(np.unique(labels)) == set(range(7))
    right = labels[:, :, :25]
    left = labels[:, :, 25:]
    assert set(np.unique(right)) <= {0} | {TERRITORY_LABELS[t] for t in TERRITORIES if t.endswith("right")}
    assert set(np.unique(left)) <= {0} | {TERRITORY_LABELS[t] for t in TERRITORIES if t.endswith("left")}
    assert labels[20, 10, 25] == TERRITORY_LABELS["ACA_left"] and labels[20, 10, 24] == TERRITORY_LABELS["ACA_right"]
    assert labels[30, 52, 10] == TERRITORY_LABELS["PCA_right"]
    assert labels[20, 30, 7] == TERRITORY_LABELS["MCA_right"]


def test_main_command_line(tmp_path, capsys):
    assert synth.main(["--task", "lung", "--n", "2", "--seed", "1", "--out", str(tmp_path)]) == 0
    assert "wrote 2 lung cases" in capsys.readouterr().out
    assert len(list((tmp_path / "images").glob("*.nrrd"))) == 2
    with pytest.raises(Exception):
        synth.generate("liver", n=1, out_dir=tmp_path)


def test_territories_found_on_a_head_ct_match_the_ground_truth():
    from ACATCore.data.territories import territory_volume
    from ACATCore.volume import Volume
    # plain heads: on varied (tilted) heads the box-based estimate agrees less (0.65-0.82), and near
    # territory borders the lesion's majority vote can differ (case 3 of seed 0 puts an MCA lesion in PCA)
    case = synth.make_case("brain", seed=0, index=0, label=2, size_group="IS-3", options={"variety": False})
    head = Volume(case["image"], case["spacing"], case["origin"], case["direction"])
    estimated = territory_volume(head).array
    truth = case["regions"]
    assert (estimated == truth)[truth > 0].mean() > 0.75
    lesion = case["mask"] > 0
    values, counts = np.unique(estimated[lesion], return_counts=True)
    assert values[np.argmax(counts)] == TERRITORY_LABELS[case["lesions"][0]["territory"]]


def test_label_counts_follow_requested_fractions(tmp_path):
    plan = synth.class_plan(20, 4, seed=0, fractions=[0.5, 0.2, 0.2, 0.1])
    assert [plan.count(c) for c in range(4)] == [10, 4, 4, 2]
    datalist = synth.generate("lung", n=5, seed=2, out_dir=tmp_path, class_fractions=[0.2, 0.8])
    assert datalist["label_counts"] == {"normal": 1, "findings": 4}
    assert sorted(i["label"] for i in all_items(datalist)) == [0, 1, 1, 1, 1]


# ------------------------------------------------------------------ generator options (demo settings)
def test_standard_cases_do_not_change_when_options_are_left_out(varied):
    """Options only touch what they say: the default random stream is unchanged."""
    plain = synth.make_case("lung", seed=4, index=1, label=1)
    explicit = synth.make_case("lung", seed=4, index=1, label=1, options={"involvement": None})
    np.testing.assert_array_equal(plain["image"], explicit["image"])
    negative = synth.make_case("lung", seed=4, index=0, label=0, options={"involvement": [0.2, 0.3]})
    np.testing.assert_array_equal(negative["image"], synth.make_case("lung", seed=4, index=0, label=0)["image"])
    # brain: varied heads are the default; fixing the HU offset changes nothing but the offset
    default = varied[0]
    assert default["acquisition"]["variety"] is True
    again = synth.make_case("brain", seed=7, index=0, label=1, return_clean=True,
                            options={"variety": None, "acquisition": {"hu_offset": 4.0}})
    assert again["acquisition"] == {**default["acquisition"], "hu_offset": 4.0}
    assert again["lesions"] == default["lesions"]
    np.testing.assert_array_equal(again["mask"], default["mask"])
    delta = 4.0 - default["acquisition"]["hu_offset"]
    np.testing.assert_allclose(again["noiseless"] - default["noiseless"], delta, atol=1e-3)
    unclipped = (default["image"] > -1000) & (default["image"] < 3000)
    diff = again["image"][unclipped].astype(int) - default["image"][unclipped]
    assert np.abs(diff - delta).max() <= 1.0


def test_lung_involvement_option_reaches_its_target():
    for index in range(3):
        standard = synth.make_case("lung", seed=2, index=index, label=1)
        case = synth.make_case("lung", seed=2, index=index, label=1, options={"involvement": [0.15, 0.25]})
        assert 0.15 <= case["involvement"] <= 0.25 + 0.1          # the last patch may overshoot a little
        assert case["involvement"] > standard["involvement"]
        assert 1 <= len(case["lesions"]) <= synth.LUNG_MAX_PATCHES
    assert synth.lung_size_group(case["involvement"]) in ("LS-2", "LS-3")


def test_brain_contrast_and_size_group_options(tmp_path):
    case = synth.make_case("brain", seed=5, index=1, label=1, size_group="IS-4", return_clean=True,
                           options={"contrast_hu": [15, 16]})
    lesion = case["lesions"][0]
    assert 15 <= lesion["contrast_hu"] - case["noise_hu"] <= 16
    inside = case["mask"] > 0
    assert (case["clean"] - case["noiseless"])[inside].max() == pytest.approx(lesion["contrast_hu"], abs=0.01)
    datalist = synth.generate("brain", n=4, seed=1, out_dir=tmp_path,
                              options={"size_groups": ["IS-4"], "contrast_hu": [15, 16]})
    groups = {les["size_group"] for item in all_items(datalist) for les in item["lesions"]}
    assert groups == {"IS-4"}
    assert datalist["options"] == {"size_groups": ["IS-4"], "contrast_hu": [15.0, 16.0]}
    assert json.loads((tmp_path / "datalist.json").read_text())["options"] == datalist["options"]


def test_brain_contrast_option_of_several_ranges_draws_each_lesion_from_one(tmp_path):
    # the extra contrast is drawn over the noise s.d. before noise_scale (2-8 HU): 2-3 HU gives 4-11, 30-31 gives 32-39
    contrasts = []
    for index in range(4):
        case = synth.make_case("brain", seed=5, index=index, label=3, return_clean=True,
                               options={"contrast_hu": [[2, 3], [30, 31]]})
        inside = case["mask"] > 0
        assert (case["clean"] - case["noiseless"])[inside].max() == pytest.approx(
            max(les["contrast_hu"] for les in case["lesions"]), abs=0.01)
        contrasts += [les["contrast_hu"] for les in case["lesions"]]
    assert all(4 <= c <= 11 or 32 <= c <= 39 for c in contrasts), contrasts
    assert min(contrasts) <= 11 and max(contrasts) >= 32, contrasts          # both ranges drawn
    datalist = synth.generate("brain", n=2, seed=1, out_dir=tmp_path, options={"contrast_hu": [[2, 3], [30, 31]]})
    assert datalist["options"] == {"contrast_hu": [[2.0, 3.0], [30.0, 31.0]]}


def test_brain_radius_option_makes_larger_lesions_and_names_their_group():
    small = synth.make_case("brain", seed=6, index=2, label=2, size_group="IS-1")
    large = synth.make_case("brain", seed=6, index=2, label=2, size_group="IS-1",
                            options={"radius_mm": [24, 26]})
    lesion = large["lesions"][0]
    assert 24 <= lesion["radius_mm"] <= 26 and lesion["size_group"] == "IS-4"
    assert lesion["voxels"] > 5 * small["lesions"][0]["voxels"]
    assert (large["regions"][large["mask"] > 0] == synth.TERRITORY_LABELS[lesion["territory"]]).all()


@pytest.mark.parametrize("task, options, words", [
    ("brain", {"acquisition": {"slice": 5}}, "acquisition key 'slice' unknown"),
    ("brain", {"acquisition": {"slice_mm": 0}}, "slice_mm"),
    ("brain", {"acquisition": {"tilt_deg": 90}}, "tilt_deg"),
    ("brain", {"acquisition": {"noise_scale": "high"}}, "noise_scale 'high': give a number"),
    ("brain", {"acquisition": {"hu_offset": True}}, "hu_offset True: give a number"),
    ("brain", {"acquisition": {"holder": 1}}, "holder 1: give true or false"),
    ("brain", {"acquisition": [5]}, "give a mapping"),
    ("brain", {"variety": "yes"}, "variety 'yes'"),
    ("lung", {"acquisition": {"slice_mm": 5}}, "do not apply to the lung task"),
    ("lung", {"involvment": [0.1, 0.2]}, "unknown ACAT-Synth option"),
    ("lung", {"involvement": [0.3, 0.1]}, "lo <= hi"),
    ("lung", {"involvement": "a lot"}, "two numbers"),
    ("lung", {"contrast_hu": [5, 10]}, "do not apply to the lung task"),
    ("brain", {"size_groups": ["IS-5"]}, "IS-1, IS-2"),
    ("brain", {"involvement": [0.1, 0.2]}, "do not apply to the brain task"),
    ("brain", {"size_groups": ["IS-4"], "radius_mm": [20, 30]}, "not both"),
    ("lung", {"radius_mm": [20, 30]}, "do not apply to the lung task"),
    ("brain", {"contrast_hu": [[2, 14], [3]]}, r"contrast_hu \[3\]: give two numbers"),
    ("brain", {"contrast_hu": [[2, 14], [30, 20]]}, "lo <= hi"),
    ("brain", {"ventricle_asym_mm": [-1, 3]}, "ventricle_asym_mm"),
    ("lung", {"ventricle_asym_mm": [0, 6]}, "do not apply to the lung task"),
])
def test_bad_options_are_refused_with_a_clear_error(tmp_path, task, options, words):
    from ACATCore.errors import ConfigError
    with pytest.raises(ConfigError, match=words):
        synth.generate(task, n=2, seed=0, out_dir=tmp_path, options=options)
    assert not (tmp_path / "datalist.json").exists()


def test_command_line_options(tmp_path, capsys):
    assert synth.main(["--task", "lung", "--n", "2", "--seed", "1", "--out", str(tmp_path),
                       "--involvement", "0.1", "0.2"]) == 0
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    assert datalist["options"] == {"involvement": [0.1, 0.2]}
    positive = [i for i in all_items(datalist) if i["label"] == 1][0]
    assert positive["involvement"] >= 0.1
    with pytest.raises(SystemExit):
        synth.main(["--task", "lung", "--n", "2", "--out", str(tmp_path / "x"), "--contrast", "5", "9"])
    assert "do not apply to the lung task" in capsys.readouterr().err


# ------------------------------------------------------------------ varied heads (anatomy and acquisition)
@pytest.fixture(scope="module")
def varied():
    """Four default (varied) brain cases with their clean versions."""
    return [synth.make_case("brain", seed=7, index=i, label=label, return_clean=True)
            for i, label in enumerate((1, 2, 3, 3))]


def physical(case, voxels):
    """(n, 3) x, y, z mm of the voxels (k, j, i) of a case (identity direction)."""
    k, j, i = np.nonzero(voxels)
    return np.stack([i, j, k], axis=1) * np.asarray(case["spacing"]) + np.asarray(case["origin"])


def test_varied_heads_differ_in_grid_and_record_their_acquisition(varied, brain_set):
    shapes = {c["image"].shape for c in varied}
    spacings = {tuple(round(s, 3) for s in c["spacing"]) for c in varied}
    assert len(shapes) == len(spacings) == len(varied)
    for case in varied:
        acq = case["acquisition"]
        assert case["image"].shape == case["mask"].shape == case["regions"].shape == case["clean"].shape
        assert case["image"].dtype == np.int16 and case["image"].size <= 2.05e6
        assert list(case["image"].shape) == acq["shape_kji"]
        assert 1.0 <= case["spacing"][2] == acq["slice_mm"] <= 5.0
        assert case["spacing"][0] == case["spacing"][1] == acq["pixel_mm"] >= 0.6
        assert abs(acq["tilt_deg"]) <= 15 and 0.85 - 1e-9 <= min(acq["scale_xyz"]) <= max(acq["scale_xyz"]) <= 1.15
        assert 2.0 <= case["noise_hu"] <= 8.0 and abs(acq["hu_offset"]) <= 5
    out, datalist = brain_set
    items = all_items(datalist)
    assert len({tuple(i["acquisition"]["shape_kji"]) for i in items}) > 1
    for item in items[:2]:                                # the datalist says what the file holds
        image = read_volume(out / item["image"])
        assert list(image.array.shape) == item["acquisition"]["shape_kji"]
        np.testing.assert_allclose(image.spacing[2], item["acquisition"]["slice_mm"], atol=1e-3)


def test_lesions_on_varied_heads_stay_in_one_territory_parenchyma_and_mask(varied):
    from ACATCore.data.territories import territory_side
    for case in varied:
        change = case["clean"] - case["noiseless"]
        assert (change >= -1e-4).all() and (case["mask"][change > 1e-4] > 0).all()   # darker, only in the mask
        for lesion in case["lesions"]:
            label = TERRITORY_LABELS[lesion["territory"]]
            inside = case["mask"] == label
            assert inside.sum() == lesion["voxels"] > 0 and inside[tuple(lesion["centre_kji"])]
            assert (case["regions"][inside] == label).all()                  # one territory ...
            assert territory_side(lesion["territory"]) == lesion["side"]
            assert (change[inside] > 0).all()                                # ... the mask is exact
            assert change[inside].max() == pytest.approx(lesion["contrast_hu"], abs=0.01)
            assert 10.0 < np.median(case["clean"][inside]) < 60.0           # parenchyma, not CSF or bone
            from scipy import ndimage as ndi
            assert ndi.label(inside)[1] == 1                                 # one connected lesion
            volume = lesion["voxels"] * np.prod(case["spacing"])
            assert lesion["equivalent_radius_mm"] == pytest.approx((3 * volume / (4 * np.pi)) ** (1 / 3), abs=0.01)
            assert lesion["equivalent_radius_mm"] <= lesion["radius_mm"] * 1.15
        assert [les["side"] for les in case["lesions"]] in (["left"], ["right"], ["left", "right"])


def test_fixed_acquisition_factors_are_honoured(varied):
    common = {"seed": 7, "index": 0, "label": 1, "return_clean": True}
    low = synth.make_case("brain", **common, options={"acquisition": {
        "slice_mm": 5, "tilt_deg": -10, "head_scale": 0.85, "holder": True, "vertex_cut": True,
        "bottom_cut": False, "noise_scale": 2.0}})
    high = synth.make_case("brain", **common, options={"acquisition": {
        "slice_mm": 2, "tilt_deg": 10, "head_scale": 1.15, "holder": False, "vertex_cut": False,
        "bottom_cut": True, "beam_hardening": False}})
    assert low["spacing"][2] == 5.0 and high["spacing"][2] == 2.0
    assert low["acquisition"]["tilt_deg"] == -10 and high["acquisition"]["tilt_deg"] == 10
    assert low["acquisition"]["head_scale"] == 0.85 and high["acquisition"]["cupping_hu"] == 0
    # noise_scale doubles the noise but not the lesion contrast
    assert low["noise_hu"] == pytest.approx(2 * varied[0]["noise_hu"] * 1.0, rel=0.3)
    assert low["lesions"][0]["contrast_hu"] - low["noise_hu"] / 2 <= 6.01
    # head size: the brain's extent scales with head_scale
    extent = [np.ptp(physical(c, c["regions"] > 0)[:, :2], axis=0) for c in (low, high)]
    ratio = extent[1] / extent[0]
    assert np.all((ratio > 1.15) & (ratio < 1.6)), ratio
    # tilt: the ACA -> PCA direction turns by ~20 degrees in the sagittal plane

    def angle(case):
        aca = physical(case, np.isin(case["regions"], [3, 4])).mean(axis=0)
        pca = physical(case, np.isin(case["regions"], [5, 6])).mean(axis=0)
        return np.degrees(np.arctan2(pca[2] - aca[2], pca[1] - aca[1]))
    assert 12 <= abs(angle(high) - angle(low)) <= 28
    # coverage: the vertex cut leaves brain in the top slice; the full scan ends above the head
    assert (low["regions"][-1] > 0).any() and not (high["regions"][-1] > 0).any()
    area = [c["brain"][0].sum() * c["spacing"][0] ** 2 for c in (low, high)]
    assert area[1] > 2000 and area[1] > 3 * area[0], area           # skull base cut: brain in slice 0
    assert not high["head"][-1].any()
    # the holder: behind the head, never touching it, 100-400 HU (+- the calibration offset)
    from scipy import ndimage as ndi
    holder, head = low["holder"], low["head"]
    assert holder.sum() > 100 and high["holder"].sum() == 0
    assert not (ndi.binary_dilation(head, iterations=1) & holder).any()
    assert physical(low, holder)[:, 1].mean() > physical(low, head)[:, 1].mean() + 30   # posterior (+y)
    values = low["clean"][holder]
    assert 90 <= np.median(values) <= 410


def test_hu_offset_moves_the_brain_and_variety_off_gives_plain_heads():
    cases = [synth.make_case("brain", seed=8, index=0, label=0, options={"acquisition": {"hu_offset": v}})
             for v in (-5.0, 5.0)]
    medians = [np.median(c["image"][c["regions"] > 0]) for c in cases]
    assert medians[1] - medians[0] == pytest.approx(10.0, abs=1.5)
    plain = synth.make_case("brain", seed=8, index=0, label=2, return_clean=True, options={"variety": False})
    assert plain["image"].shape == (34, 224, 192) and plain["spacing"] == (1.0, 1.0, 5.0)
    acq = plain["acquisition"]
    assert not (acq["variety"] or acq["holder"] or acq["vertex_cut"] or acq["bottom_cut"] or acq["hu_offset"])
    assert 2.5 <= plain["noise_hu"] <= 4.5 and abs(acq["tilt_deg"]) <= 4
    assert (plain["regions"] > 0).any() and plain["holder"].sum() == 0


def test_acquisition_on_the_command_line(tmp_path, capsys):
    assert synth.parse_acquisition(["slice_mm=5", "holder=true", "tilt_deg=-10"]) == \
        {"slice_mm": 5.0, "holder": True, "tilt_deg": -10.0}
    with pytest.raises(SystemExit):
        synth.main(["--task", "brain", "--n", "1", "--out", str(tmp_path), "--acquisition", "slice_mm=0"])
    assert "slice_mm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synth.main(["--task", "lung", "--n", "1", "--out", str(tmp_path), "--acquisition", "slice_mm=5"])
    assert not (tmp_path / "datalist.json").exists()
