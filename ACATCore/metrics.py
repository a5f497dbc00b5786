"""Evaluation metrics of the paper (Sec. 4.3-4.6, App. G-I) and two standard saliency checks.

Saliency localisation: hit score (pointing game, Zhang et al. 2018), IoU / Dice with dynamic
percentile binarisation (Viviano et al. 2019, Cohen et al. 2021), deletion / insertion AUC (RISE,
Petsiuk et al. 2018), cascading model randomisation (Adebayo et al. 2018).
Classification: accuracy, accuracy by group (infarct size, Table 1), sensitivity / specificity
(Table 7), mean and standard error over runs. Robustness: pre-activation variance per layer (Table 3).

Arrays may be numpy arrays or torch tensors; results are Python floats / dicts.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable, Optional, Sequence

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
    """(IoU, Dice) of the dynamically binarised saliency against the boolean mask.

    An empty mask gives (nan, nan): the score is undefined (skip it with np.nanmean)."""
    m = _np(mask).astype(bool)
    s = _np(saliency)
    if s.size != m.size:
        raise InputError(f"IoU/Dice: saliency {s.shape} and mask {m.shape} differ in size")
    s = s.reshape(m.shape)
    if not m.any():
        return float("nan"), float("nan")
    pred = binarise_dynamic(s, m.mean(), sigma=sigma, use_abs=use_abs)
    inter = np.logical_and(pred, m).sum()
    union = np.logical_or(pred, m).sum()
    return float(inter / union), float(2 * inter / (pred.sum() + m.sum()))


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
    any lesion; lung: class 1). A prediction of the wrong positive class still counts as detected.
    NaN where there are no positives / negatives."""
    t, p = _np(y_true).reshape(-1) != negative, _np(y_pred).reshape(-1) != negative
    sens = float((p & t).sum() / t.sum()) if t.any() else float("nan")
    spec = float((~p & ~t).sum() / (~t).sum()) if (~t).any() else float("nan")
    return sens, spec


def mean_sem(values) -> tuple:
    """(mean, standard error = sample std (ddof 1) / sqrt(n)) over runs; sem is NaN for one run."""
    v = _np(values).astype(np.float64).reshape(-1)
    if v.size == 0:
        return float("nan"), float("nan")
    sem = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), sem


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


# ----------------------------------------------------------------------------- faithfulness
def deletion_insertion(fn: Callable, x: torch.Tensor, saliency: torch.Tensor, target, steps: int = 20,
                       deletion_baseline="zeros", insertion_baseline="blur", batch_size: int = 8) -> dict:
    """Deletion and insertion AUC (RISE) for B volumes: voxels are removed from x (deletion, replaced
    by the baseline) or added to the baseline (insertion) from the most salient down, in ``steps``
    equal chunks; the AUC of the target-class probability over the fraction [0, 1] (trapezoid).
    Lower deletion AUC and higher insertion AUC mean a more faithful map.

    ``fn(x) -> logits (B, K)``; ``target``: int or one per volume; baselines: "zeros", "blur"
    (in-plane Gaussian sigma 5) or a tensor of x's shape. Returns {"deletion": (B,), "insertion": (B,),
    "deletion_curve": (B, steps+1), "insertion_curve": (B, steps+1)} as numpy arrays."""
    from .saliency._common import gaussian_smooth

    def base(kind):
        if isinstance(kind, torch.Tensor):
            return kind.to(x).expand_as(x)
        if kind == "zeros":
            return torch.zeros_like(x)
        if kind == "blur":
            return gaussian_smooth(x, 5.0)
        raise ConfigError(f"deletion_insertion: unknown baseline {kind!r}")

    B = x.shape[0]
    n = x[0].numel()
    t = torch.as_tensor(target, dtype=torch.long).reshape(-1).expand(B) if np.ndim(_np(target)) == 0 \
        else torch.as_tensor(target, dtype=torch.long)
    order = torch.argsort(saliency.reshape(B, -1).float(), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n).expand(B, n).contiguous())
    counts = [round(k * n / steps) for k in range(steps + 1)]
    result = {}
    for name, start, end in (("deletion", x, base(deletion_baseline)), ("insertion", base(insertion_baseline), x)):
        curve = torch.zeros(B, steps + 1)
        for b in range(B):
            frames = torch.stack([torch.where((rank[b] < c).reshape(x.shape[1:]), end[b], start[b])
                                  for c in counts])
            probs = []
            with torch.no_grad():
                for i in range(0, len(frames), batch_size):
                    probs.append(torch.softmax(fn(frames[i:i + batch_size]), 1)[:, t[b]].float().cpu())
            curve[b] = torch.cat(probs)
        frac = np.array(counts, dtype=np.float64) / n
        result[name] = np.trapezoid(curve.numpy(), frac, axis=1)
        result[name + "_curve"] = curve.numpy()
    return result


def model_randomisation_check(model: nn.Module, saliency_fn: Callable, seed: int = 0,
                              layers: Optional[Sequence[str]] = None) -> list:
    """Cascading model randomisation (Adebayo et al. 2018). From the output layer down, the parameters
    of one more layer are re-initialised (on a copy of the model) and the map recomputed; each step
    reports the Spearman rank correlation of |map| with the original |map|. A map that does not
    decorrelate does not depend on what the model learned.

    ``saliency_fn(model) -> map`` (any shape); ``layers``: module names, top first (default: every
    module holding parameters of its own, in reverse registration order).
    Returns [{"layer": name, "spearman": rho}, ...]."""
    original = _np(saliency_fn(model)).reshape(-1)
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    if layers is None:
        layers = [n for n, m in modules.items() if n and any(True for _ in m.parameters(recurse=False))][::-1]
    torch.manual_seed(seed)
    out = []
    for name in layers:
        m = modules[name]
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        else:
            for p in m.parameters(recurse=False):
                nn.init.normal_(p, std=0.02)
        current = _np(saliency_fn(randomised)).reshape(-1)
        rho = stats.spearmanr(np.abs(original), np.abs(current)).statistic
        out.append({"layer": name, "spearman": float(rho) if np.isfinite(rho) else float("nan")})
    return out
