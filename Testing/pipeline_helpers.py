"""Tiny ACAT model bundles and real CT paths for the pipeline, CLI and report tests.

To keep the tests fast and independent of the shipped weights, the tests build tiny, untrained models
of the real architectures and save them as a real bundle with ``save_model``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ACATCore.checkpoint import save_model
from ACATCore.models import build_model, calibrate_batchnorm
from toy import single_thread as one_thread  # noqa: F401  (one torch thread in tests)

LUNG_CLASSES = ["normal", "findings"]
BRAIN_CLASSES = ["no lesion", "left", "right", "both"]


def chest_ct_path() -> Path:
    """The real chest CT shipped with slicerio (128 x 128 x 34, 3.05 x 3.05 x 10 mm, LPS)."""
    import slicerio
    return Path(os.path.dirname(slicerio.__file__)) / "data" / "CTChest4.nrrd"


def make_bundle(folder, task: str = "lung", size=None, slices: int = 11, seed: int = 0,
                preprocessing_extra: dict = None) -> Path:
    """Write a tiny untrained bundle (classifier, autoencoder, acat + cards) into ``folder``;
    ``preprocessing_extra`` adds keys to the cards' preprocessing (e.g. ``{"slab": True}``)."""
    torch.manual_seed(seed)
    folder = Path(folder)
    if task == "lung":
        opts = {"block_inplanes": [4, 8, 8, 8], "layers": [1, 1, 1, 1]}
        classifier = build_model("lung_resnet50", **opts)
        acat = build_model("acat_lung", **opts)
        size = size or [32, 32]
        preprocessing = {"window": [-1000.0, 400.0], "slices": slices, "size": list(size),
                         "orientation": "LPS-axial", "midline": None}
        classes = LUNG_CLASSES
    else:
        opts = {"widths": [4, 4, 4, 4, 4, 4, 8]}
        classifier = build_model("brain_mtl", **opts)
        acat = build_model("acat_brain", **opts)
        size = size or [32, 64]
        preprocessing = {"window": [0.0, 80.0], "slices": slices, "size": list(size),
                         "orientation": "LPS-axial", "midline": "center"}
        classes = BRAIN_CLASSES
    preprocessing.update(preprocessing_extra or {})
    autoencoder = build_model("autoencoder", stem_channels=8, encoder_channels=[4, 4, 8],
                              decoder_channels=[8, 4, 4], blocks_per_stage=1)
    # Untrained nets with BatchNorm at its initial statistics ignore their input (zero input
    # gradients: counterfactuals would not move). Set the BatchNorm statistics from real CT, so
    # that the tiny nets respond to the image like trained ones do.
    x = _calibration_batch(preprocessing)
    calibrate_batchnorm(classifier, [x])
    calibrate_batchnorm(autoencoder, [x.reshape(-1, 1, *x.shape[-2:])])
    acat.init_from_baseline(classifier)
    calibrate_batchnorm(acat, [(x, torch.rand_like(x))])
    card = {"task": task, "class_names": classes, "preprocessing": preprocessing,
            "data": {"description": "untrained tiny test model"}}
    save_model(classifier, folder / "classifier.safetensors", card)
    save_model(autoencoder, folder / "autoencoder.safetensors", {**card, "class_names": None})
    save_model(acat, folder / "acat.safetensors", card)
    return folder


def _calibration_batch(preprocessing) -> torch.Tensor:
    from ACATCore.io import read_volume
    from ACATCore.preprocessing import prepare
    # the chest has no brain: BatchNorm statistics from it without brain extraction
    spec = {k: v for k, v in preprocessing.items() if k not in ("brain_extraction", "slab_mean")}
    x = prepare(read_volume(chest_ct_path()), spec).tensor[None]
    g = torch.Generator().manual_seed(1)
    return torch.cat([x, x.flip(-1), (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)])


def geometry_equal(a, b, exact: bool = True, tol: float = 1e-5) -> bool:
    """Same shape and geometry. ``exact``: equal bits, except that after a file round trip (``a``
    read from a written file) ITK's NRRD writer may move the last bit of a double (it writes
    spacing x direction, and a direction read from a file is not always exactly +-1): 1e-12
    relative. Otherwise within ``tol`` (formats that store float32 or decimal strings)."""
    import numpy as np
    if tuple(a.shape) != tuple(b.shape):
        return False
    pairs = [(a.spacing, b.spacing), (a.origin, b.origin), (a.direction, b.direction)]
    if exact:
        return all(np.allclose(np.asarray(x, float), np.asarray(y, float), rtol=1e-12, atol=1e-12)
                   for x, y in pairs)
    return all(np.allclose(np.asarray(x, float), np.asarray(y, float), atol=tol, rtol=0) for x, y in pairs)
