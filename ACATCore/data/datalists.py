"""Datalists: which files make a data set, with their labels. The one reader of the CLI and training.

- MONAI-style JSON: ``{"training": [{"image": ..., "label": ..., "mask": ...}], "validation": [...],
  "test": [...]}``; every other key holding a list of items counts as a section too. Relative paths
  are relative to the file's folder (as MONAI's ``load_decathlon_datalist``). ACAT-Synth writes this.
  ``train``/``val`` are read as ``training``/``validation``. A bare JSON list of items or of image
  paths is one section, ``training``. Lists of bare paths (Decathlon's ``test``) serve
  :func:`image_paths` only; the labelled readers skip them.
- CSV: a header row with an ``image`` column (``label``, ``mask``, ``saliency``, ``split`` optional;
  ``split`` puts a row into ``training``/``validation``/``test``, default ``training``), or no header:
  the first column holds image paths.
- The MosMed layout (``studies/CT-0 .. CT-4/study_XXXX.nii.gz``, ``masks/study_XXXX_mask.nii.gz``):
  :func:`mosmed_items` with the paper's binary task (CT-0 -> 0, CT-2/3/4 -> 1, CT-1 left out).

Files are read as UTF-8 (a BOM is dropped); bytes that are not UTF-8 are kept, so a Latin-1 path
still names its file. Hand-written rather than MONAI's ``load_decathlon_datalist``: that one reads
JSON only, resolves only ``image`` (not ``mask``/``saliency``/``regions``) and imports all of MONAI.
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from ..errors import ConfigError, InputError
from ..file_checks import display_path
from .splits import SPLIT_NAMES, stratified_split

PATH_KEYS = ("image", "mask", "saliency", "regions", "region", "territories")
SECTION_ALIASES = {"train": "training", "val": "validation", "valid": "validation", "testing": "test"}
MAX_DATALIST_BYTES = 64 << 20
MOSMED_BINARY = {"CT-0": 0, "CT-2": 1, "CT-3": 1, "CT-4": 1}
MOSMED_ALL = {"CT-0": 0, "CT-1": 1, "CT-2": 2, "CT-3": 3, "CT-4": 4}


def usable_path(value) -> bool:
    """A non-empty string without NUL, short enough to be a path."""
    return isinstance(value, str) and value.strip() != "" and "\0" not in value and len(value) < 4096


def _resolve(item: dict, base: Path) -> dict:
    item = dict(item)
    for key in PATH_KEYS:
        value = item.get(key)
        if usable_path(value) and not Path(value).is_absolute():
            item[key] = str(base / value)
    if "label" in item and isinstance(item["label"], str) and re.fullmatch(r"-?\d+", item["label"].strip()):
        item["label"] = int(item["label"])
    return item


def _text(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read datalist {display_path(path)} ({exc.strerror or exc})") from None
    if size > MAX_DATALIST_BYTES:
        raise InputError(f"datalist {display_path(path)} is {size:,} bytes, more than a datalist can be "
                         f"({MAX_DATALIST_BYTES:,}); split it")
    return path.read_bytes().decode("utf-8-sig", "surrogateescape")


def _section_name(name: str) -> str:
    return SECTION_ALIASES.get(name.strip().lower(), name)


def _json_sections(path: Path, text: str) -> dict:
    """{section: [entry, ...]}: the entries as written."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:   # bad JSON, numbers too long to convert, nesting too deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else " ".join(str(exc).split())[:120]
        raise InputError(f"datalist {display_path(path)} is not valid JSON ({reason})") from None
    if isinstance(doc, list):
        doc = {"training": doc}
    if not isinstance(doc, dict):
        raise InputError(f"datalist {display_path(path)} is neither a JSON object nor a list")
    sections = {}
    for name, value in doc.items():
        name = _section_name(name)
        if name in SPLIT_NAMES or (isinstance(value, list) and any(isinstance(e, dict) for e in value)):
            entries = value if isinstance(value, list) else []
            sections.setdefault(name, []).extend(entries)
    return sections


def _csv_sections(path: Path, text: str) -> dict:
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:        # a field over csv.field_size_limit() (128 KB), a NUL byte, ...
        raise InputError(f"datalist {display_path(path)} is not a valid CSV file "
                         f"({' '.join(str(exc).split())[:120]})") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "image" not in header:                     # no header: the first column holds image paths
        header, body = ["image"], rows
    else:
        body = rows[1:]
    sections = {name: [] for name in SPLIT_NAMES}
    for row in body:
        item = {k: v.strip() for k, v in zip(header, row) if k and v.strip() != ""}
        split = _section_name(item.pop("split", "training"))
        if split not in sections:
            raise InputError(f"datalist {display_path(path)}: unknown split {split!r}; use training, validation "
                             "or test")
        sections[split].append(item)
    return sections


