"""Several volumes with one loaded bundle: :func:`analyze_batch`, its :class:`BatchItem` rows and their
``summary.csv`` fields (``acat analyze FOLDER|DATALIST``)."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .errors import ACATError, ConfigError
from .pipeline import Cancelled, analyze, load_models
from .result import AnalysisResult
from .volume import Volume


@dataclass
class BatchItem:
    name: str
    input: str
    result: Optional[AnalysisResult] = None
    error: Optional[str] = None
    out: Optional[str] = None
    seconds: float = 0.0
    summary: dict = field(default_factory=dict)


def analyze_batch(inputs, model="brain", out=None, keep_results: bool = None, on_error: str = "skip",
                  progress: Optional[Callable] = None, cancel: Optional[threading.Event] = None,
                  **options) -> list:
    """Analyse several volumes with one loaded bundle.

    ``inputs``: paths / Volumes / (name, input) pairs. With ``out``, case ``name`` is written to
    ``out/name`` and results are not kept (``keep_results`` default False) so memory stays flat.
    ``on_error``: "skip" records the error on the item and goes on; "raise" stops.
    ``progress(stage, fraction)`` gets "case i/n: stage". Returns a list of :class:`BatchItem`.
    """
    if on_error not in ("skip", "raise"):
        raise ConfigError("on_error must be 'skip' or 'raise'")
    keep = (out is None) if keep_results is None else keep_results
    bundle = load_models(model, options.get("device", "auto"))     # loaded once for all cases
    items = []
    named = [_case_name(x, i) for i, x in enumerate(inputs)]
    names = _unique(n for n, _ in named)
    for i, ((_, src), name) in enumerate(zip(named, names)):
        if cancel is not None and cancel.is_set():
            raise Cancelled("analysis cancelled")
        item = BatchItem(name=name, input=str(src) if not isinstance(src, Volume) else name)
        case_out = None if out is None else str(Path(out) / name)
        cb = None
        if progress is not None:
            cb = (lambda stage, frac, i=i: progress(f"case {i + 1}/{len(names)}: {stage}",
                                                    (i + frac) / len(names)))
        t0 = time.perf_counter()
        try:
            res = analyze(src, model=bundle, progress=cb, cancel=cancel, out=case_out, **options)
            item.summary = result_summary(res)
            item.out = case_out
            if keep:
                item.result = res
        except Cancelled:
            raise
        except ACATError as exc:
            if on_error == "raise":
                raise
            item.error = f"{type(exc).__name__}: {exc}"
        item.seconds = time.perf_counter() - t0
        items.append(item)
    return items


def result_summary(result: AnalysisResult) -> dict:
    """One flat row per analysis (the batch CSV)."""
    row = {"predicted_class": result.predicted_class,
           "probability": float(result.probabilities[result.predicted_index])}
    for n, p in zip(result.class_names, result.probabilities):
        row[f"p({n})"] = float(p)
    if result.baseline_probabilities is not None:
        for n, p in zip(result.class_names, result.baseline_probabilities):
            row[f"baseline p({n})"] = float(p)
    row["slices_seen"] = int(len(result.slices_seen))
    row["slices"] = int(result.input.shape[0])
    row["peak_lps"] = "" if result.peak_lps is None else " ".join(f"{v:.1f}" for v in result.peak_lps)
    row["peak_territory"] = result.peak_territory or ""
    return row


def _case_name(x, i):
    if isinstance(x, tuple) and len(x) == 2:
        return str(x[0]), x[1]
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        name = p.name
        for ext in (".nii.gz", ".seg.nrrd", ".nrrd", ".nii", ".mha", ".mhd", ".dcm"):
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
                break
        return name or f"case{i:03d}", x
    return f"case{i:03d}", x


def _unique(names):
    """Safe, distinct folder names (also on a case-insensitive file system): a, a_1, a_2, ...,
    never one that another case has as its own name, never ``summary.csv``."""
    safe = ["".join(c if (c.isalnum() or c in "-_.") else "_" for c in n).strip(".") or "case" for n in names]
    natural = {s.lower() for s in safe}
    taken, out = set(), []
    for base in safe:
        name, n = base, 0
        while name.lower() in taken or name.lower() == "summary.csv" or (name != base and name.lower() in natural):
            n += 1
            name = f"{base}_{n}"
        taken.add(name.lower())
        out.append(name)
    return out
