"""Lesion supervision of the brain baseline: an optional training loss the paper does not have.

The class labels say only whether a hemisphere holds a lesion somewhere in 22 slices; a small lesion
is a few cells of one slice, and averaging over every cell and slice dilutes it. With
``baseline.lesion_loss`` = w > 0 the baseline also learns, for every cell of one conv layer's output
(``baseline.lesion_layer``, 1-7 as in the paper's numbering; default the last), whether that cell's
part of the slice holds lesion (the data's lesion mask, pooled to the cell): the loss becomes
class loss + w * binary cross-entropy over the cells.

The cells are read by a 1x1 convolution that exists only while training (:func:`attach`, removed by
:func:`detach` before the model is saved): the saved model, its card's architecture, ``acat analyze``
and Slicer are the same as without it. The card records the setting under its training hyper-parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ACATCore.errors import ConfigError
from ACATCore.models.backbones import trunk_channels

HEAD = "lesion_cells"           # name of the training-only 1x1 convolution on the model


def _layer_index(model, layer) -> int:
    """0-based trunk stage of conv layer `layer` (1-based; None: the last)."""
    n = len(model.trunk)
    if layer is None:
        return n - 1
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= n:
        raise ConfigError(f"baseline.lesion_layer must be a conv layer 1-{n} or null (the last), not {layer!r}")
    return layer - 1


def attach(model, layer=None) -> None:
    """Give a brain classifier the training-only lesion-cell head on conv layer `layer`'s output."""
    if getattr(model, "backbone", None) != "brain" or not hasattr(model, "trunk_opts"):
        raise ConfigError("baseline.lesion_loss supervises the brain classifier's cells: brain baselines only")
    index = _layer_index(model, layer)
    model.add_module(HEAD, nn.Conv2d(trunk_channels("brain", model.trunk_opts)[index], 1, kernel_size=1))
    model.lesion_cell_scale = 2 ** sum(1 for p in model.trunk_opts["pool_layers"] if p <= index + 1)
    model.lesion_cell_logits = None

    def keep(module, inputs, output):
        model.lesion_cell_logits = getattr(model, HEAD)(output)

    model.lesion_hook = model.trunk[index].register_forward_hook(keep)


def detach(model) -> None:
    """Remove what :func:`attach` added; the model is then exactly its architecture again."""
    model.lesion_hook.remove()
    delattr(model, HEAD)
    for name in ("lesion_hook", "lesion_cell_scale", "lesion_cell_logits"):
        delattr(model, name)


def cell_targets(model, mask: torch.Tensor) -> torch.Tensor:
    """Whether each cell of the supervised layer holds lesion: the mask (B, S, 1, H, W), cut into
    hemispheres as the image is (the left one mirrored), max-pooled over each cell's pixels, as
    the trunk's 2x2 max pools (which drop odd edges) pool the image."""
    halves = model._to_trunk_input(mask)[:, :1]
    k = model.lesion_cell_scale
    return (F.max_pool2d(halves, k) if k > 1 else halves) > 0.5


def loss(model, mask: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of the cells the last forward pass scored against the mask."""
    logits = model.lesion_cell_logits
    target = cell_targets(model, mask)
    if logits is None or logits.shape != target.shape:
        raise ConfigError(f"lesion cells {None if logits is None else tuple(logits.shape)} do not match the "
                          f"mask's {tuple(target.shape)}; run the model forward on the batch first")
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())
