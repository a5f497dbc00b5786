"""Volumes and analysis results to and from ``.npz`` files, without pickle.

Used to hand an input volume to the background worker process and its ``AnalysisResult`` back.
Arrays are stored as numpy arrays, everything else as one JSON header; files are loaded with
``allow_pickle=False`` so a result file can never run code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ACATCore.result import AnalysisResult
from ACATCore.volume import Volume

FORMAT = "acat-slicer-transfer/1"


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def _put_volume(arrays: dict, header: dict, key: str, volume: Volume) -> None:
    arrays[f"{key}.array"] = np.asarray(volume.array)
    header.setdefault("volumes", {})[key] = {
        "spacing": list(volume.spacing), "origin": list(volume.origin),
        "direction": np.asarray(volume.direction).tolist(), "metadata": volume.metadata,
    }


def _get_volume(data, header: dict, key: str) -> Volume:
    meta = header["volumes"][key]
    return Volume(array=data[f"{key}.array"], spacing=meta["spacing"], origin=meta["origin"],
                  direction=np.asarray(meta["direction"]), metadata=meta.get("metadata") or {})


def _atomic_savez(path, arrays: dict, header: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    arrays = dict(arrays)
    arrays["header"] = np.frombuffer(json.dumps(header, default=_json_default).encode("utf-8"), dtype=np.uint8)
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _load(path):
    data = np.load(path, allow_pickle=False)
    header = json.loads(bytes(data["header"]).decode("utf-8"))
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not an ACAT transfer file (format {header.get('format')!r})")
    return data, header


def save_volume(volume: Volume, path) -> None:
    arrays, header = {}, {"format": FORMAT, "kind": "volume"}
    _put_volume(arrays, header, "volume", volume)
    _atomic_savez(path, arrays, header)


def load_volume(path) -> Volume:
    data, header = _load(path)
    with data:
        return _get_volume(data, header, "volume")


def save_result(result: AnalysisResult, path, include_input: bool = False, outputs=None) -> None:
    """Write ``result``; the input volume is left out unless asked (the caller has it).

    ``outputs``: the output groups to keep (``ACATLib.results.OUTPUT_GROUPS``; None: all). Maps not
    asked for are not written, so they never reach Slicer's memory."""
    from .outputs import wanted_parts
    keep_saliency, attention_names, counterfactual_names = wanted_parts(result, outputs)
    arrays: dict = {}
    header: dict = {
        "format": FORMAT, "kind": "result", "class_names": list(result.class_names),
        "attention_names": attention_names,
        "counterfactual_names": counterfactual_names,
        "peak_index": None if result.peak_index is None else [int(v) for v in result.peak_index],
        "peak_lps": None if result.peak_lps is None else [float(v) for v in result.peak_lps],
        "peak_territory": result.peak_territory, "model_card": result.model_card,
        "timings": result.timings, "warnings": [str(w) for w in result.warnings],
        "has_input": bool(include_input), "has_saliency": keep_saliency,
    }
    arrays["probabilities"] = np.asarray(result.probabilities, dtype=np.float64)
    arrays["slice_weights"] = np.asarray(result.slice_weights, dtype=np.float64)
    arrays["slices_seen"] = np.asarray(result.slices_seen, dtype=np.int64)
    if result.baseline_probabilities is not None:
        arrays["baseline_probabilities"] = np.asarray(result.baseline_probabilities, dtype=np.float64)
    if include_input:
        _put_volume(arrays, header, "input", result.input)
    if keep_saliency:
        _put_volume(arrays, header, "saliency", result.saliency)
    for i, name in enumerate(header["attention_names"]):
        _put_volume(arrays, header, f"attention{i}", result.attention[name])
    for i, name in enumerate(header["counterfactual_names"]):
        _put_volume(arrays, header, f"counterfactual{i}", result.counterfactuals[name])
    _atomic_savez(path, arrays, header)


def load_result(path, input_volume: Volume = None) -> AnalysisResult:
    """Read a result written by :func:`save_result`; ``input_volume`` is required when the file
    does not hold the input."""
    data, header = _load(path)
    with data:
        if header["has_input"]:
            input_volume = _get_volume(data, header, "input")
        elif input_volume is None:
            raise ValueError(f"{path} does not hold the input volume: pass input_volume")
        return AnalysisResult(
            input=input_volume, class_names=header["class_names"],
            probabilities=data["probabilities"],
            saliency=_get_volume(data, header, "saliency") if header["has_saliency"] else None,
            attention={n: _get_volume(data, header, f"attention{i}")
                       for i, n in enumerate(header["attention_names"])},
            counterfactuals={n: _get_volume(data, header, f"counterfactual{i}")
                             for i, n in enumerate(header["counterfactual_names"])},
            slice_weights=data["slice_weights"], slices_seen=data["slices_seen"],
            baseline_probabilities=data["baseline_probabilities"] if "baseline_probabilities" in data else None,
            peak_index=None if header["peak_index"] is None else tuple(header["peak_index"]),
            peak_lps=None if header["peak_lps"] is None else tuple(header["peak_lps"]),
            peak_territory=header["peak_territory"], model_card=header["model_card"] or {},
            timings=header["timings"] or {}, warnings=header["warnings"] or [],
        )
