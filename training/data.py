"""The run's data: ACAT-Synth or a datalist, prepared once into memory-mapped model inputs, split
per run seed, with the saliency maps of make_saliency attached.

Cache (``<out_dir>/cache``): x.npy (N, S, 1, H, W) float16 in [0, 1]; y.npy (N,) labels; size.npy
(N,) lesion-size group (0 when unknown or no lesion); mask.npy / regions.npy (N, S, H, W) uint8
when the data has them; meta.json (cache key, ids, preprocessing).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ACATCore.errors import ACATError, ConfigError
from training.runtime import Runtime, derive_seed

SPLITS = ("train", "val", "test")
REGION_KEYS = ("regions", "region", "territories")    # datalist keys of a region-label volume


def run_dir(cfg: dict, seed: int) -> Path:
    """The folder of one run seed: <out_dir>/seed<seed>."""
    return Path(cfg["out_dir"]) / f"seed{seed}"


def synth_dir(cfg: dict) -> Path:
    return Path(cfg["out_dir"]) / "synth"


def datalist_path(cfg: dict, workers: int = 1) -> Path:
    """The datalist of the run's data; generates ACAT-Synth first (in `workers` processes) when
    data.source == 'synth'."""
    data = cfg["data"]
    if data["source"] == "datalist":
        p = Path(data["datalist"])
        if not p.is_file():
            raise ACATError(f"datalist {p} not found; set data.datalist to your MONAI-style "
                            "JSON file, or use data.source=synth")
        return p
    path = synth_dir(cfg) / "datalist.json"        # written last by the generator
    from ACATCore.data import synth
    options = {k: v for k, v in synth.check_options(cfg["task"], data["synth_options"]).items()
               if v is not None}
    want = (cfg["task"], int(data["n"]), int(data["synth_seed"]), options, synth.GENERATOR_VERSION)
    if path.exists():
        have = json.loads(path.read_text())
        if (have.get("task"), have.get("n"), have.get("seed"), have.get("options", {}),
                have.get("version")) == want:
            return path
    synth.generate(*want[:3], out_dir=synth_dir(cfg), options=options, workers=workers)
    return path


def read_datalist(path: Path) -> list:
    """Every item of a datalist (ACATCore.data.datalists.all_items: all sections pooled in file order,
    paths absolute), each with an integer class label and an image that exists."""
    from ACATCore.data.datalists import all_items
    entries = all_items(path)
    for e in entries:
        if not isinstance(e["label"], int) or isinstance(e["label"], bool):
            raise ACATError(f"datalist {path}: label {e['label']!r} of {e['image']} is not a class index; "
                            "labels are integers (0 = negative)")
        if not Path(e["image"]).exists():
            raise ACATError(f"image {e['image']} listed in {path} does not exist")
    return entries


def split_indices(labels: np.ndarray, fractions, seed: int) -> dict:
    """Stratified train/val/test volume indices for one run seed (ACATCore.data.splits)."""
    from ACATCore.data.splits import stratified_split
    items = [{"label": int(v), "index": i} for i, v in enumerate(labels)]
    parts = stratified_split(items, fractions, seed=seed)
    return {s: np.array(sorted(it["index"] for it in parts[name]), dtype=np.int64)
            for s, name in zip(SPLITS, ("training", "validation", "test"))}


def _region_key(entry: dict):
    for key in REGION_KEYS:
        if key in entry and isinstance(entry[key], str):
            return key
    return None


def _size_group(entry: dict) -> int:
    """Lesion-size group k of 'IS-k' (brain) or 'LS-k' (lung); the largest for several lesions
    ('IS-2+IS-3' -> 3); 0 for none or unknown."""
    for key in ("size_group", "infarct_size", "size"):
        v = entry.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, str) and v:
            groups = [int(t.split("-")[-1]) for t in v.split("+") if t.split("-")[-1].isdigit()]
            if groups:
                return max(groups)
    return 0


def cache_key(cfg: dict) -> str:
    """What the prepared arrays depend on: preprocessing, the data's source and generator version."""
    from ACATCore.data.synth import GENERATOR_VERSION
    data = cfg["data"]
    return hashlib.sha256(json.dumps([data["preprocessing"], data["source"], data["datalist"],
                                      data["n"], data["synth_seed"], data["synth_options"] or {},
                                      GENERATOR_VERSION], sort_keys=True).encode()).hexdigest()[:16]


