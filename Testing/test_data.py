"""Datalists (JSON, CSV, MosMed layout), stratified splits and the cached dataset."""
import json
from collections import Counter

import numpy as np
import pytest
import torch

from ACATCore.data import load_datalist, mosmed_datalist, mosmed_items, save_datalist, stratified_split
from ACATCore.data.datasets import CTDataset
from ACATCore.errors import InputError
from ACATCore.io import write_volume
from ACATCore.volume import Volume

SPEC = {"window": [-1000, 400], "slices": 5, "size": [32, 32], "orientation": "LPS-axial", "midline": None}


def small_ct(seed, lesion=False) -> Volume:
    rng = np.random.default_rng(seed)
    array = np.full((9, 40, 40), -1000.0, np.float32)
    array[:, 5:35, 5:35] = -800 + rng.normal(0, 20, (9, 30, 30))
    if lesion:
        array[3:6, 10:20, 10:20] = -100
    return Volume(array.astype(np.int16), spacing=(1.0, 1.0, 4.0))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cts")
    items = []
    for n in range(6):
        ct = small_ct(n, lesion=n % 2 == 1)
        write_volume(ct, root / f"ct{n}.nii.gz")
        write_volume(ct.with_array((ct.array > -500).astype(np.uint8)), root / f"mask{n}.nrrd")
        items.append({"image": f"ct{n}.nii.gz", "mask": f"mask{n}.nrrd", "label": n % 2})
    return root, items


def test_stratified_split_proportions_determinism_and_disjointness():
    items = [{"id": i, "label": int(i < 60)} for i in range(100)]          # 60 positive, 40 negative
    split = stratified_split(items, seed=1)
    sizes = {name: len(part) for name, part in split.items()}
    assert sizes == {"training": 70, "validation": 15, "test": 15}
    for name, expected in (("training", (28, 42)), ("validation", (6, 9)), ("test", (6, 9))):
        counts = Counter(item["label"] for item in split[name])
        assert (counts[0], counts[1]) == expected
    ids = [item["id"] for part in split.values() for item in part]
    assert sorted(ids) == list(range(100))
    assert stratified_split(items, seed=1) == split
    assert stratified_split(items, seed=2)["test"] != split["test"]


def test_json_and_csv_datalists_resolve_relative_paths(tmp_path):
    save_datalist(tmp_path / "list.json", {"training": [{"image": "a.nii.gz", "label": 1}],
                                           "test": [{"image": "/abs/b.nrrd", "label": 0, "mask": "m.nrrd"}]})
    train = load_datalist(tmp_path / "list.json")
    assert train == [{"image": str(tmp_path / "a.nii.gz"), "label": 1}]
    all_sections = load_datalist(tmp_path / "list.json", section=None)
    assert all_sections["test"][0]["image"] == "/abs/b.nrrd"
    assert all_sections["test"][0]["mask"] == str(tmp_path / "m.nrrd")
    assert all_sections["validation"] == []
    (tmp_path / "list.csv").write_text("image,label,split\nx.nii.gz,0,training\ny.nii.gz,1,test\nz.nii.gz,1,\n")
    csv_sections = load_datalist(tmp_path / "list.csv", section=None)
    assert [i["label"] for i in csv_sections["training"]] == [0, 1]
    assert csv_sections["test"] == [{"image": str(tmp_path / "y.nii.gz"), "label": 1}]
    (tmp_path / "bad.csv").write_text("path,class\nx,1\n")
    with pytest.raises(InputError, match="image"):
        load_datalist(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="JSON"):
        load_datalist(tmp_path / "bad.json")


def test_mosmed_layout_binary_task(tmp_path):
    root = tmp_path / "COVID19_1110"
    counts = {"CT-0": 5, "CT-1": 3, "CT-2": 2, "CT-3": 2, "CT-4": 1}
    study = 0
    for category, count in counts.items():
        (root / "studies" / category).mkdir(parents=True)
        for _ in range(count):
            study += 1
            (root / "studies" / category / f"study_{study:04d}.nii.gz").write_bytes(b"")
    (root / "masks").mkdir()
    (root / "masks" / "study_0007_mask.nii.gz").write_bytes(b"")
    items = mosmed_items(root)
    assert Counter(i["label"] for i in items) == {0: 5, 1: 5}             # CT-1 left out
    assert all(i["category"] != "CT-1" for i in items)
    assert [i for i in items if "mask" in i] == []                         # study 7 is CT-1
    everything = mosmed_items(root, binary=False)
    assert Counter(i["label"] for i in everything) == {0: 5, 1: 3, 2: 2, 3: 2, 4: 1}
    assert [i["case"] for i in everything if "mask" in i] == ["study_0007"]
    sections = mosmed_datalist(root, tmp_path / "mosmed.json", seed=0)
    assert sum(len(v) for v in sections.values()) == 10
    assert json.loads((tmp_path / "mosmed.json").read_text())["name"] == "MosMed"
    with pytest.raises(InputError, match="MosMed"):
        mosmed_items(tmp_path)


@pytest.mark.parametrize("cache", ["memory", "disk", None])
def test_dataset_returns_model_inputs_labels_and_masks(files, tmp_path, cache):
    root, items = files
    items = [{**item, "image": str(root / item["image"]), "mask": str(root / item["mask"])} for item in items]
    dataset = CTDataset(items, SPEC, cache=cache, cache_dir=tmp_path / "cache")
    assert len(dataset) == 6 and dataset.labels() == [0, 1, 0, 1, 0, 1]
    x, label, extras = dataset[1]
    assert x.shape == (5, 1, 32, 32) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert int(label) == 1 and extras["mask"].shape == (5, 1, 32, 32)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3)
    xb, yb, eb = next(iter(loader))
    assert xb.shape == (3, 5, 1, 32, 32) and yb.tolist() == [0, 1, 0] and eb["mask"].shape == (3, 5, 1, 32, 32)
    if cache == "disk":                                                    # cached on first access
        assert len(list((tmp_path / "cache").iterdir())) == 3
        assert len([dataset[i] for i in range(6)]) == 6
        assert len(list((tmp_path / "cache").iterdir())) == 6


def test_dataset_saliency_files_and_augment(files, tmp_path):
    root, items = files
    saliency = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32)
    np.save(tmp_path / "sal.npy", saliency)
    item = {"image": str(root / items[0]["image"]), "label": 0, "saliency": str(tmp_path / "sal.npy")}

    def flip(x, label, extras):
        return x.flip(-1), label, {k: v.flip(-1) for k, v in extras.items()}

    x, label, extras = CTDataset([item], SPEC, cache="memory")[0]
    np.testing.assert_allclose(extras["saliency"][:, 0].numpy(), saliency)
    xf, _, extras_f = CTDataset([item], SPEC, cache="memory", augment=flip)[0]
    torch.testing.assert_close(xf, x.flip(-1))
    torch.testing.assert_close(extras_f["saliency"], extras["saliency"].flip(-1))
    np.save(tmp_path / "wrong.npy", saliency[:3])
    with pytest.raises(InputError, match="saliency"):
        CTDataset([{**item, "saliency": str(tmp_path / "wrong.npy")}], SPEC, cache=None)[0]