def read_sections(path, bare_paths: bool = True) -> dict:
    """Every section of a JSON or CSV datalist: ``{name: [item, ...]}``, paths made absolute; ``train``,
    ``val`` are read as ``training``, ``validation``. A bare path becomes ``{"image": path}``; with
    ``bare_paths=False`` a section without item objects (e.g. Decathlon's unlabeled ``test`` list of
    paths) is left out and anything else among item objects is an InputError. Nothing else is checked."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"datalist {display_path(path)} does not exist")
    text = _text(path)
    sections = _csv_sections(path, text) if path.suffix.lower() == ".csv" else _json_sections(path, text)
    out = {}
    for name, entries in sections.items():
        has_items = any(isinstance(e, dict) for e in entries)
        if not bare_paths and has_items and not all(isinstance(e, dict) for e in entries):
            index = next(i for i, e in enumerate(entries) if not isinstance(e, dict))
            raise InputError(f"datalist {display_path(path)}: item {index} of {name!r} is "
                             f"{json.dumps(entries[index])[:80]}, not an object with \"image\" and \"label\"")
        if not bare_paths and not has_items:
            if name not in SPLIT_NAMES:
                continue
            entries = []
        out[name] = [_resolve(e if isinstance(e, dict) else {"image": e}, path.parent)
                     for e in entries if isinstance(e, (dict, str))]
    return out


def _check(items: list, path, require) -> list:
    for index, item in enumerate(items):
        missing = [key for key in require if key not in item or (key == "image" and not usable_path(item[key]))]
        if missing:
            raise InputError(f"datalist {display_path(path)}: item {index} has no usable {', '.join(missing)}; "
                             f"every item needs {' and '.join(repr(k) for k in require)}")
    return items


def load_datalist(path, section: str | None = "training", require=("image", "label")) -> list | dict:
    """Items of one section (``section=None``: a dict of training, validation and test) with paths made
    absolute; each item must have the keys in ``require``. Sections of bare paths count as empty."""
    sections = read_sections(path, bare_paths=False)
    if section is None:
        return {name: _check(sections.get(name, []), path, require) for name in SPLIT_NAMES}
    section = _section_name(section)
    if section not in SPLIT_NAMES and section not in sections:
        raise ConfigError(f"datalist section {section!r} unknown; use one of {SPLIT_NAMES}")
    return _check(sections.get(section, []), path, require)


def all_items(path, require=("image", "label")) -> list:
    """The item objects of every section (any key holding them) in file order, paths absolute; each must
    have the keys in ``require``. Sections of bare paths are left out; no items at all is an error."""
    items = [item for part in read_sections(path, bare_paths=False).values() for item in part]
    if not items:
        raise InputError(f"datalist {display_path(path)} lists no items with "
                         f"{' and '.join(repr(k) for k in require)} (a list of bare image paths is for "
                         "analysis, not training)")
    return _check(items, path, require)


def image_paths(path) -> list:
    """Every usable image path of the datalist (any section), each once, in file order (for a batch).
    Items without a usable image are passed over; none at all is an error."""
    paths = []
    for part in read_sections(path).values():
        for item in part:
            image = item.get("image")
            if usable_path(image) and Path(image) not in paths:
                paths.append(Path(image))
    if not paths:
        raise InputError(f"datalist {display_path(path)} has no entries with an \"image\"")
    return paths


def save_datalist(path, sections: dict, **extra) -> Path:
    """Write a MONAI-style JSON datalist (paths are written as given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**extra, **sections}, indent=1))
    return path


def mosmed_items(root, binary: bool = True) -> list:
    """Items of a MosMed (COVID19_1110) folder: ``root/studies/CT-k/*.nii(.gz)`` (+ ``root/masks``).

    ``binary=True``: the paper's task, CT-0 (label 0) vs CT-2/3/4 (label 1), CT-1 left out.
    ``binary=False``: labels 0..4. Each item has ``image``, ``label``, ``category``, ``case`` and, when
    a mask ``masks/<study>_mask.nii(.gz)`` exists, ``mask``.
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
