"""Lesions inserted into training batches (training/lesion_insertion.py): where they go, what the label
becomes, that the draws repeat, that a real prepared head gets one inside its brain, and clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ACATCore.errors import ConfigError
from training import config
from training.lesion_insertion import check_options, insert_lesions

pytestmark = pytest.mark.timeout(300)
ALWAYS = {"prob": 1.0}


def toy_batch(labels) -> dict:
    """Volumes of 6 slices x 40 x 32: a parenchyma-valued block (0.45) with a CSF-dark hole, zero around."""
    x = torch.zeros(len(labels), 6, 1, 40, 32)
    x[:, :, :, 5:35, 4:28] = 0.45
    x[:, :, :, 15:25, 12:20] = 0.1                  # ventricle-like: not parenchyma, never darkened
    return {"x": x, "y": torch.tensor(labels), "mask": torch.zeros(len(labels), 6, 1, 40, 32)}    # as DataSet.get


def test_a_lesion_darkens_only_the_parenchyma_of_the_side_its_label_names():
    batch = toy_batch([0, 0, 0, 0, 1, 2, 3, 0])
    before = {k: v.clone() for k, v in batch.items()}
    out = insert_lesions(batch, ALWAYS, list(range(8)), seed=3, epoch=0)
    for key in before:
        assert torch.equal(batch[key], before[key])             # the caller's batch is not changed
    change = (before["x"] - out["x"])[:, :, 0]
    assert (change >= 0).all()                                   # darker only
    assert (change[before["x"][:, :, 0] != 0.45] == 0).all()     # background and the dark hole untouched
    assert out["y"].tolist()[4:7] == [3, 3, 3]                   # a one-sided head gets the other side; "both" none
    assert torch.equal(out["x"][6], before["x"][6])
    for b, label in enumerate(out["y"].tolist()):
        new = label & ~int(before["y"][b])
        if not new:
            continue
        right_half, left_half = change[b, ..., :16].sum(), change[b, ..., 16:].sum()
        # bit 1: the patient's left, the image's right half (columns 16-31); bit 2 the other half
        assert (left_half > 0 and right_half == 0) if new == 1 else (right_half > 0 and left_half == 0)
        assert 3.0 / 80 < float(change[b].max()) <= 0.09 + 1e-6            # a faint lesion, as drawn
        assert out["mask"][b].sum() > 0 and (change[b][out["mask"][b, :, 0] > 0] > 0.02).all()
    assert set(out["y"].tolist()[:4] + out["y"].tolist()[7:]) == {1, 2}      # lesion-free heads: both sides drawn


def test_the_draws_repeat_for_the_same_seed_epoch_and_samples_only():
    batch = toy_batch([0] * 6)
    opts = {"prob": 0.5}
    one = insert_lesions(batch, opts, [3, 9, 11, 12, 20, 21], seed=1, epoch=4)
    two = insert_lesions(batch, opts, [3, 9, 11, 12, 20, 21], seed=1, epoch=4)
    assert torch.equal(one["x"], two["x"]) and torch.equal(one["y"], two["y"])
    later = insert_lesions(batch, opts, [3, 9, 11, 12, 20, 21], seed=1, epoch=5)
    assert not torch.equal(one["x"], later["x"])
    assert insert_lesions(batch, None, [0] * 6, 1, 4) is batch                  # off: the batch as it was
    none = insert_lesions(batch, {"prob": 0.0}, list(range(6)), 1, 4)
    assert torch.equal(none["x"], batch["x"]) and torch.equal(none["y"], batch["y"])


def test_a_prepared_generator_head_gets_its_lesion_inside_the_brain_at_the_small_lesions_scale():
    """A lesion-free ACAT-Synth head prepared as the brain recipe prepares it: the inserted lesion darkens
    tens to a few hundred model pixels (the generator's IS-3 lesions: about 156 at 22 slabs), inside the brain."""
    from ACATCore.data import synth
    from ACATCore.preprocessing import prepare
    from ACATCore.volume import Volume
    case = synth.make_case("brain", 4242, 0, 0)
    volume = Volume(case["image"], case["spacing"], case["origin"], case["direction"])
    spec = {"window": [0, 80], "slices": 22, "size": [80, 64], "orientation": "LPS-axial", "midline": "center",
            "brain_extraction": True, "slab": True, "slab_mean": "brain"}
    x = prepare(volume, spec).tensor[None]
    out = insert_lesions({"x": x, "y": torch.tensor([0])}, ALWAYS, [0], seed=0, epoch=0)
    change = (x - out["x"])[0, :, 0]
    assert out["y"].item() in (1, 2)
    assert 20 <= int((change > 0.02).sum()) <= 600
    assert (x[0, :, 0][change > 0] > 0).all()                       # inside the brain (outside is 0)


def test_options_are_checked_and_the_config_refuses_them_for_lung():
    assert check_options({})["prob"] == 0.3
    with pytest.raises(ValueError, match="radius_px"):
        check_options({"radius_px": [6, 3]})
    with pytest.raises(ValueError, match="prob"):
        check_options({"prob": True})
    with pytest.raises(ValueError, match="takes a dict"):
        check_options({"radius": 3})
    cfg = config.load_config(None, ["task=brain", "baseline.insert_lesions={}"])
    assert cfg["baseline"]["insert_lesions"] == {}
    assert config.HyperParams.from_config(cfg["baseline"]).insert_lesions == {}
    with pytest.raises(ConfigError, match="baseline.insert_lesions.prob"):
        config.load_config(None, ["task=brain", 'baseline.insert_lesions={"prob": 2}'])
    with pytest.raises(ConfigError, match="set it to null for lung"):
        config.load_config(None, ["task=lung", "baseline.insert_lesions={}"])


def test_no_lesion_without_parenchyma_to_put_it_in():
    batch = {"x": torch.full((2, 4, 1, 20, 16), 0.1), "y": torch.tensor([0, 0])}      # all CSF-dark
    out = insert_lesions(batch, ALWAYS, [0, 1], 0, 0)
    assert torch.equal(out["x"], batch["x"]) and out["y"].tolist() == [0, 0]
    assert np.isclose(float(out["x"].mean()), 0.1)


def test_a_baseline_trained_with_inserted_lesions_and_the_lesion_loss(tmp_path):
    """The classifier stage inserts before it flips: the batches it trains on carry the inserted lesions in the
    image, the label and the lesion mask together; a toy brain baseline trains with both options and its card
    records them."""
    from test_lesion_loss import brain_config, toy_brain_datalist
    from training.classifier import classifier_stage
    from training.data import load_splits
    from training.runtime import setup_runtime
    from training.train_baseline import train_baseline
    cfg = brain_config(toy_brain_datalist(tmp_path), tmp_path / "run")
    cfg["baseline"].update(insert_lesions=ALWAYS, augment=None)
    cfg = config.validate_config(cfg)
    rt = setup_runtime(cfg)
    train = load_splits(cfg, rt, 0)["train"]
    hp = config.HyperParams.from_config(cfg["baseline"])
    stage = classifier_stage("baseline", hp, train, seed=0, num_classes=4, needs_saliency=False,
                             label_map=config.TASK_DEFAULTS["brain"]["flip_label_map"], rt=rt)
    positions = list(range(len(train.labels)))
    plain = train.get(positions, with_mask=True)
    batch = stage.get_batch(train, positions, 0)
    changed = (plain["x"] - batch["x"]).abs().flatten(1).amax(1) > 0
    gained = batch["mask"].flatten(1).sum(1) > plain["mask"].flatten(1).sum(1)
    assert changed.any() and torch.equal(changed, gained)               # image and mask together
    assert (batch["y"][changed] != plain["y"][changed]).all()           # and the label gained a side
    path = train_baseline(cfg, 0, rt)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["data"]["training"]["hyperparameters"]["insert_lesions"] == ALWAYS
