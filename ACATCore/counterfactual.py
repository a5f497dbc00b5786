"""Counterfactuals in the autoencoder latent space (paper Sec. 3.2, Eq. 4; Appendix F).

For a volume ``x`` of ``S`` slices and a target class ``t`` we look for a latent ``z'`` minimising

    g(z) = CE(f(D(z)), t) + alpha * |z - E(x)|_1                                    (Eq. 4)

by gradient descent from ``z0 = E(x)``; ``D(z')`` is the counterfactual. ``E``/``D`` work on single
slices (N, 1, H, W); ``f`` on slice stacks (B, S, 1, H, W) and we steer its
``counterfactual_logits`` (brain: the lesion head [no lesion, lesion]; lung: the 2 classes).

Everything runs in ONE batched graph: the T targets are folded into the batch (target-major: row
``t * B + b``), so T * B * S slices are decoded and classified together; there is no Python loop over
targets or slices. Each (target, volume) pair has its own loss term and the total loss is their SUM,
so the gradient of one pair does not depend on the others: batched and one-at-a-time runs agree.

Defaults and why (where the paper is silent):
- plain gradient descent (the paper), Adam as an option. With plain descent the L1 term is applied by
  its exact proximal step (soft-thresholding towards z0, i.e. ISTA: a gradient step on the CE, then
  each element of z - z0 shrinks by step_size * alpha_eff, stopping at 0) rather than by its
  subgradient alpha_eff * sign(z - z0): the subgradient overshoots z0 every step and leaves z
  oscillating around it with amplitude step_size * alpha_eff, so that a LARGER alpha gave a LARGER
  latent distance, the opposite of what alpha is for. Both minimise the same Eq. 4;
  ``l1_update="subgradient"`` reproduces the authors' update exactly. (alpha_eff = alpha / n for
  ``l1="mean"`` with n latent elements per volume, alpha for ``"sum"``.) Adam always uses the
  subgradient of the full loss;
- ``l1="mean"``: the L1 distance is averaged over the latent elements of a volume, as in the authors'
  code. With ``"sum"`` (the literal Eq. 4) alpha = 100 pins almost every latent element to z0
  (an element moves only where |dCE/dz| > alpha) unless the step size is tiny;
- ``step_size=0.1``: the authors' first published value, used with mean-L1 and alpha = 100. Their later
  repository uses 0.001, which with a mean-reduced loss moves the latent so little in 20 steps that
  the target class is rarely reached; Appendix F even uses 1.0 and reports that the step size matters
  little. 0.1 is the middle ground; pass ``step_size`` to change it.
- ``stop_at=None``: optional early stop; a (target, volume) pair whose target probability reaches
  ``stop_at`` stops changing (its latent is frozen) while the others go on.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError, InputError

ENCODE_CHUNK = 4   # slices per encoder call (no-grad); bounds the memory of E(x)

__all__ = ["CounterfactualResult", "generate", "frozen_eval", "WithSaliency", "steerable_logits"]


@contextlib.contextmanager
def frozen_eval(*modules: Optional[nn.Module]):
    """Put modules in eval() with parameters frozen; restore mode and requires_grad afterwards.

    Only input (or latent) gradients are wanted: freezing avoids accumulating parameter gradients, and
    eval() makes BatchNorm/Dropout deterministic and independent of the batch composition.
    """
    saved = []
    for m in modules:
        if m is None:
            continue
        # every submodule's own mode: m.train(flag) would set all children to the parent's flag
        saved.append(([(s, s.training) for s in m.modules()], [(p, p.requires_grad) for p in m.parameters()]))
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        for modes, params in reversed(saved):
            for s, training in modes:
                s.training = training
            for p, flag in params:
                p.requires_grad_(flag)


class WithSaliency(nn.Module):
    """A saliency-aided classifier (``needs_saliency``) seen as a plain one, with a FIXED saliency.

    ``forward(x)`` and ``counterfactual_logits(x)`` call the wrapped model with the stored saliency
    (B, S, 1, H, W). When ``x`` carries k * B volumes (targets folded into the batch, target-major),
    the saliency is tiled k times so that row t * B + b gets the saliency of volume b.
    """

    needs_saliency = False

    def __init__(self, model: nn.Module, saliency: torch.Tensor):
        super().__init__()
        self.model = model
        self.saliency = saliency.detach()
        self.num_classes = getattr(model, "num_classes", None)

    @property
    def cam_layer(self):
        return self.model.cam_layer

    def for_volumes(self, idx) -> "WithSaliency":
        """The same classifier for a subset of the volumes (indices into the fixed saliency's batch)."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.saliency.device).reshape(-1)
        return WithSaliency(self.model, self.saliency[idx])

    def _saliency_for(self, x: torch.Tensor) -> torch.Tensor:
        b = self.saliency.shape[0]
        if x.shape[0] % b:
            raise InputError(f"batch of {x.shape[0]} volumes does not fit the fixed saliency of {b}")
        s = self.saliency.to(device=x.device, dtype=x.dtype)
        return s.repeat(x.shape[0] // b, 1, 1, 1, 1)

    def forward(self, x):
        return self.model(x, self._saliency_for(x))

    def counterfactual_logits(self, x):
        return self.model.counterfactual_logits(x, self._saliency_for(x))


def steerable_logits(classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits the counterfactual engine steers: ``counterfactual_logits`` if present, else forward."""
    fn = getattr(classifier, "counterfactual_logits", None)
    return fn(x) if fn is not None else classifier(x)


@dataclass
class CounterfactualResult:
    """Output of :func:`generate` for B volumes and T targets.

    counterfactuals: (T, B, S, 1, H, W) D(z') per target (detached).
    reconstruction:  (B, S, 1, H, W) D(E(x)).
    targets:         (T,) target class indices (of ``counterfactual_logits``).
    trajectory:      (steps + 1, T, B) target probability before each step and after the last.
    latent_distance: (T, B) L1 distance |z' - E(x)| (mean or sum per volume, as ``l1``).
    steps_taken:     (T, B) gradient steps actually applied (< steps where early stop froze it).
    initial_probabilities: (B, K) probabilities of f(D(E(x))).
    latents:         (T, B*S, c, h, w) z' when ``return_latents``; else None.
    """

    counterfactuals: torch.Tensor
    reconstruction: torch.Tensor
    targets: torch.Tensor
    trajectory: torch.Tensor
    latent_distance: torch.Tensor
    steps_taken: torch.Tensor
    initial_probabilities: torch.Tensor
    latents: Optional[torch.Tensor] = None
    config: dict = field(default_factory=dict)

    @property
    def final_probabilities(self) -> torch.Tensor:
        """(T, B) target probability of the returned counterfactuals."""
        return self.trajectory[-1]

    def reached(self, threshold: float = 0.5) -> torch.Tensor:
        """(T, B) bool: did the counterfactual reach its target class probability > threshold?"""
        return self.trajectory[-1] > threshold


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[2] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"expected a (B, S, 1, H, W) tensor, got {shape}")
    if x.shape[-1] % 4 or x.shape[-2] % 4:
        raise InputError(f"H and W must be divisible by 4 for the autoencoder, got {tuple(x.shape[-2:])}")


def _latent_l1(diff: torch.Tensor, n_vol: int, reduction: str) -> torch.Tensor:
    """Per-volume L1 of latent differences (n_vol * S, c, h, w) -> (n_vol,)."""
    per_vol = diff.abs().reshape(n_vol, -1)
    return per_vol.mean(1) if reduction == "mean" else per_vol.sum(1)


def generate(
    classifier: nn.Module,
    autoencoder: nn.Module,
    x: torch.Tensor,
    targets: Optional[Sequence[int]] = None,
    steps: int = 20,
    alpha: float = 100.0,
    step_size: float = 0.1,
    optimizer: str = "sgd",
    l1: str = "mean",
    l1_update: str = "proximal",
    stop_at: Optional[float] = None,
    seed: Optional[int] = 0,
    saliency: Optional[torch.Tensor] = None,
    return_latents: bool = False,
) -> CounterfactualResult:
    """Counterfactuals of ``x`` (B, S, 1, H, W) towards every class in ``targets`` (default: all K).

    ``classifier`` follows the models contract (``counterfactual_logits``); a saliency-aided one
    (``needs_saliency``) needs the fixed ``saliency`` it is fed with. Models are put in eval() with
    frozen parameters for the call and restored afterwards. See the module docstring for defaults.

    steps, alpha: Eq. 4 (paper: 20, 100). step_size: descent step (0.1). optimizer: "sgd" | "adam".
    l1: "mean" | "sum" reduction of |z - E(x)| per volume. l1_update: "proximal" (default) |
    "subgradient" (the authors' exact update), for "sgd". stop_at: freeze a (target, volume) pair once
    its target probability reaches this. seed: torch seed set for the call, the caller's RNG state restored after (None: no seeding); the
    engine itself draws no random numbers, so the result is deterministic for fixed inputs.
    """
    _check_input(x)
    if steps < 0 or alpha < 0 or step_size <= 0:
        raise ConfigError("counterfactual: steps and alpha must be >= 0 and step_size > 0")
    if optimizer not in ("sgd", "adam"):
        raise ConfigError(f"counterfactual: optimizer must be 'sgd' or 'adam', not {optimizer!r}")
    if l1 not in ("mean", "sum"):
        raise ConfigError(f"counterfactual: l1 must be 'mean' or 'sum', not {l1!r}")
    if l1_update not in ("proximal", "subgradient"):
        raise ConfigError(f"counterfactual: l1_update must be 'proximal' or 'subgradient', not {l1_update!r}")
    if getattr(classifier, "needs_saliency", False):
        if saliency is None:
            raise ConfigError("counterfactual: this classifier needs a saliency map; pass saliency=")
        classifier = WithSaliency(classifier, saliency)
    B, S, _, H, W = x.shape
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):   # the caller's RNG is untouched
        if seed is not None:
            torch.manual_seed(seed)
        return _generate(classifier, autoencoder, x, targets, steps, alpha, step_size, optimizer, l1,
                         l1_update, stop_at, seed, return_latents)


def _generate(classifier, autoencoder, x, targets, steps, alpha, step_size, optimizer, l1, l1_update,
              stop_at, seed, return_latents) -> CounterfactualResult:
    B, S, _, H, W = x.shape
    with frozen_eval(classifier, autoencoder), torch.enable_grad():
        with torch.no_grad():
            # E(x) has no graph: encode a few slices at a time (the encoder's full-resolution stem is
            # the memory peak of a brain volume); this does not change the result
            slices = x.reshape(B * S, 1, H, W)
            z0 = torch.cat([autoencoder.encode(slices[i:i + ENCODE_CHUNK])
                            for i in range(0, B * S, ENCODE_CHUNK)])         # (B*S, c, h, w)
            recon = autoencoder.decode(z0).reshape(B, S, 1, H, W)
            logits0 = steerable_logits(classifier, recon)
        K = logits0.shape[1]
        tgt = torch.arange(K) if targets is None else torch.as_tensor(list(targets), dtype=torch.long)
        if tgt.numel() == 0 or int(tgt.min()) < 0 or int(tgt.max()) >= K:
            raise ConfigError(f"counterfactual: targets must be class indices in [0, {K}), got {tgt.tolist()}")
        T = tgt.numel()
        tgt = tgt.to(x.device)
        t_rows = tgt.repeat_interleave(B)                                  # (T*B,) target-major
        z0_all = z0.repeat(T, 1, 1, 1)                                     # (T*B*S, c, h, w)
        z = z0_all.clone().requires_grad_(True)
        adam = torch.optim.Adam([z], lr=step_size) if optimizer == "adam" else None
        proximal = adam is None and l1_update == "proximal"
        alpha_eff = alpha / z0[0:S].numel() if l1 == "mean" else alpha
        active = torch.ones(T * B, dtype=torch.bool, device=x.device)
        taken = torch.zeros(T * B, dtype=torch.long, device=x.device)
        traj = []

        def evaluate(zz):
            imgs = autoencoder.decode(zz).reshape(T * B, S, 1, H, W)
            logits = steerable_logits(classifier, imgs)
            return imgs, logits

        for _ in range(steps):
            imgs, logits = evaluate(z)
            p_t = F.softmax(logits, 1).gather(1, t_rows[:, None])[:, 0]
            traj.append(p_t.detach())
            if stop_at is not None:
                active = active & (p_t.detach() < stop_at)
                if not bool(active.any()):
                    break
            ce = F.cross_entropy(logits, t_rows, reduction="none")                # (T*B,)
            loss = ce.sum()
            if not proximal:
                loss = loss + alpha * _latent_l1(z - z0_all, T * B, l1).sum()
            (grad,) = torch.autograd.grad(loss, z)
            keep = active.repeat_interleave(S)[:, None, None, None]            # per latent slice
            with torch.no_grad():
                if proximal:
                    d = z - step_size * grad - z0_all
                    d = torch.sign(d) * (d.abs() - step_size * alpha_eff).clamp_min(0)
                    z.copy_(torch.where(keep, z0_all + d, z))
                elif adam is None:
                    z -= step_size * grad * keep
                else:
                    before = z.detach().clone()
                    z.grad = grad
                    adam.step()
                    z.copy_(torch.where(keep, z, before))
            taken += active.long()

        with torch.no_grad():
            imgs, logits = evaluate(z)
            p_t = F.softmax(logits, 1).gather(1, t_rows[:, None])[:, 0]
        traj.append(p_t)
        while len(traj) < steps + 1:           # all pairs stopped early: they no longer change
            traj.append(p_t)
        dist = _latent_l1(z.detach() - z0_all, T * B, l1)

    return CounterfactualResult(
        counterfactuals=imgs.detach().reshape(T, B, S, 1, H, W),
        reconstruction=recon.detach(),
        targets=tgt.cpu(),
        trajectory=torch.stack(traj).reshape(steps + 1, T, B).cpu(),
        latent_distance=dist.reshape(T, B).cpu(),
        steps_taken=taken.reshape(T, B).cpu(),
        initial_probabilities=F.softmax(logits0, 1).detach().cpu(),
        latents=z.detach().reshape(T, B * S, *z.shape[1:]) if return_latents else None,
        config=dict(steps=steps, alpha=alpha, step_size=step_size, optimizer=optimizer, l1=l1,
                    l1_update=l1_update, stop_at=stop_at, seed=seed),
    )
