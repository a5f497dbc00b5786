"""Counterfactuals in the autoencoder latent space (paper Sec. 3.2, Eq. 4; Appendix F).

For a volume ``x`` of ``S`` slices and a target class ``t`` we look for a latent ``z'`` minimising

    g(z) = CE(f(D(z)), t) + alpha * |z - E(x)|_1                                    (Eq. 4)

from ``z0 = E(x)``; ``D(z')`` is the counterfactual. ``E``/``D`` work on single slices (N, 1, H, W);
``f`` on slice stacks (B, S, 1, H, W) and we steer its ``counterfactual_logits`` (brain: the lesion
head [no lesion, lesion]; lung: the 2 classes).

Everything runs in ONE batched graph: the T targets are folded into the batch (target-major: row
``t * B + b``), so T * B * S slices are decoded and classified together; there is no Python loop over
targets or slices. Each (target, volume) pair has its own loss term and the total loss is their SUM,
so the gradient of one pair does not depend on the others: batched and one-at-a-time runs agree.

Options (:class:`CounterfactualOptions`, also accepted as keyword arguments of :func:`generate`;
``ACATCore.analyze(counterfactual_options=...)`` and the saliency options of a model card reach them
unchanged). Defaults and why (where the paper is silent):
- ``optimizer="sgd"``: plain gradient descent, the paper's solver and this function's default (the
  paper preset). With it the L1 term is applied by its exact proximal step (soft-thresholding towards
  z0, i.e. ISTA) rather than by its subgradient alpha_eff * sign(z - z0): the subgradient overshoots
  z0 every step and leaves z oscillating around it, so that a LARGER alpha gave a LARGER latent
  distance. Both minimise the same Eq. 4; ``l1_update="subgradient"`` reproduces the authors' update.
  (alpha_eff = alpha / n for ``l1="mean"`` with n latent elements per volume, alpha for ``"sum"``.)
- ``optimizer="fista"``: the same proximal step with Nesterov momentum (FISTA, Beck & Teboulle 2009)
  and a gradient-based restart (O'Donoghue & Candes 2015): no extra evaluation per step, reaches the
  paper's 20-step objective in far fewer steps (docs/analyze.md, Speed). ``optimizer="adam"``: Adam
  on the subgradient of the full loss, optionally with a cosine ``schedule``.
- ``l1="mean"``: the L1 distance is averaged over the latent elements of a volume, as in the authors'
  code. With ``"sum"`` (the literal Eq. 4) alpha = 100 pins almost every latent element to z0.
- ``step_size=0.1``: the authors' first published value, used with mean-L1 and alpha = 100 (their
  later repository uses 0.001, which rarely reaches the target in 20 steps; Appendix F uses 1.0).
- ``stop_at=None``: optional early stop; a (target, volume) pair whose target probability reaches
  ``stop_at`` stops changing and LEAVES the batch (later steps decode and classify only the pairs still
  running; the others' results are those of the run without early stop). A pair whose target is
  already reached at z0 stops at step 0: its counterfactual is exactly D(E(x)) and its map is zero.

Speed without changing the result: weights frozen (only the latent gradient is computed, never a
parameter gradient; E(x) under inference_mode, so no encoder graph exists), BatchNorm folded into
the convolution before it (``fuse``), the decoder optionally in chunks recomputed in the backward
pass (``decode_chunk``, bounds memory), ``compile`` (torch.compile of the decode-classify step).
``precision="bf16"``: the search under bfloat16 autocast; the returned images, the reconstruction and
the final probabilities are always computed in float32, so bf16 rounding noise never enters a map.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .counterfactual_options import OPTIMIZERS, PRECISIONS, CounterfactualOptions
from .counterfactual_solvers import SOLVERS
from .errors import ACATError, ConfigError, InputError

ENCODE_CHUNK = 4   # slices per encoder call (no-grad); bounds the memory of E(x)
_log = logging.getLogger(__name__)

__all__ = ["CounterfactualOptions", "CounterfactualResult", "generate", "frozen_eval", "WithSaliency",
           "steerable_logits", "OPTIMIZERS", "PRECISIONS"]


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


# ----------------------------------------------------------------------------------------- result
@dataclass
class CounterfactualResult:
    """Output of :func:`generate` for B volumes and T targets.

    counterfactuals: (T, B, S, 1, H, W) D(z') per target (detached, float32).
    reconstruction:  (B, S, 1, H, W) D(E(x)).
    targets:         (T,) target class indices (of ``counterfactual_logits``).
    trajectory:      (steps + 1, T, B) target probability before each step and after the last.
    latent_distance: (T, B) L1 distance |z' - E(x)| (mean or sum per volume, as ``l1``).
    steps_taken:     (T, B) gradient steps actually applied (< steps where early stop froze it).
    initial_probabilities: (B, K) probabilities of f(D(E(x))).
    latents:         (T, B*S, c, h, w) z' when ``return_latents``; else None.
    objective:       (steps + 1, T, B) the Eq. 4 value g(z) at each evaluated latent (the search's
                     precision; the last row in float32), frozen once a pair stops.
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
    objective: Optional[torch.Tensor] = None

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


def generate(classifier: nn.Module, autoencoder: nn.Module, x: torch.Tensor,
             targets: Optional[Sequence[int]] = None, *, options=None,
             saliency: Optional[torch.Tensor] = None, **kwargs) -> CounterfactualResult:
    """Counterfactuals of ``x`` (B, S, 1, H, W) towards every class in ``targets`` (default: all K).

    ``classifier`` follows the models contract (``counterfactual_logits``); a saliency-aided one
    (``needs_saliency``) needs the fixed ``saliency`` it is fed with. Models are put in eval() with
    frozen parameters for the call and restored afterwards. ``options``: a
    :class:`CounterfactualOptions` or a dict; keyword arguments (``steps=``, ``optimizer=``, ...)
    override it. See :class:`CounterfactualOptions` and the module docstring for what each does.
    The engine draws no random numbers: the result is deterministic for fixed inputs.

    Example::

        res = generate(clf, ae, x, steps=8, optimizer="fista", stop_at=0.9)
        res.counterfactuals.shape          # (K, B, S, 1, H, W)
    """
    opts = CounterfactualOptions.build(options, **kwargs)
    _check_input(x)
    if getattr(classifier, "needs_saliency", False):
        if saliency is None:
            raise ConfigError("counterfactual: this classifier needs a saliency map; pass saliency=")
        classifier = WithSaliency(classifier, saliency)
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=opts.seed is not None):   # the caller's RNG is untouched
        if opts.seed is not None:
            torch.manual_seed(opts.seed)
        with frozen_eval(classifier, autoencoder), torch.enable_grad():
            return _Search(classifier, autoencoder, x, targets, opts).run()


