"""Calling the engine with the module's options; shared by the GUI worker, the console and tests.

The module's options (names as in the Slicer parameter node) are mapped onto the keyword arguments
the engine function accepts, found from its signature, so that ACATLib works with
``ACATCore.analyze`` as it evolves and with stand-in engines in tests. An option the engine does not
accept is reported, never silently dropped.
"""
from __future__ import annotations

import importlib
import inspect

DEFAULT_ENGINE = "ACATCore:analyze"

# module option -> engine keyword candidates, first match wins
ALIASES = {
    "model": ("model",),
    "device": ("device",),
    "steps": ("steps", "counterfactual_steps", "cf_steps", "n_steps"),
    "alpha": ("alpha", "l1_weight", "counterfactual_alpha"),
    "coverage": ("coverage",),
}
PROGRESS_NAMES = ("progress", "progress_callback", "callback", "on_progress")
DEVICES = ("auto", "cpu", "cuda")   # also "cuda:N"
# ACATCore.pipeline.STAGES -> what the progress bar says
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
    """The engine function named ``"module:function"`` (imported now, not before)."""
    module_name, _, func_name = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, func_name or "analyze")


def engine_kwargs(func, options: dict, progress=None) -> tuple:
    """(kwargs for ``func``, list of option names it does not accept)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs, ignored = {}, []
    for option, value in options.items():
        if value is None:
            continue
        if option == "device" and not (value in DEVICES or str(value).startswith("cuda:")):
            raise ValueError(f"device must be one of {', '.join(DEVICES)} or cuda:N, not {value!r}")
        names = ALIASES.get(option, (option,))
        name = next((n for n in names if n in params), names[0] if var_kw else None)
        if name is None:
            ignored.append(option)
        else:
            kwargs[name] = value
    if progress is not None:
        name = next((n for n in PROGRESS_NAMES if n in params), None)
        if name is not None:
            kwargs[name] = progress
    return kwargs, ignored


def progress_adapter(report):
    """A callback accepting the usual progress call shapes - ``(fraction, stage)``, ``(stage,
    fraction)``, ``(stage)``, ``(done, total, stage)`` or keywords - and calling
    ``report(fraction or None, stage)``."""
    def callback(*args, **kwargs):
        fraction = kwargs.get("fraction", kwargs.get("value"))
        stage = kwargs.get("stage", kwargs.get("message", ""))
        numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        texts = [a for a in args if isinstance(a, str)]
        if fraction is None and len(numbers) >= 2 and numbers[1]:
            fraction = numbers[0] / numbers[1]
        elif fraction is None and numbers:
            fraction = numbers[0]
            if fraction > 1.0:  # percent
                fraction = fraction / 100.0
        if texts and not stage:
            stage = texts[0]
        stage = STAGE_LABELS.get(stage, stage)
        report(None if fraction is None else max(0.0, min(1.0, float(fraction))), str(stage))
    return callback


def run_engine(volume, options: dict, engine: str = DEFAULT_ENGINE, report=None, log=print):
    """Run the engine on ``volume`` (an ``ACATCore.volume.Volume``) and return its AnalysisResult."""
    func = load_engine(engine)
    kwargs, ignored = engine_kwargs(func, options, progress_adapter(report) if report else None)
    for name in ignored:
        log(f"ACAT: the engine does not take the option '{name}'; it was not used")
    return func(volume, **kwargs)
