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
    case = synth.make_case("brain", seed=0, index=3, label=2, size_group="IS-3")
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
def test_standard_cases_do_not_change_when_options_are_left_out():
    """Options only touch the cases they apply to: the default random stream is unchanged."""
    plain = synth.make_case("lung", seed=4, index=1, label=1)
    explicit = synth.make_case("lung", seed=4, index=1, label=1, options={"involvement": None})
    np.testing.assert_array_equal(plain["image"], explicit["image"])
    negative = synth.make_case("lung", seed=4, index=0, label=0, options={"involvement": [0.2, 0.3]})
    np.testing.assert_array_equal(negative["image"], synth.make_case("lung", seed=4, index=0, label=0)["image"])


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
    datalist = synth.generate("brain", n=8, seed=1, out_dir=tmp_path,
                              options={"size_groups": ["IS-4"], "contrast_hu": [15, 16]})
    groups = {les["size_group"] for item in all_items(datalist) for les in item["lesions"]}
    assert groups == {"IS-4"}
    assert datalist["options"] == {"size_groups": ["IS-4"], "contrast_hu": [15.0, 16.0]}
    assert json.loads((tmp_path / "datalist.json").read_text())["options"] == datalist["options"]


def test_brain_radius_option_makes_larger_lesions_and_names_their_group():
    small = synth.make_case("brain", seed=6, index=2, label=2, size_group="IS-1")
    large = synth.make_case("brain", seed=6, index=2, label=2, size_group="IS-1",
                            options={"radius_mm": [24, 26]})
    lesion = large["lesions"][0]
    assert 24 <= lesion["radius_mm"] <= 26 and lesion["size_group"] == "IS-4"
    assert lesion["voxels"] > 5 * small["lesions"][0]["voxels"]
    assert (large["regions"][large["mask"] > 0] == synth.TERRITORY_LABELS[lesion["territory"]]).all()


@pytest.mark.parametrize("task, options, words", [
    ("lung", {"involvment": [0.1, 0.2]}, "unknown ACAT-Synth option"),
    ("lung", {"involvement": [0.3, 0.1]}, "lo <= hi"),
    ("lung", {"involvement": "a lot"}, "two numbers"),
    ("lung", {"contrast_hu": [5, 10]}, "do not apply to the lung task"),
    ("brain", {"size_groups": ["IS-5"]}, "IS-1, IS-2"),
    ("brain", {"involvement": [0.1, 0.2]}, "do not apply to the brain task"),
    ("brain", {"size_groups": ["IS-4"], "radius_mm": [20, 30]}, "not both"),
    ("lung", {"radius_mm": [20, 30]}, "do not apply to the lung task"),
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
