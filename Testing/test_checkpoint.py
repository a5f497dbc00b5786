"""Tests of ACATCore.checkpoint: safe model files, their cards, every way a file can be bad, bundles."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from ACATCore.checkpoint import SCHEMA_VERSION, card_digest, load_bundle, load_model, save_model, sha256_of
from ACATCore.errors import ConfigError, ModelFileError
from ACATCore.models import build_model

torch.set_num_threads(2)

TINY_BRAIN = {"widths": [4, 4, 6, 6, 8, 8, 8]}
TINY_LUNG = {"block_inplanes": [4, 4, 8, 8], "layers": [1, 1, 1, 1]}
PREP = {"window": [-1000, 400], "slices": 3, "size": [32, 32], "orientation": "LPS-axial", "midline": None}


def _randomise(model):
    torch.manual_seed(3)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t).abs() + 0.1)  # also BN running stats: nothing left at its default
    return model


@pytest.fixture
def saved(tmp_path):
    model = _randomise(build_model("acat_lung", **TINY_LUNG))
    path = tmp_path / "acat.safetensors"
    card = save_model(model, path, {"task": "lung", "preprocessing": PREP, "metrics": {"accuracy": 0.5}})
    return model, path, card


def _edit_card(path, reseal=True, **changes):
    """Change card fields; ``reseal``: recompute card_sha256 (a deliberate edit, checked on its merits)."""
    card_file = path.with_suffix(".json")
    card = json.loads(card_file.read_text())
    card.update(changes)
    if reseal:
        card["card_sha256"] = card_digest(card)
    card_file.write_text(json.dumps(card))
    return card


@pytest.mark.parametrize("name,config", [("brain_mtl", TINY_BRAIN), ("acat_lung", TINY_LUNG),
                                         ("autoencoder", {"stem_channels": 4}),
                                         ("seatt", {"backbone": "brain", **TINY_BRAIN})])
def test_round_trip_is_bit_exact(tmp_path, name, config):
    model = _randomise(build_model(name, **config))
    path = tmp_path / f"{name}.safetensors"
    card = save_model(model, path, {"task": "brain"})
    loaded, loaded_card = load_model(path)
    assert loaded_card == card
    assert not loaded.training
    assert loaded.model_name == name and loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    model.eval()
    if name == "autoencoder":
        x = torch.rand(2, 1, 32, 32)
        assert torch.equal(model(x), loaded(x))
    else:
        x = torch.rand(1, 2, 1, 32, 64)
        args = (x, torch.rand_like(x)) if model.needs_saliency else (x,)
        with torch.no_grad():
            assert torch.equal(model(*args), loaded(*args))


def test_card_contents(saved):
    model, path, card = saved
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk == card
    for key in ("schema_version", "model_name", "model_config", "task", "class_names", "preprocessing", "data",
                "metrics", "sha256", "created", "acat_version", "intended_use"):
        assert key in card, key
    assert card["schema_version"] == SCHEMA_VERSION
    assert card["model_name"] == "acat_lung" and card["model_config"] == model.config
    assert card["sha256"] == sha256_of(path)
    assert card["class_names"] == ["normal", "findings"] and card["preprocessing"] == PREP
    assert sorted(os.listdir(path.parent)) == ["acat.json", "acat.safetensors"]  # no temp files left
    assert os.stat(path).st_mode & 0o044  # readable by others: bundles are shared


def test_no_pickle_anywhere(saved, monkeypatch):
    _, path, _ = saved

    def refuse(*args, **kwargs):
        raise AssertionError("a model file must never be unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    model, _ = load_model(path)
    assert model.model_name == "acat_lung"
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then a JSON header


def test_missing_files(saved, tmp_path):
    _, path, _ = saved
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nothing.safetensors")
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelFileError, match="card acat.json is missing"):
        load_model(path)


def test_corrupted_weights(saved):
    _, path, _ = saved
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_model(path)


def test_newer_schema(saved):
    _, path, _ = saved
    _edit_card(path, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(ModelFileError, match="newer schema"):
        load_model(path)


def test_broken_card(saved):
    _, path, _ = saved
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(path)
    path.with_suffix(".json").write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(ModelFileError, match="lacks"):
        load_model(path)


def test_unknown_model_name(saved):
    _, path, _ = saved
    _edit_card(path, model_name="acat_knee")
    with pytest.raises(ModelFileError, match="unknown model name 'acat_knee'"):
        load_model(path)


def test_wrong_architecture(saved):
    model, path, _ = saved
    _edit_card(path, model_config={**model.config, "block_inplanes": [4, 4, 8, 16]})
    with pytest.raises(ModelFileError, match="shape"):
        load_model(path)
    _edit_card(path, model_name="lung_resnet50", model_config=TINY_LUNG)
    with pytest.raises(ModelFileError, match="different architecture"):
        load_model(path)
    _edit_card(path, model_name="acat_lung", model_config={**model.config, "colour": "red"})
    with pytest.raises(ModelFileError, match="model_config does not build"):
        load_model(path)


def test_not_a_safetensors_file(saved):
    _, path, _ = saved
    path.write_bytes(b"\x80\x04not a safetensors file at all")  # e.g. a pickle renamed
    _edit_card(path, sha256=sha256_of(path))
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_model(path)


def test_save_rejects_unknown_card_fields(tmp_path):
    model = build_model("brain_mtl", **TINY_BRAIN)
    with pytest.raises(ConfigError, match="unknown model card"):
        save_model(model, tmp_path / "m.safetensors", {"colour": "red"})
    with pytest.raises(ConfigError, match="build_model"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "m.safetensors", {})


def _write_bundle(folder):
    classifier = build_model("lung_resnet50", **TINY_LUNG)
    acat = build_model("acat_lung", **TINY_LUNG)
    acat.init_from_baseline(classifier)
    card = {"task": "lung", "preprocessing": PREP}
    save_model(classifier, folder / "classifier.safetensors", card)
    save_model(build_model("autoencoder", stem_channels=4), folder / "autoencoder.safetensors",
               {"task": "lung", "preprocessing": PREP})
    save_model(acat, folder / "acat.safetensors", card)


def test_bundle_by_folder_and_by_name(tmp_path, monkeypatch):
    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    _write_bundle(folder)
    bundle = load_bundle(folder)
    assert bundle.classifier.model_name == "lung_resnet50"
    assert bundle.autoencoder.model_name == "autoencoder"
    assert bundle.acat.model_name == "acat_lung" and bundle.card["model_name"] == "acat_lung"
    monkeypatch.setenv("ACAT_RESOURCES", str(tmp_path))
    assert load_bundle("tiny").acat.config == bundle.acat.config
    with pytest.raises(ModelFileError, match="no shipped model bundle named 'knee'.*tiny"):
        load_bundle("knee")
    (folder / "autoencoder.safetensors").unlink()
    with pytest.raises(ModelFileError, match="lacks autoencoder.safetensors"):
        load_bundle(folder)


def test_card_hash_covers_the_card(saved):
    """An edit of the card without re-sealing it is caught; reseal_card accepts a deliberate one."""
    from ACATCore.checkpoint import reseal_card
    _, path, _ = saved
    _edit_card(path, reseal=False, class_names=["findings", "normal"])
    with pytest.raises(ModelFileError, match="card_sha256"):
        load_model(path)
    reseal_card(path)
    assert load_model(path)[1]["class_names"] == ["findings", "normal"]


@pytest.mark.parametrize("field,value,needle", [
    ("class_names", ["only one"], "outputs"), ("class_names", [1, 2], "class_names"),
    ("preprocessing", {**PREP, "window": [float("-inf"), 400]}, "window"),
    ("preprocessing", {**PREP, "slices": 100000}, "slices"),
    ("model_config", {**TINY_LUNG, "layers": [1000000, 1, 1, 1]}, "layers"),
    ("model_config", {**TINY_LUNG, "block_inplanes": [100000, 4, 8, 8]}, "out of range"),
])
def test_card_values_are_checked_before_any_tensor(saved, field, value, needle):
    _, path, _ = saved
    _edit_card(path, **{field: value})
    with pytest.raises(ModelFileError, match=needle):
        load_model(path)


def test_new_optional_card_keys_are_accepted(saved):
    _, path, _ = saved
    _edit_card(path, preprocessing={**PREP, "brain_extraction": True})
    load_model(path)
    _edit_card(path, preprocessing={**PREP, "brain_extraction": "yes"})
    with pytest.raises(ModelFileError, match="brain_extraction"):
        load_model(path)
    _edit_card(path, preprocessing={**PREP, "lung_extraction": True})
    load_model(path)
    _edit_card(path, preprocessing={**PREP, "lung_extraction": 1})
    with pytest.raises(ModelFileError, match="lung_extraction"):
        load_model(path)
    _edit_card(path, preprocessing={**PREP, "lung_box": True})
    load_model(path)
    _edit_card(path, preprocessing={**PREP, "lung_box": "yes"})
    with pytest.raises(ModelFileError, match="lung_box"):
        load_model(path)


def test_nan_weights_with_a_matching_hash_are_refused(saved):
    from safetensors.torch import load_file, save_file
    _, path, _ = saved
    tensors = load_file(str(path))
    key = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(path))
    _edit_card(path, sha256=sha256_of(path))
    with pytest.raises(ModelFileError, match="NaN"):
        load_model(path)


def test_shipped_cards_are_sealed():
    from ACATCore.checkpoint import read_card
    from ACATCore.resources import resources_dir
    cards = sorted((resources_dir() / "models").glob("*/*.json"))
    assert cards
    for card in cards:
        read_card(card.with_suffix(".safetensors"))
