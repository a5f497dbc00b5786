"""The lung generator's variety: breath (lung density), calibration and geometry drawn per case; plain chests."""
import numpy as np
import pytest

from ACATCore.data import synth
from ACATCore.data.synth_lung import LUNG_FINDINGS, LUNG_VARIETY, _breath
from ACATCore.io import read_volume


def _flat_chest(direction):
    """Lungs of -850 HU (rows 10-49) with a vessel of -100 HU, in soft tissue of 40 HU."""
    hu = np.full((6, 60, 50), 40.0, np.float32)
    lungs = np.zeros(hu.shape, np.uint8)
    lungs[:, 10:50, 5:45] = 1
    hu[lungs > 0] = -850.0
    hu[:, 30, 20] = -100.0
    return hu, lungs, np.diag(direction)


@pytest.mark.parametrize("direction", [(-1.0, -1.0, 1.0), (1.0, 1.0, 1.0)])
def test_breath_changes_air_like_lung_denser_towards_the_back(direction):
    hu, lungs, d = _flat_chest(direction)
    before = hu.copy()
    drawn = _breath(np.random.default_rng(3), hu, lungs, d)
    change = hu - before
    assert (change[lungs == 0] == 0).all() and (change[:, 30, 20] == 0).all()     # outside and vessels kept
    assert LUNG_VARIETY["lung_hu"][0] <= drawn["lung_hu"] <= LUNG_VARIETY["lung_hu"][1]
    rows = change[:, 10:50, 5:45].mean(axis=(0, 2))
    back, front = (rows[:10], rows[-10:]) if direction[1] < 0 else (rows[-10:], rows[:10])   # LPS: +y is back
    assert back.mean() - front.mean() == pytest.approx(drawn["dependent_hu"] * 0.77, abs=6.0)
    assert np.mean(change[lungs > 0]) == pytest.approx(drawn["lung_hu"] + drawn["dependent_hu"] / 2, abs=6.0)


def test_varied_chests_differ_in_breath_and_ground_glass_follows_the_lungs():
    levels, glass = [], []
    for index in range(12):
        case = synth.make_case("lung", seed=11, index=index, label=1, return_clean=True)
        lung = case["clean"][(case["regions"] > 0) & (case["clean"] < -500)]
        levels.append((case["anatomy"]["lung_hu"], float(np.median(lung))))
        glass += [les["target_hu"] - case["anatomy"]["lung_hu"] for les in case["lesions"]
                  if les["finding"] == "ground-glass"]
    drawn, measured = np.array(levels).T
    assert np.ptp(drawn) > 60 and np.corrcoef(drawn, measured)[0, 1] > 0.8     # the lungs' density follows the draw
    assert glass and all(LUNG_FINDINGS["ground-glass"][0] <= g <= LUNG_FINDINGS["ground-glass"][1] for g in glass)


def test_plain_chests_keep_the_template_breath(tmp_path):
    assert synth.main(["--task", "lung", "--n", "2", "--seed", "4", "--out", str(tmp_path), "--no-variety"]) == 0
    datalist = (tmp_path / "datalist.json").read_text()
    assert '"variety": false' in datalist and '"lung_hu"' not in datalist
    varied = synth.make_case("lung", seed=4, index=0, label=0, return_clean=True)
    plain = synth.make_case("lung", seed=4, index=0, label=0, return_clean=True, options={"variety": False})
    assert set(plain["anatomy"]) == {"hu_offset"} and abs(plain["anatomy"]["hu_offset"]) <= 10
    assert synth.LUNG_NOISE_HU[0] <= plain["noise_hu"] <= synth.LUNG_NOISE_HU[1]
    assert not np.array_equal(varied["image"], plain["image"])
    image = read_volume(tmp_path / "images" / "lung_00000.nrrd").array
    assert image.shape == plain["image"].shape
