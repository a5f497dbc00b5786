"""Brain extraction from the CT itself, and its use in preprocessing and the pipeline.

Ground truth comes from ACAT-Synth heads (territories and lesions are known) and from the real chest
CT that slicerio ships (a CT with no brain); shifts (tilt, cut vertex, head holder) are applied here.
"""
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from ACATCore.brain_extraction import brain_mask_volume, extract_brain
from ACATCore.data import synth
from ACATCore.errors import InputError
from ACATCore.io import read_volume
from ACATCore.preprocessing import prepare, to_canonical
from ACATCore.volume import Volume

SPEC = {"window": [0, 80], "slices": 11, "size": [80, 64], "midline": "center", "brain_extraction": True}


@pytest.fixture(scope="module")
def head():
    """A synthetic head with a left lesion, its territories and lesion mask ([k, j, i], LPS)."""
    case = synth.make_case("brain", seed=321, index=0, label=1)
    return case


def _brain(case):
    return extract_brain(case["image"], case["spacing"])


def test_the_brain_holds_every_territory_voxel_and_every_lesion_voxel(head):
    brain = _brain(head)
    territories, lesion = head["regions"] > 0, head["mask"] > 0
    assert (brain.mask & territories).sum() / territories.sum() >= 0.95
    assert (brain.mask & lesion).sum() >= 0.98 * lesion.sum()       # a lesion is kept (but the rim by the bone)
    assert not (brain.mask & (head["image"] > 190)).any()           # no bone
    assert 600 < brain.volume_ml < 1900


def test_scalp_and_everything_outside_the_skull_are_left_out(head):
    image = head["image"]
    brain = _brain(head).mask
    # scalp: soft tissue reachable from the image border without crossing bone (in-plane)
    outside = np.zeros_like(brain)
    for k in range(image.shape[0]):
        free = image[k] < 190
        labels, _ = ndi.label(free)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        outside[k] = np.isin(labels, border[border > 0])
    assert (brain & outside).sum() <= 0.002 * brain.sum()


def test_a_head_holder_and_a_pillow_do_not_change_the_brain(head):
    image = head["image"].astype(np.float32).copy()
    K, J, I = image.shape
    jj, ii = np.mgrid[:J, :I]
    head_px = ndi.binary_fill_holes(image > -300, structure=np.ones((1, 3, 3), bool))
    back = max(np.flatnonzero(head_px.any(axis=(0, 2))))
    r = np.hypot(jj - (back - 80.0), (ii - I / 2) * 1.0)
    shell = (np.abs(r - 92) < 3) & (jj > back - 60)                 # a curved 6 mm shell behind the head
    pillow = (np.abs(r - 86) < 3) & (jj > back - 50) & ~head_px.any(axis=0)
    image[:, shell] = 300.0
    image[:, pillow] = np.where(head_px[:, pillow], image[:, pillow], -600.0)
    with_holder = extract_brain(image, head["spacing"]).mask
    plain = _brain(head).mask
    iou = (with_holder & plain).sum() / (with_holder | plain).sum()
    assert iou >= 0.98


def test_a_scan_that_stops_below_the_vertex_or_above_the_skull_base(head):
    brain = _brain(head)
    k0, k1 = brain.slices
    for cut in (slice(0, k1 - (k1 - k0) // 4), slice(k0 + (k1 - k0) // 4, None)):
        part = extract_brain(head["image"][cut], head["spacing"]).mask
        whole = brain.mask[cut]
        assert (part & whole).sum() / whole.sum() >= 0.95


def test_a_tilted_head_is_extracted_as_well():
    case = synth.make_case("brain", seed=321, index=0, label=1)
    tilted = ndi.rotate(case["image"].astype(np.float32), 10, axes=(0, 1), reshape=False, order=1,
                        cval=-1000)
    truth = ndi.rotate((case["regions"] > 0).astype(np.float32), 10, axes=(0, 1), reshape=False, order=0) > 0
    mask = extract_brain(tilted, case["spacing"]).mask
    assert (mask & truth).sum() / truth.sum() >= 0.85       # the rotation smears bone across 5 mm slices


def test_a_chest_ct_and_a_face_only_scan_have_no_brain(head):
    import slicerio
    chest = to_canonical(read_volume(Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd"))
    with pytest.raises(InputError, match="no brain was found"):
        extract_brain(chest.array, chest.spacing)
    k0 = _brain(head).slices[0]
    with pytest.raises(InputError, match="no brain was found"):
        extract_brain(head["image"][:k0 + 1], head["spacing"])      # the slices below the brain


def test_preparing_with_extraction_blanks_everything_but_the_brain_and_crops_to_it(head):
    volume = Volume(head["image"], head["spacing"], head["origin"], head["direction"])
    p = prepare(volume, SPEC)
    brain = p.brain
    assert p.canonical_indices.min() >= brain.slices[0] and p.canonical_indices.max() <= brain.slices[1]
    inside = p.to_model_grid(volume.with_array(brain.mask.astype(np.uint8)), mode="nearest") > 0
    x = p.tensor[:, 0].numpy()
    assert np.abs(x[~ndi.binary_dilation(inside, iterations=2)]).max() == 0.0
    assert inside.mean(axis=(1, 2)).max() > 0.5                      # the brain fills the crop
    lesion = p.to_model_grid(volume.with_array(head["mask"]), mode="nearest") > 0
    assert lesion.any() and x[lesion].mean() < x[inside & ~lesion].mean()
    # the maps go back where they came from: the lesion's model pixels land on the lesion
    back = p.to_input_grid(lesion.astype(np.float32)).array > 0.5
    assert (back & (head["mask"] > 0)).sum() / back.sum() > 0.6


def test_the_brain_mask_volume_is_on_the_input_grid():
    case = synth.make_case("brain", seed=5, index=1, label=0)
    flipped = Volume(case["image"][:, ::-1, ::-1].copy(), case["spacing"], (0, 0, 0),
                     np.diag([-1.0, -1.0, 1.0]))                     # stored RAS-like
    mask = brain_mask_volume(flipped).array.astype(bool)
    direct = extract_brain(case["image"], case["spacing"]).mask
    assert mask.shape == flipped.array.shape
    assert (mask == direct[:, ::-1, ::-1]).mean() > 0.999


def test_the_brain_model_refuses_a_chest_ct_with_one_line(tmp_path, capsys):
    import slicerio
    from ACATCore.checkpoint import load_bundle
    from ACATCore.cli import main
    assert load_bundle("brain").card["preprocessing"]["brain_extraction"] is True
    chest = Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd"
    code = main(["analyze", str(chest), "--model", "brain", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no brain was found" in err[0], err
    assert not (tmp_path / "out").exists()