def preparation_workers() -> int:
    """Processes for generating and preparing the data: the cores this process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()   # macOS: no affinity
    return max(1, min(8, cores or 1))


def prepare_dataset(cfg: dict, rt: Runtime, workers: Optional[int] = None) -> Path:
    """Prepare every volume of the data once (rank 0 writes, in `workers` processes, default
    preparation_workers(); the other ranks wait); the cache folder."""
    cache = Path(cfg["out_dir"]) / "cache"
    meta_path = cache / "meta.json"
    key = cache_key(cfg)
    if rt.is_main:
        ok = meta_path.exists() and json.loads(meta_path.read_text()).get("key") == key
        if not ok:
            _write_cache(cfg, cache, key, workers or preparation_workers())
    rt.barrier()
    return cache


def _prepared(entry: dict, pre: dict, with_mask: bool, with_regions: bool):
    """One datalist entry on the model grid: (input float16, lesion mask, region labels; None when absent)."""
    from ACATCore.io import read_volume
    from ACATCore.preprocessing import prepare

    prep = prepare(read_volume(entry["image"]), pre)
    mask = prep.to_model_grid(read_volume(entry["mask"]), mode="max") if with_mask else None
    regions = prep.to_model_grid(read_volume(entry[_region_key(entry)]), mode="nearest") if with_regions else None
    return prep.tensor.numpy().astype(np.float16), mask, regions


def _all_prepared(entries: list, pre: dict, with_mask: bool, with_regions: bool, workers: int):
    """_prepared of every entry, in order: in this process, or in `workers` fresh one-thread processes
    (spawned: forking a process that has run torch's thread pools can hang)."""
    args = (entries, [pre] * len(entries), [with_mask] * len(entries), [with_regions] * len(entries))
    if workers <= 1:
        yield from map(_prepared, *args)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield from pool.map(_prepared, *args, chunksize=4)


def _write_cache(cfg: dict, cache: Path, key: str, workers: int):
    from tqdm import tqdm

    pre = cfg["data"]["preprocessing"]
    entries = read_datalist(datalist_path(cfg, workers))
    cache.mkdir(parents=True, exist_ok=True)
    n, s = len(entries), int(pre["slices"])
    h, w = pre["size"]
    x = np.lib.format.open_memmap(cache / "x.npy.tmp", mode="w+", dtype=np.float16,
                                  shape=(n, s, 1, h, w))
    has_mask = all(isinstance(e.get("mask"), str) for e in entries)
    has_regions = all(_region_key(e) for e in entries)
    mask = np.zeros((n, s, h, w), np.uint8) if has_mask else None
    regions = np.zeros((n, s, h, w), np.uint8) if has_regions else None
    y = np.array([int(e["label"]) for e in entries], dtype=np.int64)
    size = np.array([_size_group(e) if e["label"] else 0 for e in entries], dtype=np.int64)
    done = _all_prepared(entries, pre, has_mask, has_regions, workers)
    for i, (xi, mi, ri) in enumerate(tqdm(done, total=n, desc="prepare", disable=not sys.stderr.isatty())):
        x[i] = xi
        if has_mask:
            mask[i] = mi
        if has_regions:
            regions[i] = ri
    x.flush()
    del x
    os.replace(cache / "x.npy.tmp", cache / "x.npy")
    np.save(cache / "y.npy", y)
    np.save(cache / "size.npy", size)
    if has_mask:
        np.save(cache / "mask.npy", mask)
    if has_regions:
        np.save(cache / "regions.npy", regions)
    meta = {"key": key, "preprocessing": pre, "n": n,
            "ids": [str(e.get("id", Path(e["image"]).name)) for e in entries],
            "has_mask": has_mask,
            "has_regions": has_regions}
    (cache / "meta.json").write_text(json.dumps(meta, indent=1))


@dataclass
class DataSet:
    """A split of the prepared data: memory-mapped arrays and the volume indices of this split."""
    cache: Path
    indices: np.ndarray
    saliency: Optional[np.ndarray] = None          # (len(indices), S, 1, H, W), split order
    _arrays: dict = field(default_factory=dict)

    def array(self, name: str) -> Optional[np.ndarray]:
        """The whole cached array `name` (x, y, size, mask, regions), memory-mapped; None if absent."""
        if name not in self._arrays:
            p = self.cache / f"{name}.npy"
            self._arrays[name] = np.load(p, mmap_mode="r") if p.exists() else None
        return self._arrays[name]

    def __len__(self):
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.array("y")[self.indices]

    def get(self, positions, with_saliency=False, with_mask=False) -> dict:
        """The batch at split positions `positions` (not global indices): tensors x, y, index
        (and saliency; and mask (B, S, 1, H, W) float, 1 in lesion)."""
        positions = np.asarray(positions)
        g = self.indices[positions]
        order = np.argsort(g)                 # memmap fancy indexing wants sorted indices
        inv = np.argsort(order)
        out = {"x": torch.from_numpy(self.array("x")[g[order]][inv].astype(np.float32)),
               "y": torch.from_numpy(self.array("y")[g]), "index": torch.from_numpy(g)}
        if with_saliency:
            if self.saliency is None:
                raise ACATError("this model needs saliency maps; run "
                                "python -m training.make_saliency first")
            out["saliency"] = torch.from_numpy(np.asarray(self.saliency[positions], np.float32))
        if with_mask:
            mask = self.array("mask")
            if mask is None:
                raise ACATError("baseline.lesion_loss needs the data's lesion masks: give every datalist entry a "
                                "'mask' (ACAT-Synth has them), or set baseline.lesion_loss to 0")
            out["mask"] = torch.from_numpy(mask[g[order]][inv].astype(np.float32))[:, :, None]
        return out


def load_splits(cfg: dict, rt: Runtime, seed: int) -> dict:
    """The run seed's train/val/test DataSets (training set cut to data.max_train if set)."""
    cache = prepare_dataset(cfg, rt)
    y = np.load(cache / "y.npy")
    parts = split_indices(y, cfg["data"]["split"], seed)
    m = cfg["data"]["max_train"]
    if m:
        if m > len(parts["train"]):
            raise ConfigError(f"data.max_train={m} exceeds the {len(parts['train'])} training "
                              "volumes available")
        rng = np.random.default_rng(derive_seed("limited", seed, m))
        keep = _stratified_subset(y[parts["train"]], m, rng)
        parts["train"] = parts["train"][keep]
    return {s: DataSet(cache, parts[s]) for s in SPLITS}


def _stratified_subset(labels, m, rng) -> np.ndarray:
    """Sorted positions of `m` samples keeping the class proportions (at least one per class)."""
    n = len(labels)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(m * len(idx) / n)))
        chosen += rng.permutation(idx)[:k].tolist()
    chosen = rng.permutation(np.array(chosen))[:m]
    return np.sort(chosen)


