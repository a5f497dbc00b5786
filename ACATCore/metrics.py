"""Evaluation metrics of the paper (Sec. 4.3-4.6, App. G-I).

Saliency localisation: hit score (pointing game, Zhang et al. 2018), IoU / Dice with dynamic
percentile binarisation (Viviano et al. 2019, Cohen et al. 2021). Deletion / insertion AUC and the
randomisation check are saliency evaluation: ``ACATCore.saliency.faithfulness``.
Classification: accuracy, accuracy by group (infarct size, Table 1), sensitivity / specificity
(Table 7), mean and standard error over runs. Robustness: pre-activation variance per layer (Table 3).

Arrays may be numpy arrays or torch tensors; results are Python floats / dicts.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
from scipy import ndimage, stats

from .errors import ConfigError, InputError

TERRITORIES = ("MCA left", "MCA right", "ACA left", "ACA right", "PCA left", "PCA right")


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


# ----------------------------------------------------------------------------- localisation
def is_hit(saliency, region) -> bool:
    """Pointing game: is the arg-max voxel of ``saliency`` inside the boolean ``region`` mask?

    An empty or missing region is never a hit (Quantus counts it as one: not here). A map without any
    finite value is a miss. Ties: the first maximal voxel in C order counts (``np.argmax``)."""
    if region is None:
        return False
    s, r = _np(saliency).astype(np.float64), _np(region).astype(bool)
    if s.shape != r.shape:
        s = s.reshape(r.shape) if s.size == r.size else s
        if s.shape != r.shape:
            raise InputError(f"hit score: saliency {s.shape} and region {r.shape} differ in shape")
    if not r.any() or not np.isfinite(s).any():
        return False
    s = np.where(np.isfinite(s), s, -np.inf)
    return bool(r.reshape(-1)[int(np.argmax(s))])


def region_mask(labels, region) -> np.ndarray:
    """Boolean mask of a region in a label map: ``region`` is an int label or a territory name
    (labels 1..6 in the order of TERRITORIES)."""
    if isinstance(region, str):
        if region not in TERRITORIES:
            raise ConfigError(f"unknown territory {region!r}; one of {', '.join(TERRITORIES)}")
        region = TERRITORIES.index(region) + 1
    return _np(labels) == int(region)


def hit_score(saliencies: Iterable, regions: Iterable) -> float:
    """Hits / (hits + misses) over pairs (saliency map, region mask or None); NaN for no pairs."""
    hits = [is_hit(s, r) for s, r in zip(saliencies, regions)]
    return float(np.mean(hits)) if hits else float("nan")


def binarise_dynamic(saliency, mask_fraction: float, sigma: Optional[float] = None, use_abs: bool = True):
    """Top-(100 * mask_fraction) % voxels of the map: values > its (100 - 100 * fraction) percentile.

    ``sigma``: optional Gaussian smoothing first (in-plane for a 3-D (S, H, W) map: slices are sparse).
    A constant map (e.g. all zeros) selects nothing."""
    s = _np(saliency).astype(np.float64)
    if use_abs:
        s = np.abs(s)
    if sigma:
        sig = (0,) * (s.ndim - 2) + (sigma, sigma) if s.ndim > 2 else sigma
        s = ndimage.gaussian_filter(s, sigma=sig)
    thr = np.percentile(s, 100.0 - 100.0 * mask_fraction)
    return s > thr


def iou_dice(saliency, mask, sigma: Optional[float] = None, use_abs: bool = True) -> tuple:
    """(IoU, Dice) of the dynamically binarised saliency against the boolean mask (MONAI's
    ``compute_iou`` / ``compute_dice``). An empty mask gives (nan, nan): skip it with np.nanmean."""
    from monai.metrics import compute_dice, compute_iou
    m = _np(mask).astype(bool)
    s = _np(saliency)
    if s.size != m.size:
        raise InputError(f"IoU/Dice: saliency {s.shape} and mask {m.shape} differ in size")
    s = s.reshape(m.shape)
    if not m.any():
        return float("nan"), float("nan")
    pred = torch.from_numpy(binarise_dynamic(s, m.mean(), sigma=sigma, use_abs=use_abs))[None, None].float()
    truth = torch.from_numpy(m)[None, None].float()
    return float(compute_iou(pred, truth)), float(compute_dice(pred, truth))


# ----------------------------------------------------------------------------- classification
def accuracy(y_true, y_pred) -> float:
    """Fraction of correct labels (4 brain classes or binary lung alike); NaN when empty."""
    t, p = _np(y_true).reshape(-1), _np(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise InputError(f"accuracy: {t.shape[0]} labels but {p.shape[0]} predictions")
    return float((t == p).mean()) if t.size else float("nan")


def accuracy_by_group(y_true, y_pred, groups) -> dict:
    """Accuracy per group value (e.g. infarct size 0 = no lesion, 1-4, Table 1): {group: accuracy}."""
    t, p, g = _np(y_true).reshape(-1), _np(y_pred).reshape(-1), _np(groups).reshape(-1)
    if not (t.shape == p.shape == g.shape):
        raise InputError("accuracy_by_group: labels, predictions and groups differ in length")
    return {k.item() if hasattr(k, "item") else k: float((t[g == k] == p[g == k]).mean()) for k in np.unique(g)}


def sensitivity_specificity(y_true, y_pred, negative: int = 0) -> tuple:
    """(sensitivity, specificity) with every class other than ``negative`` counted as positive (brain:
    any lesion; lung: class 1), by MONAI's confusion matrix. A prediction of the wrong positive class
    still counts as detected. NaN where there are no positives / negatives."""
    from monai.metrics import compute_confusion_matrix_metric, get_confusion_matrix
    t, p = _np(y_true).reshape(-1) != negative, _np(y_pred).reshape(-1) != negative
    if t.shape != p.shape:
        raise InputError(f"sensitivity/specificity: {t.shape[0]} labels but {p.shape[0]} predictions")
    matrix = get_confusion_matrix(torch.from_numpy(p)[None, None].float(), torch.from_numpy(t)[None, None].float())
    return tuple(float(compute_confusion_matrix_metric(name, matrix)) for name in ("sensitivity", "specificity"))


def mean_sem(values) -> tuple:
    """(mean, standard error = sample std (ddof 1) / sqrt(n), scipy's ``sem``) over the finite values
    (NaN runs, e.g. a constant map's correlation, are left out); sem is NaN for one value."""
    v = _np(values).astype(np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(stats.sem(v)) if v.size > 1 else float("nan")


# ----------------------------------------------------------------------------- robustness
def _default_layers(model: nn.Module) -> dict:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}


def preactivation_variance(model: nn.Module, inputs: Iterable, layers: Optional[dict] = None,
                           noise_std: float = 0.0, seed: int = 0, mode: str = "within_sample") -> dict:
    """Mean variance of the pre-activations Z = W X + B of each layer (Table 3), by forward hooks.

    ``inputs``: an iterable of batches; a batch is a tensor or a tuple of positional arguments (the
    first is the image, the only one noised). ``noise_std`` > 0 adds N(0, noise_std^2) noise to the
    image (the paper: standard Gaussian, 1.0). ``layers``: {name: module}; default every Conv/Linear.
    ``mode``: "within_sample" (variance over a sample's pre-activations, averaged over samples) or
    "across_samples" (variance of each unit over samples, averaged over units).
    Returns {layer name: variance}, in model order. The model is run in eval mode, then restored."""
    if mode not in ("within_sample", "across_samples"):
        raise ConfigError(f"preactivation_variance: mode must be within_sample or across_samples, not {mode!r}")
    layers = _default_layers(model) if layers is None else dict(layers)
    collected = {n: [] for n in layers}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: collected[n].append(out.detach().float().cpu()))
             for n, m in layers.items()]
    g = torch.Generator().manual_seed(seed)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in inputs:
                args = list(batch) if isinstance(batch, (tuple, list)) else [batch]
                if noise_std:
                    noise = torch.randn(args[0].shape, generator=g) * noise_std
                    args[0] = args[0] + noise.to(args[0])
                model(*args)
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    out = {}
    for n, outs in collected.items():
        if not outs:
            continue
        if mode == "within_sample":
            out[n] = float(torch.cat([o.reshape(o.shape[0], -1).var(1, unbiased=False) for o in outs]).mean())
        else:
            a = torch.cat([o.reshape(o.shape[0], -1) for o in outs])
            out[n] = float(a.var(0, unbiased=False).mean())
    return out
