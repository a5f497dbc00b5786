"""Building blocks shared by the ACAT models.

Shapes: a model input is ``(B, S, 1, H, W)`` (B volumes, S slices); inside the networks the slices
are folded into the batch, ``(B*S, C, h, w)``. See docs/INTERFACES.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputError
from ..tasks import BRAIN_CLASS_NAMES, LUNG_CLASS_NAMES  # noqa: F401  (re-exported)

BRAIN_SIDE_NAMES = ("left", "right", "both")


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------
def check_volume_input(x, name: str = "x", channels: int = 1, even_width: bool = False,
                       size: tuple[int, int] | None = None) -> None:
    """Raise :class:`InputError` (one line) unless ``x`` is a float tensor ``(B, S, channels, H, W)``."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch tensor of shape (B, S, {channels}, H, W), got {type(x).__name__}")
    if x.dim() != 5 or x.shape[2] != channels:
        raise InputError(f"expected {name} of shape (B, S, {channels}, H, W) (volumes, slices, channel, rows, "
                         f"columns), got {tuple(x.shape)}")
    if min(x.shape) < 1:
        raise InputError(f"{name} has an empty dimension: {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise InputError(f"{name} must be a floating-point tensor (windowed CT in [0, 1]), got {x.dtype}")
    if even_width and x.shape[-1] % 2:
        raise InputError(f"brain models split each slice at W/2 into hemispheres: the width W must be even, "
                         f"got W={x.shape[-1]}")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        raise InputError(f"this model was built for slices of {size[0]}x{size[1]}, got {x.shape[-2]}x{x.shape[-1]}; "
                         "resize the input (see the model card's preprocessing)")


def check_saliency_input(x: torch.Tensor, saliency) -> None:
    """The saliency map must have exactly the image's shape."""
    if saliency is None:
        raise InputError("this model needs a saliency map: call model(x, saliency) with saliency of x's shape")
    if not isinstance(saliency, torch.Tensor) or tuple(saliency.shape) != tuple(x.shape):
        got = tuple(saliency.shape) if isinstance(saliency, torch.Tensor) else type(saliency).__name__
        raise InputError(f"expected saliency of the image's shape {tuple(x.shape)}, got {got}")


def check_min_size(h: int, w: int, min_h: int, min_w: int, what: str) -> None:
    if h < min_h or w < min_w:
        raise InputError(f"slices of {h}x{w} are too small for {what}: need at least {min_h}x{min_w}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def as_int_list(name: str, values, length: int | None = None) -> list[int]:
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a list of integers, got {values!r}") from None
    if length is not None and len(out) != length:
        raise ConfigError(f"{name} must have {length} entries, got {len(out)}")
    if any(v < 1 for v in out):
        raise ConfigError(f"{name} entries must be >= 1, got {out}")
    return out


def fold(x: torch.Tensor) -> torch.Tensor:
    """(B, S, C, H, W) -> (B*S, C, H, W)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unfold(t: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*S, ...) -> (B, S, ...)."""
    return t.reshape(batch, t.shape[0] // batch, *t.shape[1:])


class StridedPointwise(nn.Conv2d):
    """A 1x1 convolution with stride s, computed as a 1x1 convolution of every s-th pixel: the same numbers and the
    same weights (``weight``, ``bias``), but it trains in channels-last memory format, where torch 2.13's CPU weight
    gradient of a strided 1x1 convolution crashes the process (``training.runtime.has_strided_1x1``)."""

    def __init__(self, c_in: int, c_out: int, stride: int, bias: bool = False, device=None):
        super().__init__(c_in, c_out, 1, bias=bias, device=device)
        self.step = stride

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> "StridedPointwise":
        """The same convolution (a 1x1 one with equal strides) as a StridedPointwise, its weights shared."""
        if conv.kernel_size != (1, 1) or conv.padding != (0, 0) or conv.groups != 1 or len(set(conv.stride)) != 1:
            raise ValueError(f"not a plain strided 1x1 convolution: {conv}")
        new = torch.nn.utils.skip_init(cls, conv.in_channels, conv.out_channels, conv.stride[0],
                                       bias=conv.bias is not None)        # draws no random numbers
        new.weight, new.bias = conv.weight, conv.bias
        return new

    def forward(self, x):
        return super().forward(x[..., ::self.step, ::self.step])


def relu() -> nn.ReLU:
    """ReLU that is never in place, so forward/backward hooks (Grad-CAM, Captum) see true values."""
    return nn.ReLU(inplace=False)


def calibrate_batchnorm(model: nn.Module, batches, forward=None) -> nn.Module:
    """Reset every BatchNorm's running statistics to their average over ``batches`` (each a tensor or a
    tuple of the model's positional arguments); returns the model in eval mode. ``forward(model,
    batch)``, if given, runs a batch instead (e.g. ``counterfactual.steerable_logits``).

    For untrained or re-initialised nets, whose initial statistics make eval-mode features vanish.
    Ours, not ``torch.optim.swa_utils.update_bn``: that passes only a tuple's first item (ACAT takes two)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                       # cumulative average over the batches
    model.train()
    try:
        with torch.no_grad():
            for batch in batches:
                if forward is not None:
                    forward(model, batch)
                else:
                    model(*batch) if isinstance(batch, tuple) else model(batch)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return model.eval()


# --------------------------------------------------------------------------------------------------
# Hemispheres (brain): the patient's RIGHT side lies in columns w < W/2 (INTERFACES.md)
# --------------------------------------------------------------------------------------------------
def split_hemispheres(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (2N, C, H, W/2): first the N right halves as they are, then the N left halves
    mirrored left-right, so that both sides look alike and share the same filters."""
    half = x.shape[-1] // 2
    right = x[..., :half]
    left = torch.flip(x[..., half:], dims=[-1])
    return torch.cat([right, left], dim=0)


def split_hemispheres_contralateral(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (2N, 2C, H, W/2): :func:`split_hemispheres`, each half followed by the opposite half
    mirrored onto it (channels [this side, other side]): the shared branch compares a hemisphere with its
    mirror image pixel by pixel, as a reader compares the two sides for a hypodense region."""
    halves = split_hemispheres(x)
    n = halves.shape[0] // 2
    return torch.cat([halves, torch.cat([halves[n:], halves[:n]], dim=0)], dim=1)


def merge_hemispheres(t: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_hemispheres` for feature maps: (2N, C, h, w) -> (N, C, h, 2w), the left
    half mirrored back, so the map is aligned with the input slice."""
    n = t.shape[0] // 2
    return torch.cat([t[:n], torch.flip(t[n:], dims=[-1])], dim=-1)


class HemisphereMerge(nn.Module):
    """Module form of :func:`merge_hemispheres`; its output is a whole-slice feature map (the brain
    models' ``cam_layer``)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return merge_hemispheres(t)


POOLINGS = ("mean", "topk")


def spatial_pool(fmap: torch.Tensor, pooling: str = "mean", topk: int = 8) -> torch.Tensor:
    """(N, C, h, w) -> (N, C): the global average (``"mean"``, the paper) or the mean of each channel's
    ``topk`` largest values (``"topk"``: local evidence, a lesion a few cells wide is not averaged away)."""
    if pooling == "mean":
        return fmap.mean(dim=(-2, -1))
    flat = fmap.flatten(-2)
    return flat.topk(min(int(topk), flat.shape[-1]), dim=-1).values.mean(dim=-1)


def hemisphere_features(merged: torch.Tensor, pooling: str = "mean", topk: int = 8):
    """Pool each half of a merged map (N, C, h, 2w) -> (right (N, C), left (N, C)); see :func:`spatial_pool`."""
    w = merged.shape[-1] // 2
    return spatial_pool(merged[..., :w], pooling, topk), spatial_pool(merged[..., w:], pooling, topk)


# --------------------------------------------------------------------------------------------------
# Brain multi-task heads
# --------------------------------------------------------------------------------------------------
def combine_mtl(lesion_logits: torch.Tensor, side_logits: torch.Tensor) -> torch.Tensor:
    """4-class log-probabilities (no lesion, left, right, both) from the two heads:
    P(none) = P(no lesion); P(side) = P(lesion) * P(side | lesion)."""
    log_lesion = F.log_softmax(lesion_logits, dim=-1)
    log_side = F.log_softmax(side_logits, dim=-1)
    return torch.cat([log_lesion[:, :1], log_lesion[:, 1:2] + log_side], dim=-1)


class SymmetricMTLHeads(nn.Module):
    """Lesion head (2) and side head (3: left, right, both) on the concatenated features of both sides.

    The concatenation is ordered "this side first": ``v_left = [f_left, f_right]``,
    ``v_right = [f_right, f_left]``. The lesion head averages one linear map over both orders, the side
    head scores "left" from ``v_left`` and "right" from ``v_right`` with the same weights, "both" from
    both orders. So mirroring a scan swaps the left and right outputs exactly and leaves the rest.
    """

    def __init__(self, features: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.lesion = nn.Linear(2 * features, 2)
        self.side = nn.Linear(2 * features, 1)
        self.both = nn.Linear(2 * features, 1)

    def forward(self, right: torch.Tensor, left: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v_left = self.dropout(torch.cat([left, right], dim=-1))
        v_right = self.dropout(torch.cat([right, left], dim=-1))
        lesion = 0.5 * (self.lesion(v_left) + self.lesion(v_right))
        both = 0.5 * (self.both(v_left) + self.both(v_right))
        side = torch.cat([self.side(v_left), self.side(v_right), both], dim=-1)
        return lesion, side


class PlainMTLHeads(nn.Module):
    """Lesion head (2) and side head (3) on one feature vector (models without hemispheres, e.g. ViT)."""

    def __init__(self, features: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.lesion = nn.Linear(features, 2)
        self.side = nn.Linear(features, 3)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.dropout(feats)
        return self.lesion(feats), self.side(feats)


# --------------------------------------------------------------------------------------------------
# Attention modules
# --------------------------------------------------------------------------------------------------
class SpatialAttention(nn.Module):
    """Soft spatial attention mask from features (paper Sec. 3.1): pool over channels (max by
    default, or avg), 3x3 convolution, [BatchNorm: the authors' code], sigmoid -> S_s (N, 1, h, w)."""

    def __init__(self, pool: str = "max", batchnorm: bool = False):
        super().__init__()
        check_choice("attention_pool", pool, ("max", "avg"))
        self.pool = pool
        self.conv = nn.Conv2d(1, 1, kernel_size=3, padding=1, bias=not batchnorm)
        self.norm = nn.BatchNorm2d(1) if batchnorm else nn.Identity()

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self.pool == "max":
            pooled = s.amax(dim=1, keepdim=True)  # S_p^i
        else:
            pooled = s.mean(dim=1, keepdim=True)
        return torch.sigmoid(self.norm(self.conv(pooled)))  # S_s^i


def modulate(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G = F + F * S (Eq. 1 with the skip connection of Sec. 3.1); S broadcast over channels."""
    return features + features * mask


class AttentionFusion(nn.Module):
    """Attention fusion layer L_f (Sec. 3.1.1): each mask average-pooled to the last feature map's
    (h', w'), concatenated, 1x1 convolution -> S_f; sigmoid on it by default (paper), none with
    ``sigmoid=False`` (the authors' code)."""

    def __init__(self, masks: int = 3, sigmoid: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(masks, 1, kernel_size=1)
        self.sigmoid = sigmoid

    def forward(self, masks: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        pooled = [F.adaptive_avg_pool2d(m, size) for m in masks]  # S_{s,p}
        fused = self.conv(torch.cat(pooled, dim=1))
        return torch.sigmoid(fused) if self.sigmoid else fused


class SliceAttention(nn.Module):
    """Attention over slices (Sec. 4.2): MLP with one hidden layer, leaky ReLU, dropout 0.1, sigmoid.

    ``mode="shared"`` (default) scores each slice from its own features with one MLP, so any slice
    count works; ``mode="joint"`` (the authors' code) reads the features of all ``num_slices`` slices at
    once and outputs one score per slice. ``normalise=True`` (default) divides the weights by their sum
    (a weighted mean, like the baseline's slice mean); ``False`` is the authors' plain weighted sum.
    """

    def __init__(self, features: int, hidden: int = 64, dropout: float = 0.1, mode: str = "shared",
                 num_slices: int | None = None, normalise: bool = True):
        super().__init__()
        check_choice("slice_attention", mode, ("shared", "joint"))
        if mode == "joint" and not num_slices:
            raise ConfigError("slice_attention='joint' needs num_slices (the fixed number of slices)")
        self.mode = mode
        self.num_slices = num_slices
        self.normalise = normalise
        n_in, n_out = (features, 1) if mode == "shared" else (features * num_slices, num_slices)
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.LeakyReLU(0.01), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_out))

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores (B, S) from slice features (B, S, F)."""
        b, s, _ = feats.shape
        if self.mode == "shared":
            return self.mlp(feats).squeeze(-1)
        if s != self.num_slices:
            raise InputError(f"this model's slice attention was built for {self.num_slices} slices, got {s}")
        return self.mlp(feats.reshape(b, -1))

    def weights(self, scores: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(scores)
        if self.normalise:
            w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-6)
        return w

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, F) -> (pooled (B, F), weights (B, S))."""
        w = self.weights(self.scores(feats))
        return (w.unsqueeze(-1) * feats).sum(dim=1), w


class SelfAttention2d(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019): query/key 1x1 convs to C/8, value 1x1 conv to C,
    softmax over positions, output gamma * o + x with gamma starting at 0."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (n, hw, c')
        k = self.key(x).flatten(2)  # (n, c', hw)
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # (n, hw, hw)
        v = self.value(x).flatten(2)  # (n, c, hw)
        o = torch.bmm(v, attn.transpose(1, 2)).reshape(n, c, h, w)
        return self.gamma * o + x
