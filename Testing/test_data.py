"""Datalists (JSON, CSV, MosMed layout) and stratified splits."""
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from ACATCore.data import (all_items, image_paths, load_datalist, mosmed_datalist, mosmed_items, save_datalist,
                           stratified_split)
from ACATCore.errors import ACATError, InputError


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


def test_one_reader_for_training_and_batches(tmp_path):
    """Every section (extra keys too), bare paths, BOM and Latin-1 bytes; image_paths for the CLI batch."""
    (tmp_path / "list.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({
        "class_names": ["normal", "findings"],
        "training": [{"image": "a.nrrd", "label": 0}, {"image": "b.nrrd", "label": "1"}],
        "extra": [{"image": "/abs/c.nrrd", "label": 1, "regions": "r.nrrd"}]}).encode())
    items = all_items(tmp_path / "list.json")
    assert [i["image"] for i in items] == [str(tmp_path / "a.nrrd"), str(tmp_path / "b.nrrd"), "/abs/c.nrrd"]
    assert [i["label"] for i in items] == [0, 1, 1] and items[2]["regions"] == str(tmp_path / "r.nrrd")
    (tmp_path / "paths.json").write_text(json.dumps(["a.nrrd", "a.nrrd", "", "b\u0000.nrrd", "/abs/c.nrrd"]))
    assert image_paths(tmp_path / "paths.json") == [tmp_path / "a.nrrd", Path("/abs/c.nrrd")]
    with pytest.raises(InputError, match="label"):
        all_items(tmp_path / "paths.json")
    (tmp_path / "l1.csv").write_bytes("caf\xe9.nrrd\nb.nrrd\n".encode("latin-1"))   # no header, not UTF-8
    paths = image_paths(tmp_path / "l1.csv")
    assert [p.name for p in paths][1] == "b.nrrd"
    assert os.fsencode(paths[0].name) == "caf\xe9.nrrd".encode("latin-1")
    (tmp_path / "empty.json").write_text(json.dumps({"test": [{"image": 5}, {"image": None}]}))
    with pytest.raises(InputError, match="image"):
        image_paths(tmp_path / "empty.json")
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(InputError, match="nested too deeply"):
        image_paths(tmp_path / "deep.json")


def test_top_level_list_is_the_training_section(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([{"image": "a.nrrd", "label": 1}]))
    assert load_datalist(tmp_path / "list.json") == [{"image": str(tmp_path / "a.nrrd"), "label": 1}]
    assert [i["label"] for i in all_items(tmp_path / "list.json")] == [1]


def test_decathlon_unlabeled_test_list_is_skipped_and_stray_entries_are_rejected(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({
        "name": "Task", "numTraining": 1, "labels": {"0": "background"},
        "training": [{"image": "imagesTr/a.nii.gz", "label": 1}], "test": ["imagesTs/x.nii.gz"]}))
    sections = load_datalist(tmp_path / "dataset.json", section=None)
    assert sections["test"] == [] and len(sections["training"]) == 1
    assert [i["image"] for i in all_items(tmp_path / "dataset.json")] == [str(tmp_path / "imagesTr/a.nii.gz")]
    assert tmp_path / "imagesTs/x.nii.gz" in image_paths(tmp_path / "dataset.json")   # a batch still sees it
    (tmp_path / "mixed.json").write_text(json.dumps({"training": [{"image": "a.nrrd", "label": 0}, "b.nrrd", 3]}))
    with pytest.raises(InputError, match=r"item 1 of 'training' is \"b.nrrd\""):
        all_items(tmp_path / "mixed.json")


def test_train_and_val_section_names_and_pooled_extra_keys(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps({
        "train": [{"image": "a.nrrd", "label": 0}], "val": [{"image": "b.nrrd", "label": 1}],
        "holdout": [{"image": "c.nrrd", "label": 1}]}))
    assert [i["image"] for i in load_datalist(tmp_path / "list.json", "training")] == [str(tmp_path / "a.nrrd")]
    assert [i["label"] for i in load_datalist(tmp_path / "list.json", "val")] == [1]
    assert [Path(i["image"]).name for i in all_items(tmp_path / "list.json")] == ["a.nrrd", "b.nrrd", "c.nrrd"]
    (tmp_path / "list.csv").write_text("image,label,split\nx.nrrd,0,train\ny.nrrd,1,val\n")
    sections = load_datalist(tmp_path / "list.csv", section=None)
    assert [len(sections[n]) for n in ("training", "validation", "test")] == [1, 1, 0]


def test_region_and_territories_paths_are_resolved(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps({"training": [
        {"image": "a.nrrd", "label": 1, "region": "r.nrrd", "territories": "sub/t.nrrd"}]}))
    item = load_datalist(tmp_path / "list.json")[0]
    assert item["region"] == str(tmp_path / "r.nrrd") and item["territories"] == str(tmp_path / "sub/t.nrrd")


def test_training_reader_checks_images_and_labels(tmp_path):
    from training.data import read_datalist
    (tmp_path / "a.nrrd").write_bytes(b"")
    (tmp_path / "ok.json").write_text(json.dumps({"train": [{"image": "a.nrrd", "label": "1"}], "test": ["x.nrrd"]}))
    assert read_datalist(tmp_path / "ok.json") == [{"image": str(tmp_path / "a.nrrd"), "label": 1}]
    (tmp_path / "seg.json").write_text(json.dumps([{"image": "a.nrrd", "label": "labelsTr/a.nii.gz"}]))
    with pytest.raises(ACATError, match="not a class index"):
        read_datalist(tmp_path / "seg.json")
    (tmp_path / "gone.json").write_text(json.dumps([{"image": "b.nrrd", "label": 0}]))
    with pytest.raises(ACATError, match="does not exist"):
        read_datalist(tmp_path / "gone.json")