# ------------------------------------------------------------------------------ BatchNorm folding
def _fold_pairs(modules, run):
    """Conv2d -> BatchNorm2d pairs where the BatchNorm's input IS the conv's output (seen by hooks
    during ``run()``, a forward pass of the original modules): only those are folded."""
    last, pairs, hooks, seen = [None, None], [], [], {}
    convs = [m for mod in modules for m in mod.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for mod in modules for m in mod.modules() if isinstance(m, nn.BatchNorm2d)]

    def post(m, i, o):                  # only the latest conv output is held (one tensor)
        last[0], last[1] = o, m

    def pre(m, i):                      # returns None: the input is unchanged
        c = last[1] if (last[0] is not None and i[0] is last[0]) else None
        if seen.setdefault(id(m), c) is not c:
            seen[id(m)] = None          # fed by different tensors on different calls: not folded
        last[0] = last[1] = None

    hooks += [c.register_forward_hook(post) for c in convs]
    hooks += [b.register_forward_pre_hook(pre) for b in bns]
    try:
        result = run()
    finally:
        for h in hooks:
            h.remove()
        last[0] = last[1] = None
    for b in bns:
        c = seen.get(id(b))
        if c is not None and b.track_running_stats and b.running_var is not None and c.groups >= 1:
            pairs.append((c, b))
    return result, pairs


