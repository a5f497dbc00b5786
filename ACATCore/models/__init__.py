"""Every network of the paper, built by name.

>>> from ACATCore.models import build_model, MODEL_NAMES
>>> model = build_model("brain_mtl", widths=[4, 4, 8, 8, 8, 8, 8])
>>> rebuilt = build_model(model.model_name, **model.config)

See docs/INTERFACES.md for the contract every model follows.
"""
from __future__ import annotations

import inspect

from torch import nn

from ..errors import ConfigError
from .acat import ACAT, acat_brain, acat_lung
from .autoencoder import Autoencoder
from .backbones import BrainMTL, LungResNet50, SliceClassifier
from .common import BRAIN_CLASS_NAMES, BRAIN_SIDE_NAMES, LUNG_CLASS_NAMES, calibrate_batchnorm, combine_mtl
from .competitors import HSM, SMIC, SalClassNet, SeAtt, SpAtt, ViTClassifier

_BUILDERS = {
    "brain_mtl": BrainMTL,
    "lung_resnet50": LungResNet50,
    "autoencoder": Autoencoder,
    "acat_brain": acat_brain,
    "acat_lung": acat_lung,
    "smic": SMIC,
    "salclassnet": SalClassNet,
    "hsm": HSM,
    "spatt": SpAtt,
    "seatt": SeAtt,
    "vit": ViTClassifier,
}
MODEL_NAMES = tuple(_BUILDERS)
BASELINES = {"brain": "brain_mtl", "lung": "lung_resnet50"}


def build_model(name: str, **config) -> nn.Module:
    """Build the model ``name`` (one of :data:`MODEL_NAMES`) with the options ``config``."""
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    builder = _BUILDERS[name]
    target = ACAT if builder in (acat_brain, acat_lung) else builder
    params = inspect.signature(target.__init__).parameters
    unknown = sorted(k for k in config if k not in params or k == "self" or
                     (target is ACAT and k == "backbone"))
    if unknown:
        allowed = [p for p in params if p != "self" and not (target is ACAT and p == "backbone")]
        raise ConfigError(f"unknown option(s) {unknown} for model {name!r}; it takes {allowed}")
    return builder(**config)


__all__ = ["build_model", "MODEL_NAMES", "BASELINES", "ACAT", "Autoencoder", "BrainMTL", "LungResNet50",
           "SliceClassifier", "SMIC", "SalClassNet", "HSM", "SpAtt", "SeAtt", "ViTClassifier",
           "BRAIN_CLASS_NAMES", "BRAIN_SIDE_NAMES", "LUNG_CLASS_NAMES", "calibrate_batchnorm", "combine_mtl"]
