"""ACATCore: the ACAT engine (Adversarial Counterfactual Attention, ICML 2023) for CT volumes.

    from ACATCore import analyze
    result = analyze("chest.nrrd", model="lung")     # -> AnalysisResult on the input's grid

Imports are lazy: ``import ACATCore`` does not import torch; the heavy parts load on first use.
"""
__version__ = "0.1.0"

_LAZY = {
    "analyze": ("pipeline", "analyze"),
    "analyze_batch": ("batch", "analyze_batch"),
    "Cancelled": ("pipeline", "Cancelled"),
    "STAGES": ("pipeline", "STAGES"),
    "save_result": ("report", "save_result"),
    "make_report": ("report", "make_report"),
    "AnalysisResult": ("result", "AnalysisResult"),
    "load_bundle": ("checkpoint", "load_bundle"),
    "Volume": ("volume", "Volume"),
    "read_volume": ("io", "read_volume"),
    "write_volume": ("io", "write_volume"),
    "ACATError": ("errors", "ACATError"),
    "InputError": ("errors", "InputError"),
    "ModelFileError": ("errors", "ModelFileError"),
    "ConfigError": ("errors", "ConfigError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
