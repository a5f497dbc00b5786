"""Update rules of the Eq. 4 search (:func:`ACATCore.counterfactual.generate`): gradient descent with the
proximal L1 step (the paper's), FISTA (restarted momentum) and Adam, with their step schedules."""
from __future__ import annotations

import math

import torch

from .counterfactual_options import CounterfactualOptions

def _soft_threshold(v: torch.Tensor, z0: torch.Tensor, thr: float) -> torch.Tensor:
    """Proximal step of thr * |z - z0|_1: each element of v - z0 shrinks by thr, stopping at 0."""
    d = v - z0
    return z0 + torch.sign(d) * (d.abs() - thr).clamp_min(0)


class _Solver:
    """One update rule of Eq. 4 for the pairs still running (``idx``, their latent rows ``rows``).

    ``l1_in_loss``: the L1 term is part of the differentiated loss (subgradient); otherwise the
    update applies it by its proximal step. ``observe`` gets each evaluation's Eq. 4 values (for
    ``schedule="adaptive"``); ``update`` returns the new latents of ``rows``."""

    l1_in_loss = False

    def __init__(self, opts: CounterfactualOptions, alpha_eff: float, n_pairs: int, S: int):
        self.opts, self.alpha_eff, self.S, self.k = opts, alpha_eff, S, 0
        self.scale = torch.ones(n_pairs)          # adaptive: each pair's step factor
        self.last = torch.full((n_pairs,), math.inf)
        self.rose = torch.zeros(n_pairs, dtype=torch.bool)

    def observe(self, idx, objective):
        """Adaptive schedule: a pair's step grows 1.25x (up to 4x) while its Eq. 4 value falls and halves
        when it rises (the move is kept; momentum restarts)."""
        if self.opts.schedule != "adaptive":
            return
        obj, cpu = objective.detach().float().cpu(), idx.cpu()
        last = self.last[cpu]
        rose = obj > last
        grow = torch.where(rose, torch.full_like(obj, 0.5), torch.full_like(obj, 1.25))
        self.scale[cpu] = torch.where(torch.isfinite(last), (self.scale[cpu] * grow).clamp(max=4.0),
                                      self.scale[cpu])
        self.rose[cpu], self.last[cpu] = rose, obj

    def lr(self, idx, like) -> torch.Tensor:
        """The step size of step ``self.k`` for each latent row of the pairs ``idx``: (n*S, 1, 1, 1)."""
        s = self.opts.step_size
        if self.opts.schedule == "cosine" and self.opts.steps > 0:
            s = s * 0.5 * (1 + math.cos(math.pi * self.k / self.opts.steps))
        per_pair = s * self.scale[idx.cpu()]
        return per_pair.to(like.device, like.dtype).repeat_interleave(self.S).reshape(-1, 1, 1, 1)

    def update(self, zz, grad, z0r, idx, rows):
        raise NotImplementedError


class _GradientDescent(_Solver):
    """The paper's plain gradient descent: proximal (ISTA) or, as the authors, subgradient L1."""

    def __init__(self, opts, alpha_eff, n_pairs, S):
        super().__init__(opts, alpha_eff, n_pairs, S)
        self.l1_in_loss = opts.l1_update == "subgradient"

    def update(self, zz, grad, z0r, idx, rows):
        s = self.lr(idx, zz)
        if self.l1_in_loss:
            return zz - s * grad
        return _soft_threshold(zz - s * grad, z0r, s * self.alpha_eff)


class _Fista(_Solver):
    """Proximal gradient with Nesterov momentum (FISTA, Beck & Teboulle 2009), its coefficient capped
    at ``momentum`` and restarted per pair (O'Donoghue & Candes 2015) when the proximal step turns
    against the last move or the Eq. 4 value rose. The latent handed back (and evaluated next) is the
    extrapolated point; the state holds the proximal iterates. No extra evaluation per step."""

    def __init__(self, opts, alpha_eff, n_pairs, S):
        super().__init__(opts, alpha_eff, n_pairs, S)
        self.prev, self.t = None, torch.ones(n_pairs)

    def update(self, zz, grad, z0r, idx, rows):
        if self.prev is None:          # before the first step the "last iterate" is the start
            self.prev = torch.zeros(self.scale.numel() * self.S, *zz.shape[1:], device=zz.device, dtype=zz.dtype)
            self.prev[rows] = zz
        s = self.lr(idx, zz)
        x = _soft_threshold(zz - s * grad, z0r, s * self.alpha_eff)
        x_old, cpu, n = self.prev[rows], idx.cpu(), idx.numel()
        against = ((zz - x) * (x - x_old)).reshape(n, -1).sum(1).cpu() > 0
        t_old = torch.where(against | self.rose[cpu], torch.ones(n), self.t[cpu])
        t_new = (1 + torch.sqrt(1 + 4 * t_old * t_old)) / 2
        beta = ((t_old - 1) / t_new).clamp(max=self.opts.momentum)
        self.prev[rows], self.t[cpu] = x, t_new
        beta = beta.to(zz.device, zz.dtype).repeat_interleave(self.S).reshape(-1, 1, 1, 1)
        return x + beta * (x - x_old)


class _Adam(_Solver):
    """Adam (Kingma & Ba 2015, PyTorch's defaults) on the subgradient of the whole Eq. 4 loss; the
    moments of a row change only while its pair runs."""

    l1_in_loss = True

    def __init__(self, opts, alpha_eff, n_pairs, S, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(opts, alpha_eff, n_pairs, S)
        self.betas, self.eps, self.m, self.v = betas, eps, None, None

    def update(self, zz, grad, z0r, idx, rows):
        if self.m is None:
            self.m = torch.zeros(self.scale.numel() * self.S, *zz.shape[1:], device=zz.device, dtype=zz.dtype)
            self.v = torch.zeros_like(self.m)
        b1, b2 = self.betas
        m = self.m[rows] * b1 + (1 - b1) * grad
        v = self.v[rows] * b2 + (1 - b2) * grad * grad
        self.m[rows], self.v[rows] = m, v
        n = self.k + 1
        denom = (v.sqrt() / math.sqrt(1 - b2 ** n)).add_(self.eps)
        return zz - (self.lr(idx, zz) / (1 - b1 ** n)) * m / denom


SOLVERS = {"sgd": _GradientDescent, "fista": _Fista, "adam": _Adam}
