"""Datalists: which files make a data set, with their labels.

- MONAI-style JSON: ``{"training": [{"image": ..., "label": ..., "mask": ...}], "validation": [...],
  "test": [...]}``; relative paths are relative to the JSON file's folder (as MONAI's
  ``load_decathlon_datalist`` does). ACAT-Synth writes this format.
- CSV with a header row; columns ``image`` and ``label`` at least (``mask``, ``saliency``, ``split``
  optional; ``split`` puts a row into ``training``/``validation``/``test``, default ``training``).
- The MosMed layout (``studies/CT-0 .. CT-4/study_XXXX.nii.gz``, ``masks/study_XXXX_mask.nii.gz``):
  :func:`mosmed_items` with the paper's binary task (CT-0 -> 0, CT-2/3/4 -> 1, CT-1 left out).
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from ..errors import ConfigError, InputError
from .splits import SPLIT_NAMES, stratified_split

PATH_KEYS = ("image", "mask", "saliency", "regions")
MOSMED_BINARY = {"CT-0": 0, "CT-2": 1, "CT-3": 1, "CT-4": 1}
MOSMED_ALL = {"CT-0": 0, "CT-1": 1, "CT-2": 2, "CT-3": 3, "CT-4": 4}


def _resolve(item: dict, base: Path) -> dict:
    item = dict(item)
    for key in PATH_KEYS:
        value = item.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            item[key] = str(base / value)
    if "label" in item and isinstance(item["label"], str) and re.fullmatch(r"-?\d+", item["label"].strip()):
        item["label"] = int(item["label"])
    return item


def load_datalist(path, section: str | None = "training") -> list | dict:
    """Items of one section (``section=None``: a dict of all three) with paths made absolute."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"datalist {path} does not exist")
    base = path.parent
    if path.suffix.lower() == ".csv":
        sections = {name: [] for name in SPLIT_NAMES}
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "image" not in reader.fieldnames or "label" not in reader.fieldnames:
                raise InputError(f"{path}: a CSV datalist needs a header with 'image' and 'label' columns")
            for row in reader:
                row = {k: v for k, v in row.items() if v not in (None, "")}
                split = row.pop("split", "training")
                if split not in sections:
                    raise InputError(f"{path}: unknown split {split!r}; use training, validation or test")
                sections[split].append(_resolve(row, base))
    else:
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"datalist {path} is not valid JSON ({exc})") from None
        sections = {name: [_resolve(item, base) for item in data.get(name, [])] for name in SPLIT_NAMES}
    if section is None:
        return sections
    if section not in sections:
        raise ConfigError(f"datalist section {section!r} unknown; use one of {SPLIT_NAMES}")
    return sections[section]


def save_datalist(path, sections: dict, **extra) -> Path:
    """Write a MONAI-style JSON datalist (paths are written as given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**extra, **sections}, indent=1))
    return path


def mosmed_items(root, binary: bool = True) -> list:
    """Items of a MosMed (COVID19_1110) folder: ``root/studies/CT-k/*.nii(.gz)`` (+ ``root/masks``).

    ``binary=True``: the paper's task, CT-0 (label 0) vs CT-2/3/4 (label 1), CT-1 left out.
    ``binary=False``: labels 0..4. Each item has ``image``, ``label``, ``category`` and, when a mask
    ``masks/<study>_mask.nii.gz`` exists, ``mask``.
    """
    root = Path(root)
    studies = root / "studies"
    if not studies.is_dir():
        raise InputError(f"{root} is not a MosMed folder: it has no studies/ folder with CT-0..CT-4")
    labels = MOSMED_BINARY if binary else MOSMED_ALL
    masks = root / "masks"
    items = []
    for category in sorted(labels):
        folder = studies / category
        if not folder.is_dir():
            continue
        for image in sorted(folder.iterdir()):
            if not (image.name.endswith(".nii.gz") or image.name.endswith(".nii")):
                continue
            study = image.name.split(".nii")[0]
            item = {"image": str(image), "label": labels[category], "category": category, "case": study}
            for candidate in (masks / f"{study}_mask.nii.gz", masks / f"{study}_mask.nii"):
                if candidate.exists():
                    item["mask"] = str(candidate)
                    break
            items.append(item)
    if not items:
        raise InputError(f"no studies found under {studies}/CT-*; check the MosMed folder")
    return items


def mosmed_datalist(root, out_path=None, seed: int = 0, binary: bool = True) -> dict:
    """MosMed items split 70/15/15 stratified by label; written to ``out_path`` when given."""
    sections = stratified_split(mosmed_items(root, binary), seed=seed)
    if out_path is not None:
        save_datalist(out_path, sections, name="MosMed", seed=seed, binary=binary)
    return sections