def fold_batchnorm(modules, pairs):
    """Copies of ``modules`` with each (conv, BatchNorm) pair of ``pairs`` folded into one conv (eval
    mode, frozen weights: BN(conv(x)) = conv'(x) exactly, up to float rounding). Removes the BatchNorm
    and its backward from every counterfactual step (PyTorch's ``fuse_conv_bn_weights``). The
    originals are untouched."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_weights
    memo = {}
    copies = [None if m is None else copy.deepcopy(m, memo) for m in modules]
    for c, b in pairs:
        c2, b2 = memo.get(id(c)), memo.get(id(b))
        if c2 is None or b2 is None:
            continue
        with torch.no_grad():
            w, bias = fuse_conv_bn_weights(c2.weight, c2.bias, b2.running_mean, b2.running_var, b2.eps,
                                           b2.weight, b2.bias)
            if c2.weight.is_contiguous(memory_format=torch.channels_last) and not c2.weight.is_contiguous():
                w = w.contiguous(memory_format=torch.channels_last)
            c2.weight = nn.Parameter(w.detach(), requires_grad=False)
            c2.bias = nn.Parameter(bias.detach(), requires_grad=False)
        b2.forward = _identity.__get__(b2)
    return copies


def _identity(self, x):
    return x


def _rows(idx: torch.Tensor, S: int) -> torch.Tensor:
    """Pair indices (n,) -> their latent slice rows (n*S,) in a (T*B*S, ...) batch."""
    return (idx[:, None] * S + torch.arange(S, device=idx.device)[None]).reshape(-1)



# ------------------------------------------------------------------------------------------ search
class _Search:
    """One call of :func:`generate` (models already frozen, gradients enabled): set up, step, finish.

    State per (target, volume) pair, target-major (row ``t * B + b``): ``active`` (still searching),
    ``taken`` (steps applied), ``p_now`` / ``obj_now`` (target probability / Eq. 4 value at its latest
    evaluation) and, once it stopped early, ``final_imgs``. Latents ``z`` are (T*B*S, c, h, w)."""

    def __init__(self, classifier, autoencoder, x, targets, opts: CounterfactualOptions):
        self.clf0, self.ae0, self.x, self.opts, self.targets = classifier, autoencoder, x, opts, targets
        self.B, self.S, _, self.H, self.W = x.shape
        self.n_evals = 0
        self.traj, self.objs = [], []

    def autocast(self, enabled: bool = True):
        """bf16 autocast for the search when asked for; ``enabled=False`` forces float32."""
        dev = "cpu" if self.x.device.type == "cpu" else self.x.device.type
        return torch.autocast(dev, dtype=torch.bfloat16, enabled=enabled and self.opts.precision == "bf16")

    def run(self) -> CounterfactualResult:
        self._start()
        with self.autocast():
            for k in range(self.opts.steps):
                if not self._step(k):
                    break
        self._finish()
        return self._result()

    # ------------------------------------------------------------------------------- set-up
    def _start(self):
        """E(x) (no graph), the (folded) nets, D(E(x)), the starting logits, targets and state."""
        B, S, H, W = self.B, self.S, self.H, self.W
        slices = self.x.reshape(B * S, 1, H, W)
        with torch.inference_mode():
            # a few slices at a time: the encoder's full-resolution stem is a brain volume's memory peak
            z0 = torch.cat([self.ae0.encode(slices[i:i + ENCODE_CHUNK])
                            for i in range(0, B * S, ENCODE_CHUNK)]).float()     # (B*S, c, h, w)
        self.z0 = z0.clone()                    # a normal tensor (inference tensors cannot enter a graph)
        self._prepare_nets()
        self._prepare_targets()
        self._prepare_state()

    def _reference(self, clf, ae):
        """(D(z0) as (B, S, 1, H, W) float32, logits of it): float32, no graph."""
        with torch.no_grad():
            r = self._decode(ae, self.z0, ENCODE_CHUNK).reshape(self.B, self.S, 1, self.H, self.W)
            return r, steerable_logits(clf, r.to(self.x.dtype))

    def _prepare_nets(self):
        """The nets of the search: BatchNorm folded (``fuse``) where a conv feeds it, optionally compiled."""
        clf, ae = self.clf0, self.ae0
        if self.opts.fuse:   # the same forward, watched by hooks: which BatchNorms read a conv's output
            (recon, logits0), pairs = _fold_pairs([clf, ae], lambda: self._reference(clf, ae))
            if pairs:
                clf, ae = fold_batchnorm([clf, ae], pairs)
        else:
            recon, logits0 = self._reference(clf, ae)
        self.logits0 = logits0.float()
        self.recon = self.recon_orig = recon.float()
        if ae is not self.ae0:
            # D(E(x)) from the same (folded) decoder as the counterfactuals: |D(z0) - D(z')| then holds
            # no rounding difference between two decoders
            self.recon = self._reference(clf, ae)[0].float()
        self._use_nets(clf, ae)

    def _use_nets(self, clf, ae):
        self.clf, self.ae = clf, ae
        self.decode_fn, self.logits_fn = ae.decode, (lambda c, imgs: steerable_logits(c, imgs))
        if self.opts.compile:      # the classifier only when no subset copies are made of it
            self.decode_fn = _compiled(ae.decode)
            if not hasattr(clf, "for_volumes"):
                self.logits_fn = _compiled(steerable_logits)

    def _prepare_targets(self):
        K = self.logits0.shape[1]
        tgt = torch.arange(K) if self.targets is None else torch.as_tensor(list(self.targets), dtype=torch.long)
        if tgt.numel() == 0 or int(tgt.min()) < 0 or int(tgt.max()) >= K:
            raise ConfigError(f"counterfactual: targets must be class indices in [0, {K}), got {tgt.tolist()}")
        self.T = tgt.numel()
        self.tgt = tgt.to(self.x.device)
        self.t_rows = self.tgt.repeat_interleave(self.B)                     # (T*B,) target-major
        self.vol_of = torch.arange(self.T * self.B, device=self.x.device) % self.B   # pair -> volume

    def _prepare_state(self):
        T, B, S, H, W, dev = self.T, self.B, self.S, self.H, self.W, self.x.device
        self.z0_all = self.z0.repeat(T, 1, 1, 1)                              # (T*B*S, c, h, w)
        self.z = self.z0_all.clone()
        n = self.z0[0:S].numel()
        self.alpha_eff = self.opts.alpha / n if self.opts.l1 == "mean" else self.opts.alpha
        self.solver = SOLVERS[self.opts.optimizer](self.opts, self.alpha_eff, T * B, S)
        self.active = torch.ones(T * B, dtype=torch.bool, device=dev)
        self.taken = torch.zeros(T * B, dtype=torch.long, device=dev)
        self.p_now = torch.zeros(T * B, device=dev)
        self.obj_now = torch.zeros(T * B, device=dev)
        self.final_imgs = torch.zeros(T * B, S, 1, H, W, device=dev)

    # ------------------------------------------------------------------------------ evaluation
    def _decode(self, ae, z, chunk):
        """D(z) in chunks of ``chunk`` slices, no graph."""
        fn = ae.decode if ae is not getattr(self, "ae", None) else self.decode_fn
        with torch.no_grad():
            return torch.cat([fn(z[i:i + chunk]) for i in range(0, z.shape[0], chunk)]).float()

    def _clf_for(self, idx):
        if idx.numel() == self.T * self.B:
            return self.clf
        sub = getattr(self.clf, "for_volumes", None)
        return sub(self.vol_of[idx]) if sub is not None else self.clf

    def _evaluate(self, zz, idx, need_grad):
        """Images (n, S, 1, H, W), logits and ``chunked`` of the pairs ``idx`` from latents ``zz``."""
        self.n_evals += 1
        n, chunk = idx.numel(), self.opts.decode_chunk
        chunked = need_grad and chunk is not None and zz.shape[0] > chunk
        if chunked or not need_grad:
            imgs = self._decode(self.ae, zz, chunk or zz.shape[0]).reshape(n, self.S, 1, self.H, self.W)
            if need_grad:
                imgs.requires_grad_(True)
        else:
            imgs = self.decode_fn(zz).float().reshape(n, self.S, 1, self.H, self.W)
        with torch.set_grad_enabled(need_grad):
            logits = self.logits_fn(self._clf_for(idx), imgs.to(self.x.dtype))
        return imgs, logits.float(), chunked

    def _latent_grad(self, loss, zz, imgs, chunked):
        if not chunked:
            return torch.autograd.grad(loss, zz)[0]
        # the decoder in chunks, recomputed: its graph is never held for more than ``decode_chunk``
        # slices; the gradient is per-slice separable through the decoder
        chunk = self.opts.decode_chunk
        g_imgs, g_z = torch.autograd.grad(loss, [imgs, zz], allow_unused=True)
        g_imgs = g_imgs.reshape(-1, 1, self.H, self.W)
        grad = torch.zeros_like(zz) if g_z is None else g_z.clone()
        for i in range(0, zz.shape[0], chunk):
            zc = zz[i:i + chunk].detach().requires_grad_(True)
            out = self.ae.decode(zc).float()
            grad[i:i + chunk] += torch.autograd.grad(out, zc, g_imgs[i:i + chunk])[0]
        return grad

    def _check_folding(self, zz, idx, imgs, logits, chunked):
        """The folded copies must reproduce the starting logits; otherwise use the original modules."""
        if self.clf is self.clf0:
            return imgs, logits, chunked
        scale = 1.0 + float(self.logits0.abs().max())
        tol = (5e-2 if self.opts.precision == "bf16" else 2e-3) * scale
        if torch.allclose(logits.detach(), self.logits0[self.vol_of[idx]], atol=tol, rtol=0):
            return imgs, logits, chunked
        self._use_nets(self.clf0, self.ae0)
        self.recon = self.recon_orig
        self.n_evals -= 1
        return self._evaluate(zz, idx, True)

    # ------------------------------------------------------------------------------------ steps
    def _step(self, k: int) -> bool:
        """Step ``k`` for the pairs still running; False when none is left."""
        idx = self.active.nonzero()[:, 0]
        rows = _rows(idx, self.S)
        zz = self.z[rows].requires_grad_(True)
        imgs, logits, chunked = self._evaluate(zz, idx, True)
        if k == 0:
            imgs, logits, chunked = self._check_folding(zz, idx, imgs, logits, chunked)
        ce = F.cross_entropy(logits, self.t_rows[idx], reduction="none")          # (n,)
        self._record(idx, logits, ce, zz)
        done = self._stop(idx, imgs)
        if done is not None and bool(done.all()):
            return False
        if done is not None:
            ce = ce * (~done).to(ce.dtype)        # stopped pairs: no gradient (they are frozen)
        loss = ce.sum()
        if self.solver.l1_in_loss:
            loss = loss + self.opts.alpha * _latent_l1(zz - self.z0_all[rows], idx.numel(), self.opts.l1).sum()
        grad = self._latent_grad(loss, zz, imgs, chunked)
        self._update(zz.detach(), grad, idx, rows)
        return True

    def _record(self, idx, logits, ce, zz):
        """Target probability and Eq. 4 value of the pairs ``idx`` at this evaluation."""
        with torch.no_grad():
            self.p_now[idx] = F.softmax(logits.detach(), 1).gather(1, self.t_rows[idx, None])[:, 0]
            dist = _latent_l1(zz.detach() - self.z0_all[_rows(idx, self.S)], idx.numel(), self.opts.l1)
            self.obj_now[idx] = ce.detach() + self.opts.alpha * dist
        self.solver.observe(idx, self.obj_now[idx])
        self.traj.append(self.p_now.clone())
        self.objs.append(self.obj_now.clone())

    def _stop(self, idx, imgs):
        """Early stop: pairs of ``idx`` at ``stop_at`` leave the batch, their image kept. -> mask or None."""
        if self.opts.stop_at is None:
            return None
        done = self.p_now[idx] >= self.opts.stop_at
        if bool(done.any()):
            self.final_imgs[idx[done]] = imgs.detach()[done].to(self.final_imgs.dtype)
            self.active[idx[done]] = False
        return done

    def _update(self, zz, grad, idx, rows):
        with torch.no_grad():
            keep = self.active[idx].repeat_interleave(self.S)[:, None, None, None]
            zn = self.solver.update(zz, grad.float(), self.z0_all[rows], idx, rows)
            self.z[rows] = torch.where(keep, zn, zz)
            self.solver.k += 1
        self.taken[idx] += self.active[idx].long()

    # ------------------------------------------------------------------------------------ result
    def _finish(self):
        """The pairs still running evaluated once more, in float32 (as every returned image)."""
        idx = self.active.nonzero()[:, 0]
        if idx.numel():
            rows = _rows(idx, self.S)
            imgs, logits, _ = self._evaluate(self.z[rows], idx, False)
            ce = F.cross_entropy(logits, self.t_rows[idx], reduction="none")
            self._record(idx, logits, ce, self.z[rows])
            self.final_imgs[idx] = imgs.detach().to(self.final_imgs.dtype)
        else:
            self.traj.append(self.p_now.clone())
            self.objs.append(self.obj_now.clone())
        stopped = (~self.active).nonzero()[:, 0]
        if self.opts.precision != "fp32" and stopped.numel():    # their images again, in float32
            imgs = self._decode(self.ae, self.z[_rows(stopped, self.S)], self.opts.decode_chunk or ENCODE_CHUNK)
            self.final_imgs[stopped] = imgs.reshape(-1, self.S, 1, self.H, self.W)
        while len(self.traj) < self.opts.steps + 1:      # all pairs stopped early: they no longer change
            self.traj.append(self.p_now.clone())
            self.objs.append(self.obj_now.clone())
        # a pair whose latent never left z0 (stopped at step 0, or pinned by the L1 term) IS the
        # reconstruction: exactly, not the folded decoder's rounding of it (which a per-target max
        # normalisation would blow up into a full-scale noise map)
        unmoved = (self.z == self.z0_all).reshape(self.T * self.B, -1).all(1)
        if bool(unmoved.any()):
            self.final_imgs[unmoved] = self.recon[self.vol_of[unmoved]].to(self.final_imgs.dtype)

    def _result(self) -> CounterfactualResult:
        T, B, S, steps = self.T, self.B, self.S, self.opts.steps
        dist = _latent_l1(self.z - self.z0_all, T * B, self.opts.l1)
        return CounterfactualResult(
            counterfactuals=self.final_imgs.detach().reshape(T, B, S, 1, self.H, self.W),
            reconstruction=self.recon.detach(),
            targets=self.tgt.cpu(),
            trajectory=torch.stack(self.traj).reshape(steps + 1, T, B).cpu(),
            latent_distance=dist.reshape(T, B).cpu(),
            steps_taken=self.taken.reshape(T, B).cpu(),
            initial_probabilities=F.softmax(self.logits0, 1).detach().cpu(),
            latents=self.z.reshape(T, B * S, *self.z.shape[1:]) if self.opts.return_latents else None,
            config={**self.opts.as_dict(), "evaluations": self.n_evals},
            objective=torch.stack(self.objs).reshape(steps + 1, T, B).cpu(),
        )


def _compiled(fn):
    """``torch.compile(fn)`` (inductor), falling back to ``fn`` for good, with a log line, if
    compiling fails (no compiler, an unsupported op): the option never breaks an analysis."""
    state = {"fn": None}

    def call(*args):
        if state["fn"] is None:
            try:
                state["fn"] = torch.compile(fn, dynamic=True)
            except Exception as exc:            # noqa: BLE001 (any compile failure: run eagerly)
                _log.warning("counterfactual: torch.compile unavailable (%s); running eagerly", exc)
                state["fn"] = fn
        if state["fn"] is fn:
            return fn(*args)
        try:
            return state["fn"](*args)
        except Exception as exc:                # noqa: BLE001
            if isinstance(exc, ACATError):
                raise
            _log.warning("counterfactual: torch.compile failed (%s); running eagerly", str(exc)[:200])
            state["fn"] = fn
            return fn(*args)
    return call