def saliency_done(root: Path) -> bool:
    """Whether make_saliency has written every split's maps under `root`."""
    return all((root / "saliency" / f"{s}.npy").exists() for s in SPLITS)


def attach_saliency(cfg: dict, seed: int, splits: dict, root=None):
    """Memory-map make_saliency's maps onto the splits (a clear error when missing)."""
    sdir = Path(root or run_dir(cfg, seed)) / "saliency"
    for name, ds in splits.items():
        p = sdir / f"{name}.npy"
        if not p.exists():
            raise ACATError(f"saliency maps {p} not found; run python -m training.make_saliency "
                            "with the same config and seed first")
        sal = np.load(p, mmap_mode="r")
        idx = np.load(sdir / f"{name}_index.npy")
        if len(idx) != len(ds) or set(idx.tolist()) != set(ds.indices.tolist()):
            raise ACATError(f"saliency maps {p} were made for another split; rerun "
                            "python -m training.make_saliency")
        pos = {int(g): i for i, g in enumerate(idx)}
        ds.saliency = _Reindexed(sal, np.array([pos[int(g)] for g in ds.indices]))


class _Reindexed:
    """Index an array through a permutation without copying it (for memmaps)."""

    def __init__(self, arr, order):
        self.arr, self.order = arr, order

    def __getitem__(self, positions):
        rows = self.order[np.asarray(positions)]
        srt = np.argsort(rows)
        return np.asarray(self.arr[rows[srt]])[np.argsort(srt)]

    def __len__(self):
        return len(self.order)
