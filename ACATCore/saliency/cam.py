"""Grad-CAM, Grad-CAM++ and Score-CAM on slice stacks (written here: Captum has neither Grad-CAM++ nor
Score-CAM, MONAI's run one volume at a time, pytorch-grad-cam's are 2-D only).

``classifier.cam_layer`` outputs (B*S, C, h, w). The stack of a volume is treated as one 3-D feature
map (S, h, w): channel weights pool the gradients over slices AND pixels (``per_slice=True`` pools
per slice instead, the 2-D variant). Maps are upsampled bilinearly to (H, W). Activations are taken
from a forward hook and gradients by ``torch.autograd.grad`` on the hooked tensor (no backward hooks,
so an in-place ReLU after the layer does no harm); the input is made to require grad so that frozen
parameters still leave a graph to the layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from ._common import for_volumes, resolve_targets, score_fn, upsample_to


def _cam_layer(classifier):
    layer = getattr(classifier, "cam_layer", None)
    if layer is None:
        raise ConfigError(f"{type(classifier).__name__} has no cam_layer: Grad-CAM methods cannot run on it")
    return layer


def _forward_with_activation(classifier, fn, x, need_grad_of=None):
    """Run fn(x) with a hook on cam_layer -> (logits, activation (B*S, C, h, w))."""
    store = {}

    def hook(_module, _inputs, output):
        store["a"] = output[0] if isinstance(output, (tuple, list)) else output

    handle = _cam_layer(classifier).register_forward_hook(hook)
    try:
        logits = fn(x)
    finally:
        handle.remove()
    a = store.get("a")
    B, S = x.shape[:2]
    if a is None or a.dim() != 4 or a.shape[0] != B * S:
        shape = None if a is None else tuple(a.shape)
        raise InputError(f"cam_layer output must be (B*S, C, h, w) = ({B * S}, ...), got {shape}")
    return logits, a


def _acts_and_grads(classifier, fn, x, t):
    with torch.enable_grad():
        xx = x.detach().clone().requires_grad_(True)
        logits, a = _forward_with_activation(classifier, fn, xx)
        score = logits.gather(1, t[:, None]).sum()          # per-volume class: no mixing in the batch
        (g,) = torch.autograd.grad(score, a)
    B, S = x.shape[:2]
    return a.detach().reshape(B, S, *a.shape[1:]), g.detach().reshape(B, S, *a.shape[1:])


def _pool_dims(per_slice):
    return (3, 4) if per_slice else (1, 3, 4)      # over (h, w) or over (S, h, w); tensors (B, S, C, h, w)


def gradcam(classifier, fn, x, target=None, per_slice=False):
    t = resolve_targets(target, fn, x)
    a, g = _acts_and_grads(classifier, fn, x, t)
    w = g.mean(dim=_pool_dims(per_slice), keepdim=True)
    cam = F.relu((w * a).sum(2))                                    # (B, S, h, w)
    B, S, _, H, W = x.shape
    return upsample_to(cam.reshape(B * S, *cam.shape[2:]), B, S, H, W)


def gradcampp(classifier, fn, x, target=None, per_slice=False, eps=1e-7):
    """Grad-CAM++ (Chattopadhyay et al. 2018) with the usual exp(score) closed form:
    alpha = g^2 / (2 g^2 + sum(A) g^3), weights = sum(alpha * relu(g)), pooled over (S, h, w)."""
    t = resolve_targets(target, fn, x)
    a, g = _acts_and_grads(classifier, fn, x, t)
    dims = _pool_dims(per_slice)
    g2, g3 = g ** 2, g ** 3
    denom = 2 * g2 + a.sum(dim=dims, keepdim=True) * g3
    alpha = torch.where(g != 0, g2 / torch.where(denom.abs() > eps, denom, torch.full_like(denom, eps)),
                        torch.zeros_like(g))
    w = (alpha * F.relu(g)).sum(dim=dims, keepdim=True)
    cam = F.relu((w * a).sum(2))
    B, S, _, H, W = x.shape
    return upsample_to(cam.reshape(B * S, *cam.shape[2:]), B, S, H, W)


def scorecam(classifier, fn, x, target=None, batch_size=32, max_channels=None, logits="counterfactual"):
    """Score-CAM (Wang et al. 2020), batched: each channel's activation stack, min-max normalised per
    volume over (S, h, w) and upsampled, masks the input; the softmax probability of the target class
    on the masked volume weights the channel. ``batch_size`` masked volumes go through the classifier
    at once; ``max_channels`` keeps only the channels with the highest mean activation (speed)."""
    t = resolve_targets(target, fn, x)
    B, S, _, H, W = x.shape
    with torch.no_grad():
        _, a = _forward_with_activation(classifier, fn, x)
        a = a.reshape(B, S, *a.shape[1:])                            # (B, S, C, h, w)
        C = a.shape[2]
        cams = []
        for b in range(B):
            fn_b = score_fn(for_volumes(classifier, [b]), logits)
            ab = a[b]                                                # (S, C, h, w)
            chans = torch.arange(C, device=x.device)
            if max_channels is not None and max_channels < C:
                chans = ab.mean(dim=(0, 2, 3)).topk(max_channels).indices
            weights = torch.zeros(C, device=x.device)
            for start in range(0, len(chans), batch_size):
                cs = chans[start:start + batch_size]
                m = ab[:, cs].permute(1, 0, 2, 3)                     # (n, S, h, w)
                lo = m.amin(dim=(1, 2, 3), keepdim=True)
                hi = m.amax(dim=(1, 2, 3), keepdim=True)
                m = torch.where(hi > lo, (m - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(m))
                n = len(cs)
                up = F.interpolate(m.reshape(n * S, 1, *m.shape[2:]), size=(H, W), mode="bilinear",
                                   align_corners=False).reshape(n, S, 1, H, W)
                probs = F.softmax(fn_b(x[b:b + 1] * up), 1)[:, t[b]]
                weights[cs] = probs.to(weights.dtype)
            cams.append(F.relu((weights[None, :, None, None] * ab).sum(1)))   # (S, h, w)
        cam = torch.stack(cams)
    return upsample_to(cam.reshape(B * S, *cam.shape[2:]), B, S, H, W)
