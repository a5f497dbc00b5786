"""Latent-space methods: ours (counterfactual), latent shift (Cohen et al. 2021) and NoRec (App. F/H).

``target`` semantics: for ``counterfactual`` it is the class the counterfactual moves TO (default: every
class, the class-agnostic map of the paper); for ``latent_shift`` and ``norec`` it is the class being
EXPLAINED, whose probability the latent move lowers (default: each volume's predicted class), like the
gradient methods. All scores use the classifier's ``counterfactual_logits``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..counterfactual import generate, steerable_logits
from ..errors import ConfigError
from ._common import for_volumes, normalise, resolve_targets


def counterfactual_saliency(classifier, x, autoencoder, target=None, reference="reconstruction", scale=None,
                            **gen_options):
    """Ours: per target |x_ref - D(z')|, each normalised by its own max, then averaged over targets.

    ``scale``: None (the paper) normalises each target's map by its own max; a number keeps the raw
    differences (input units) so that a volume the search hardly changes keeps a near-empty map
    (:func:`ACATCore.saliency.compute_saliency` then divides by ``scale``).

    ``reference``: "reconstruction" (D(E(x)), default: the authors' code; the autoencoder's own blur
    cancels out) or "input" (the raw x). ``target``: None = all classes; an int = that class only; one
    int per volume = that volume's class (all classes are still computed in the one batched graph).
    """
    if reference not in ("reconstruction", "input"):
        raise ConfigError(f"counterfactual: reference must be 'reconstruction' or 'input', not {reference!r}")
    per_volume = target is not None and torch.as_tensor(target).dim() == 1
    targets = None if (target is None or per_volume) else [int(target)]
    res = generate(classifier, autoencoder, x, targets=targets, **gen_options)
    ref = res.reconstruction if reference == "reconstruction" else x.detach()
    T, B = res.counterfactuals.shape[:2]
    diff = (ref[None] - res.counterfactuals).abs().reshape(T * B, *x.shape[1:])
    maps = (normalise(diff) if scale is None else diff).reshape(T, B, *x.shape[1:])
    if per_volume:
        t = torch.as_tensor(target, dtype=torch.long, device=maps.device)
        return maps[t, torch.arange(B, device=maps.device)]
    return maps.mean(0)


def _slice_index(vols: torch.Tensor, S: int) -> torch.Tensor:
    """Volume indices (n,) -> their slice rows (n*S,) in a (B*S, ...) batch."""
    return (vols[:, None] * S + torch.arange(S, device=vols.device)[None]).reshape(-1)


def _class_prob(classifier, imgs, t):
    return F.softmax(steerable_logits(classifier, imgs), 1).gather(1, t[:, None])[:, 0]


@dataclass
class LambdaSearch:
    """Outcome of the latent-shift lambda search for B volumes."""
    lbound: torch.Tensor                  # (B,) lambda at which the search stopped
    reason: list                          # per volume: "rise" | "drop" | "floor" | "change"
    history: list = field(default_factory=list)   # per volume: [(lambda, prediction), ...]


def lambda_search(predict: Callable, p0: torch.Tensor, max_drop: float = 0.15, floor: float = -1000.0,
                  max_change: Optional[float] = None) -> LambdaSearch:
    """Lambda search of gifsplanation (Cohen et al. 2021), run in lockstep for B volumes.

    lambda goes 0, -1, ..., -9, -10, -20, ... (step 1 while |lambda| < 10, then 10). A volume stops at the
    first lambda where its prediction rises above the previous one ("rise"), falls more than
    ``max_drop`` below the start ("drop"), lambda <= ``floor`` ("floor"), or (newer latentshift code,
    off unless ``max_change`` is given) its image changed by more than ``max_change`` in relative L1
    ("change"). ``predict(lam, idx) -> (pred (n,), change (n,) or None)`` for volume indices ``idx``.
    lambda = 0 reproduces the start, where no rule can fire, so the search evaluates from -1.
    """
    B = p0.shape[0]
    p0 = p0.detach().float().cpu()
    lbound = torch.zeros(B)
    last = p0.clone()
    reason = [""] * B
    history = [[(0.0, float(p0[i]))] for i in range(B)]
    active = torch.ones(B, dtype=torch.bool)
    lam = -1.0
    while bool(active.any()):
        idx = active.nonzero()[:, 0]
        pred, change = predict(lam, idx)
        pred = pred.detach().float().cpu()
        rules = [("rise", pred > last[idx]), ("drop", pred < p0[idx] - max_drop),
                 ("floor", torch.full_like(pred, lam <= floor, dtype=torch.bool))]
        if max_change is not None and change is not None:
            rules.append(("change", change.detach().float().cpu() > max_change))
        stop = torch.zeros_like(pred, dtype=torch.bool)
        for name, fired in rules:
            for j in (fired & ~stop).nonzero()[:, 0].tolist():
                reason[int(idx[j])] = name
            stop |= fired
        for j, i in enumerate(idx.tolist()):
            history[i].append((lam, float(pred[j])))
        lbound[idx[stop]] = lam
        last[idx[~stop]] = pred[~stop]
        active[idx[stop]] = False
        lam = lam - 1.0 if abs(lam) < 10 else lam - 10.0
    return LambdaSearch(lbound=lbound, reason=reason, history=history)


def latent_shift(classifier, x, autoencoder, target=None, max_drop=0.15, floor=-1000.0, max_change=None,
                 return_search=False):
    """Latent shift (Cohen et al. 2021): dz = d p_t(D(z))/dz at z0; map |D(z0) - D(z0 + lbound dz)|.

    ``p_t`` is the softmax probability of the explained class t (for 2 classes the sigmoid of the
    logit difference, as in the original's sigmoid output)."""
    B, S, _, H, W = x.shape
    t = resolve_targets(target, lambda v: steerable_logits(classifier, v), x)
    with torch.no_grad():
        z0 = autoencoder.encode(x.reshape(B * S, 1, H, W))
        x0 = autoencoder.decode(z0).reshape(B, S, 1, H, W)
    with torch.enable_grad():
        z = z0.clone().requires_grad_(True)
        p = _class_prob(classifier, autoencoder.decode(z).reshape(B, S, 1, H, W), t)
        (dz,) = torch.autograd.grad(p.sum(), z)
    p0 = p.detach()
    ref_l1 = x0.abs().reshape(B, -1).mean(1).clamp_min(1e-12)

    def predict(lam, idx):
        rows = _slice_index(idx.to(z0.device), S)
        with torch.no_grad():
            imgs = autoencoder.decode(z0[rows] + lam * dz[rows]).reshape(len(idx), S, 1, H, W)
            pred = _class_prob(for_volumes(classifier, idx), imgs, t[idx.to(t.device)])
            change = (imgs - x0[idx.to(x0.device)]).abs().reshape(len(idx), -1).mean(1) / ref_l1[idx.to(x0.device)]
        return pred, change

    search = lambda_search(predict, p0, max_drop=max_drop, floor=floor, max_change=max_change)
    lb = search.lbound.to(z0.device, z0.dtype).repeat_interleave(S)[:, None, None, None]
    with torch.no_grad():
        shifted = autoencoder.decode(z0 + lb * dz).reshape(B, S, 1, H, W)
    m = (x0 - shifted).abs()
    return (m, search) if return_search else m


def norec(classifier, x, autoencoder, target=None, steps=20, step_size=-1.0, return_trajectory=False):
    """NoRec (App. F, H): progressive latent steps z <- z + h * d p_t(D(z))/dz (h < 0 lowers p_t), no
    distance term; the map is |D(z0) - D(z_k)| at the step k where p_t is lowest (as in Fig. 6)."""
    if step_size == 0 or steps < 1:
        raise ConfigError("norec: step_size must be non-zero and steps >= 1")
    B, S, _, H, W = x.shape
    t = resolve_targets(target, lambda v: steerable_logits(classifier, v), x)
    with torch.no_grad():
        z0 = autoencoder.encode(x.reshape(B * S, 1, H, W))
        x0 = autoencoder.decode(z0).reshape(B, S, 1, H, W)
    z = z0.clone()
    best_p = torch.full((B,), float("inf"), device=x.device)
    best = x0.clone()
    traj = []
    with torch.enable_grad():
        for k in range(steps + 1):
            zz = z.detach().requires_grad_(True)
            imgs = autoencoder.decode(zz).reshape(B, S, 1, H, W)
            p = _class_prob(classifier, imgs, t)
            traj.append(p.detach().cpu())
            better = p.detach() < best_p
            best_p = torch.where(better, p.detach(), best_p)
            best = torch.where(better[:, None, None, None, None], imgs.detach(), best)
            if k == steps:
                break
            (g,) = torch.autograd.grad(p.sum(), zz)
            z = zz.detach() + step_size * g
    m = (x0 - best).abs()
    return (m, torch.stack(traj)) if return_trajectory else m
