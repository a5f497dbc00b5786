"""Calling the engine, ``ACATCore.analyze``, with the module's options (GUI worker, console, tests).

The module and the engine live in the same repository, so the call is written out: no signature
inspection, no alias tables. A stand-in engine (tests) must take the same arguments as
``ACATCore.analyze``.
"""
from __future__ import annotations

import importlib

from ACATCore.analysis_maps import MAX_SMOOTHING, SHOWN_SMOOTHING, check_smoothing      # no torch
from ACATCore.counterfactual_options import DEFAULT_STEPS      # no torch

DEFAULT_ENGINE = "ACATCore:analyze"
DEVICES = ("auto", "cpu", "cuda")   # also "cuda:N"
# ACATCore.pipeline.STAGES (and "done") -> what the progress bar says
STAGE_LABELS = {
    "read": "Reading the volume",
    "preprocess": "Preparing the model input",
    "classify": "Classifying (baseline)",
    "counterfactuals": "Generating counterfactuals (longest step)",
    "attention": "ACAT attention",
    "map back": "Mapping results onto the input grid",
    "write": "Writing files",
    "done": "Finishing",
}


def load_engine(spec: str = DEFAULT_ENGINE):
    """The engine function named ``"module:function"`` (imported now, not before: it imports torch)."""
    module_name, _, func_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), func_name or "analyze")


def check_options(options: dict) -> dict:
    """The engine's keyword arguments from the module's options (model, device, steps, alpha,
    coverage, smoothing); an unknown option, a bad device or a bad smoothing is an error, not silently
    dropped."""
    known = {"model", "device", "steps", "alpha", "coverage", "smoothing"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown ACAT option(s): {', '.join(unknown)}")
    device = options.get("device", "auto")
    if not (device in DEVICES or str(device).startswith("cuda:")):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} or cuda:N, not {device!r}")
    return {"model": options.get("model", "brain"), "device": device,
            "steps": int(options.get("steps", DEFAULT_STEPS)), "alpha": float(options.get("alpha", 100.0)),
            "coverage": options.get("coverage", "full"),
            "smoothing": check_smoothing(float(options.get("smoothing", SHOWN_SMOOTHING)))}


def run_engine(volume, options: dict, engine: str = DEFAULT_ENGINE, report=None):
    """Run the engine on ``volume`` (an ``ACATCore.volume.Volume``) and return its AnalysisResult.

    ``report(fraction, label)`` receives ``ACATCore.analyze``'s ``progress(stage, fraction)`` with the
    stage turned into the label the progress bar shows."""
    analyze = load_engine(engine)
    progress = None
    if report is not None:
        def progress(stage, fraction):
            report(None if fraction is None else max(0.0, min(1.0, float(fraction))),
                   STAGE_LABELS.get(stage, str(stage)))
    return analyze(volume, progress=progress, **check_options(options))
