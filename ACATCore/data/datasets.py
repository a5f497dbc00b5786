"""A torch Dataset of prepared CT volumes, cached so that training is not bound by decoding CT.

``CTDataset(items, spec)`` reads each item's ``image`` with :func:`ACATCore.io.read_volume`,
prepares it with :func:`ACATCore.preprocessing.prepare` (the model card's spec) and returns

    (x, label, extras)

with ``x`` a float32 tensor (S, 1, H, W) in [0, 1], ``label`` an int64 scalar tensor and ``extras``
a dict holding, when the item has them, ``"mask"`` (S, 1, H, W) float32 (the item's ``mask`` file
sampled like ``x``, nearest neighbour, values kept) and ``"saliency"`` (S, 1, H, W) float32 (a
``.npy``/``.npz`` file already on the model grid, or a volume file on the image's grid, sampled like
``x``). The default collate turns a batch into ``(B, S, 1, H, W)``, ``(B,)`` and a dict of batches.

Caching (MONAI): ``cache="memory"`` (``monai.data.CacheDataset``: everything decoded once, kept in
RAM), ``cache="disk"`` (``monai.data.PersistentDataset`` in ``cache_dir``: decoded once, reused by
later runs; the cache key is the item and the spec) or ``cache=None``. Random augmentation must come
after the cache: pass ``augment``, a callable ``(x, label, extras) -> (x, label, extras)``.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Transform

from ..errors import ACATError, ConfigError, InputError
from ..io import read_volume
from ..preprocessing import check_spec, prepare


class LoadPrepared(Transform):
    """MONAI transform: datalist item -> dict with ``x``, ``label`` and optional ``mask``/``saliency``."""

    def __init__(self, spec: dict, offset: float = 0.0):
        self.spec = check_spec(spec)
        self.offset = float(offset)

    def __call__(self, item: dict) -> dict:
        prepared = prepare(read_volume(item["image"]), self.spec, self.offset)
        out = {"x": prepared.tensor, "label": torch.tensor(int(item.get("label", -1)), dtype=torch.long)}
        if item.get("mask"):
            mask = prepared.to_model_grid(read_volume(item["mask"]), mode="nearest")
            out["mask"] = torch.from_numpy(mask)[:, None]
        if item.get("saliency"):
            out["saliency"] = self._saliency(item["saliency"], prepared)
        return out

    def _saliency(self, path: str, prepared) -> torch.Tensor:
        S, (H, W) = self.spec["slices"], self.spec["size"]
        if path.endswith(".npy") or path.endswith(".npz"):
            array = np.load(path)
            if isinstance(array, np.lib.npyio.NpzFile):
                array = array["saliency"] if "saliency" in array.files else array[array.files[0]]
            array = np.asarray(array, dtype=np.float32).reshape(-1, H, W)
        else:
            array = prepared.to_model_grid(read_volume(path), mode="bilinear")
        if array.shape != (S, H, W):
            raise InputError(f"saliency {path} has shape {array.shape}; expected {(S, H, W)} (model grid)")
        return torch.from_numpy(np.ascontiguousarray(array))[:, None]


def _hash_item(item: dict, spec: dict, offset: float) -> bytes:
    key = json.dumps({"item": {k: item[k] for k in sorted(item) if isinstance(item[k], (str, int, float))},
                      "spec": spec, "offset": offset}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest().encode()


@contextlib.contextmanager
def _acat_errors_unwrapped():
    """MONAI wraps a transform's exception in RuntimeError: re-raise ACAT's own error instead."""
    try:
        yield
    except RuntimeError as exc:
        cause = exc.__cause__
        while isinstance(cause, RuntimeError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ACATError):
            raise cause from None
        raise


class CTDataset(torch.utils.data.Dataset):
    """Prepared CT volumes from datalist items; see the module docstring."""

    def __init__(self, items: list, spec: dict, cache: str | None = "memory", cache_dir=None,
                 offset: float = 0.0, augment=None, cache_workers: int = 0, progress: bool = False):
        items = [dict(item) for item in items]
        for index, item in enumerate(items):
            if "image" not in item:
                raise ConfigError(f"datalist item {index} has no 'image'")
        transform = LoadPrepared(spec, offset)
        self.items, self.spec, self.augment = items, transform.spec, augment
        with _acat_errors_unwrapped():
            self.data = self._make(items, transform, cache, cache_dir, cache_workers, progress)

    @staticmethod
    def _make(items, transform, cache, cache_dir, cache_workers, progress):
        if cache == "memory":
            return CacheDataset(items, transform, cache_rate=1.0, num_workers=max(1, cache_workers),
                                progress=progress)
        elif cache == "disk":
            if cache_dir is None:
                raise ConfigError("cache='disk' needs a cache_dir")
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            hash_func = functools.partial(_hash_item, spec=transform.spec, offset=transform.offset)
            return PersistentDataset(items, transform, cache_dir=cache_dir, hash_func=hash_func)
        if cache is None:
            return Dataset(items, transform)
        raise ConfigError(f"cache={cache!r}; use 'memory', 'disk' or None")

    def __len__(self) -> int:
        return len(self.data)

    def labels(self) -> list:
        return [int(item.get("label", -1)) for item in self.items]

    def __getitem__(self, index):
        with _acat_errors_unwrapped():
            sample = self.data[index]
        extras = {key: sample[key] for key in ("mask", "saliency") if key in sample}
        out = (sample["x"], sample["label"], extras)
        return self.augment(*out) if self.augment is not None else out
