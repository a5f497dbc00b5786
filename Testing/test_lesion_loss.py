"""The lesion-cell loss (training/lesion_loss.py): which cells it supervises, that its head exists only
while training, a brain baseline trained with it, and clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ACATCore.errors import ACATError, ConfigError
from ACATCore.models import build_model
from training import config, lesion_loss
from training.runtime import setup_runtime

pytestmark = pytest.mark.timeout(300)


def brain_net(**kw):
    torch.manual_seed(0)
    return build_model("brain_mtl", widths=[4, 4, 4, 4, 4, 4, 4], **kw)


def test_cells_are_the_mask_pooled_as_the_trunk_pools_the_image():
    net = brain_net()                      # pools after conv 1-5: a last-layer cell is 32 x 32 pixels
    lesion_loss.attach(net)
    mask = torch.zeros(1, 2, 1, 80, 64)    # 2 slices; each hemisphere 80 x 32 -> 2 x 1 cells
    mask[0, 1, 0, 40, 10] = 1              # slice 1, image columns 0-31 (first hemisphere as it is): cell row 1
    mask[0, 0, 0, 5, 60] = 1               # slice 0, columns 32-63 (second hemisphere, mirrored): cell row 0
    mask[0, 0, 0, 70, 20] = 1              # rows 64-79 fall outside every cell, as the pools drop them
    net(torch.rand(1, 2, 1, 80, 64))
    target = lesion_loss.cell_targets(net, mask)
    assert target.shape == net.lesion_cell_logits.shape == (4, 1, 2, 1)
    # hemisphere-major: [first half of slice 0, of slice 1, second half of slice 0, of slice 1]
    assert target.nonzero().tolist() == [[1, 0, 1, 0], [2, 0, 0, 0]]

    net3 = brain_net()
    lesion_loss.attach(net3, 3)            # conv 3: after 3 pools, 8 x 8-pixel cells
    net3(torch.rand(1, 2, 1, 80, 64))
    target = lesion_loss.cell_targets(net3, mask)
    assert target.shape == net3.lesion_cell_logits.shape == (4, 1, 10, 4)
    assert target.nonzero().tolist() == [[0, 0, 8, 2], [1, 0, 5, 1], [2, 0, 0, 0]]


def test_the_head_is_there_only_while_training_and_changes_no_prediction():
    net = brain_net().eval()
    x = torch.rand(2, 3, 1, 64, 64)
    before, keys = net(x), set(net.state_dict())
    lesion_loss.attach(net)
    assert {"lesion_cells.weight", "lesion_cells.bias"} <= set(net.state_dict())
    assert torch.equal(net(x), before)
    mask = torch.zeros(2, 3, 1, 64, 64)
    mask[1, 1, 0, 8:20, 40:50] = 1
    value = lesion_loss.loss(net, mask)
    value.backward()
    assert value.item() > 0 and net.lesion_cells.weight.grad.abs().sum() > 0
    assert net.trunk[0][0].weight.grad.abs().sum() > 0          # the trunk learns from the cells
    lesion_loss.detach(net)
    assert set(net.state_dict()) == keys and torch.equal(net(x), before)
    assert not hasattr(net, "lesion_cell_logits")


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="conv layer 1-7"):
        lesion_loss.attach(brain_net(), 8)
    lung = build_model("lung_resnet50", block_inplanes=[4, 8, 8, 8], layers=[1, 1, 1, 1])
    with pytest.raises(ConfigError, match="brain baselines only"):
        lesion_loss.attach(lung)
    net = brain_net()
    lesion_loss.attach(net)
    with pytest.raises(ConfigError, match="forward"):           # no pass yet: nothing to score
        lesion_loss.loss(net, torch.zeros(1, 2, 1, 64, 64))
    cfg = config.merge(config.DEFAULTS, {"task": "brain", "baseline": {"lesion_loss": -1}})
    with pytest.raises(ConfigError, match="lesion_loss"):
        config.validate_config(cfg)
    lung_cfg = config.merge(config.DEFAULTS, {"task": "lung", "baseline": {"lesion_loss": 1.0}})
    with pytest.raises(ConfigError, match="0 for lung"):                # refused before any data is read
        config.validate_config(lung_cfg)


def toy_brain_datalist(folder, with_masks=True):
    """12 toy heads of 6 x 64 x 64: a dark blob in one half is class 1 or 2 (its side), none is 0."""
    from ACATCore.io import write_volume
    from ACATCore.volume import Volume
    rng = np.random.default_rng(0)
    items = []
    for i in range(12):
        label = i % 3
        a = rng.normal(40, 3, size=(6, 64, 64)).astype(np.float32)
        m = np.zeros(a.shape, np.uint8)
        if label:
            z, y, x = rng.integers(1, 5), rng.integers(10, 54), rng.integers(8, 24) + (32 if label == 1 else 0)
            m[z - 1:z + 2, y - 5:y + 5, x - 5:x + 5] = 1
            a[m > 0] -= 20
        write_volume(Volume(a, spacing=(1, 1, 3)), folder / f"v{i}.nii.gz")
        write_volume(Volume(m, spacing=(1, 1, 3)), folder / f"m{i}.nii.gz")
        items.append({"image": f"v{i}.nii.gz", "label": int(label), **({"mask": f"m{i}.nii.gz"} if with_masks else {})})
    (folder / "datalist.json").write_text(json.dumps({"training": items}))
    return folder / "datalist.json"


def brain_config(datalist, out, weight=1.0):
    cfg = {"name": "tiny-brain", "task": "brain", "out_dir": str(out), "seeds": [0],
           "data": {"source": "datalist", "datalist": str(datalist), "split": [0.5, 0.25, 0.25],
                    "preprocessing": {"slices": 4, "size": [64, 64], "window": [0, 80]}},
           "baseline": {"model_config": {"widths": [4, 4, 4, 4, 4, 4, 4]}, "epochs": 2, "lr": 1e-3,
                        "batch_size": 2, "lesion_loss": weight,
                        "augment": {"prob": 1.0, "rotate_deg": 10, "translate": 0.05}},
           "runtime": {"threads": 1, "tensorboard": False, "progress": False}}
    return config.validate_config(config.merge(config.DEFAULTS, cfg))


def test_a_baseline_trained_with_the_lesion_loss_saves_the_plain_model(tmp_path):
    from ACATCore.checkpoint import load_model
    from training.train_baseline import train_baseline
    cfg = brain_config(toy_brain_datalist(tmp_path), tmp_path / "run")
    path = train_baseline(cfg, 0, setup_runtime(cfg))
    model, card = load_model(path)
    assert set(model.state_dict()) == set(brain_net().state_dict())      # no lesion_cells tensors
    assert card["data"]["training"]["hyperparameters"]["lesion_loss"] == 1.0
    best = torch.load(path.parent / "checkpoint_best.pt", map_location="cpu", weights_only=True)["model"]
    assert best["lesion_cells.weight"].shape == (1, 4, 1, 1)              # the head trained alongside
    for k, v in model.state_dict().items():                                # the saved model is that best
        assert torch.equal(v, best[k])


def test_data_without_masks_is_refused_with_what_to_do(tmp_path):
    from training.train_baseline import train_baseline
    cfg = brain_config(toy_brain_datalist(tmp_path, with_masks=False), tmp_path / "run")
    with pytest.raises(ACATError, match="lesion masks"):
        train_baseline(cfg, 0, setup_runtime(cfg))
