"""The two baselines and the machinery every slice-wise classifier shares.

* ``brain_mtl``: the multi-task CNN for brain CT (paper Sec. 4.2 and Appendix B). 7 conv layers run on one
  hemisphere of one slice at a time (the left half mirrored, so both sides share the filters); the
  features of both sides are concatenated, averaged over slices and read by a lesion head (2) and a
  side head (3: left, right, both), combined into 4 class log-probabilities.
* ``lung_resnet50``: MONAI's ResNet-50 (bottleneck, [3, 4, 6, 3]) per slice, mean over slices, 2 classes.

A classifier here is a :class:`SliceClassifier`: input (B, S, C, H, W) -> per-slice "trunk" (a list of
stages) -> ``merge`` (the ``cam_layer``: a whole-slice feature map (B*S, C, h, w)) -> global average
pool -> aggregation over slices -> heads. ACAT and the competitors reuse it and change the trunk pass.

Option ``pooling="topk"`` (with ``topk``, default 8) replaces the global average pool by the mean of each
channel's ``topk`` largest cells and (baselines) the slice mean by the slice maximum: local-evidence
aggregation for lesions a few cells wide. The paper's mean pooling stays the default: on the brain demo
data top-k measured worse (docs/RESULTS.md, ablations).

Option ``contralateral=True`` (brain) gives each hemisphere branch a second input channel, the opposite
hemisphere mirrored onto it (:func:`~.common.split_hemispheres_contralateral`): the branches stay shared
and the heads unchanged, but a small hypodense region can be told from normal anatomy by comparing the
two sides. The paper's one-channel branches stay the default (docs/RESULTS.md says what it measured).
"""
from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn

from ..errors import ConfigError
from . import common
from .common import (BRAIN_CLASS_NAMES, LUNG_CLASS_NAMES, HemisphereMerge, PlainMTLHeads, SymmetricMTLHeads,
                     StridedPointwise, as_int_list, check_choice, combine_mtl, fold, relu, unfold)

BRAIN_WIDTHS = (16, 32, 32, 64, 64, 128, 128)
BRAIN_POOL_LAYERS = (1, 2, 3, 4, 5)
LUNG_LAYERS = (3, 4, 6, 3)
LUNG_INPLANES = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4


# --------------------------------------------------------------------------------------------------
# Trunks: a list of stages run one after the other on (N, C, H, W)
# --------------------------------------------------------------------------------------------------
class ConvLayer(nn.Sequential):
    """One conv layer of the brain MTL CNN: 3x3 conv, BatchNorm, ReLU, optional 2x2 max pool. The pool runs before
    the ReLU: the same numbers and gradients (ReLU is monotone, so it commutes with max), at a quarter of the
    ReLU's work, which is memory-bound on the CPU."""

    def __init__(self, c_in: int, c_out: int, pool: bool):
        pooling = [nn.MaxPool2d(2)] if pool else []
        super().__init__(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         *pooling, relu())


def brain_trunk(in_channels: int, widths, pool_layers) -> nn.ModuleList:
    """The 7 conv layers; stage i (0-based) is conv layer i+1."""
    stages, c_in = [], in_channels
    for i, c_out in enumerate(widths):
        stages.append(ConvLayer(c_in, c_out, pool=(i + 1) in pool_layers))
        c_in = c_out
    return nn.ModuleList(stages)


def lung_trunk(in_channels: int, block_inplanes, layers) -> nn.ModuleList:
    """MONAI ResNet (bottleneck) as stages [stem, block 1, block 2, block 3, block 4] (no in-place ReLU)."""
    net = ResNet(block="bottleneck", layers=list(layers), block_inplanes=list(block_inplanes), spatial_dims=2,
                 n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2, feed_forward=False,
                 act=("relu", {"inplace": False}))
    for module in net.modules():  # MONAI's blocks make their own in-place ReLUs: hooks need them not in place
        if isinstance(module, nn.ReLU):
            module.inplace = False
        shortcut = getattr(module, "downsample", None)
        if isinstance(shortcut, nn.Sequential) and shortcut[0].kernel_size == (1, 1) and shortcut[0].stride != (1, 1):
            shortcut[0] = StridedPointwise.replacing(shortcut[0])      # so that it trains channels-last
    stem = nn.Sequential(net.conv1, net.bn1, net.act, net.maxpool)
    return nn.ModuleList([stem, net.layer1, net.layer2, net.layer3, net.layer4])


def resolve_backbone(backbone: str, widths=None, pool_layers=None, block_inplanes=None, layers=None) -> dict:
    """Fully resolved trunk options of a backbone (what goes into a model's ``config``)."""
    check_choice("backbone", backbone, ("brain", "lung"))
    if backbone == "brain":
        if block_inplanes is not None or layers is not None:
            raise ConfigError("block_inplanes/layers are lung (ResNet) options; the brain backbone takes widths "
                              "and pool_layers")
        widths = as_int_list("widths", BRAIN_WIDTHS if widths is None else widths, 7)
        pool_layers = sorted(set(as_int_list("pool_layers", BRAIN_POOL_LAYERS if pool_layers is None
                                             else pool_layers)))
        if any(p > 7 for p in pool_layers):
            raise ConfigError(f"pool_layers are conv layer numbers 1..7, got {pool_layers}")
        return {"widths": widths, "pool_layers": pool_layers}
    if widths is not None or pool_layers is not None:
        raise ConfigError("widths/pool_layers are brain options; the lung backbone (ResNet-50) takes "
                          "block_inplanes and layers")
    return {"block_inplanes": as_int_list("block_inplanes", LUNG_INPLANES if block_inplanes is None
                                          else block_inplanes, 4),
            "layers": as_int_list("layers", LUNG_LAYERS if layers is None else layers, 4)}


def make_trunk(backbone: str, opts: dict, in_channels: int = 1) -> nn.ModuleList:
    if backbone == "brain":
        return brain_trunk(in_channels, opts["widths"], opts["pool_layers"])
    return lung_trunk(in_channels, opts["block_inplanes"], opts["layers"])


def trunk_channels(backbone: str, opts: dict) -> list[int]:
    """Output channels of each stage."""
    if backbone == "brain":
        return list(opts["widths"])
    return [opts["block_inplanes"][0]] + [c * BOTTLENECK_EXPANSION for c in opts["block_inplanes"]]


# Stages (0-based indices into the trunk) where the paper puts things (Sec. 4.2, Appendix E)
ATTENTION_STAGES = {"brain": (0, 2, 4), "lung": (1, 2, 3)}  # after conv 1, 3, 5 / after blocks 1, 2, 3


# --------------------------------------------------------------------------------------------------
# The shared classifier
# --------------------------------------------------------------------------------------------------
class SliceClassifier(nn.Module):
    """Base of every classifier: see the module docstring. Subclasses override :meth:`_trunk_forward`
    (and :meth:`_aggregate` for slice attention)."""

    model_name = "?"
    needs_saliency = False
    in_channels = 1  # channels the trunk reads

    def __init__(self, backbone: str, num_classes: int | None = None, dropout: float = 0.0,
                 hemispheres: bool | None = None, pooling: str = "mean", topk: int = 8,
                 contralateral: bool = False):
        super().__init__()
        check_choice("backbone", backbone, ("brain", "lung"))
        check_choice("pooling", pooling, common.POOLINGS)
        if int(topk) < 1:
            raise ConfigError(f"topk must be >= 1, got {topk}")
        self.pooling, self.topk = pooling, int(topk)
        self.backbone = backbone
        self.task = backbone
        self.hemispheres = (backbone == "brain") if hemispheres is None else hemispheres
        if backbone == "brain":
            if num_classes not in (None, 4):
                raise ConfigError("brain models have 4 classes (no lesion, left, right, both)")
            self.num_classes = 4
            self.class_names = list(BRAIN_CLASS_NAMES)
        else:
            self.num_classes = 2 if num_classes is None else int(num_classes)
            if self.num_classes < 2:
                raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
            self.class_names = list(LUNG_CLASS_NAMES) if self.num_classes == 2 else \
                [f"class {i}" for i in range(self.num_classes)]
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.merge: nn.Module = HemisphereMerge() if self.hemispheres else nn.Identity()
        if contralateral not in (True, False):
            raise ConfigError(f"contralateral must be true or false, got {contralateral!r}")
        if contralateral and not self.hemispheres:
            raise ConfigError("contralateral=True compares the two hemispheres: brain models only")
        self.contralateral = bool(contralateral)

    # ---- built by subclasses -----------------------------------------------------------------------
    def _build_trunk(self, opts: dict, in_channels: int = 1) -> None:
        """Image trunk and heads from resolved backbone options (see :func:`resolve_backbone`)."""
        self.trunk_opts = opts
        self.in_channels = in_channels * (2 if self.contralateral else 1)
        self.trunk = make_trunk(self.backbone, opts, self.in_channels)
        self._make_heads(trunk_channels(self.backbone, opts)[-1])

    def _base_config(self) -> dict:
        cfg = dict(self.trunk_opts)
        if self.backbone == "lung":
            cfg["num_classes"] = self.num_classes
        cfg["dropout"] = self.dropout
        if self.pooling != "mean":      # cards of mean-pooled (paper) models stay as they were
            cfg["pooling"], cfg["topk"] = self.pooling, self.topk
        if self.contralateral:          # likewise: one-channel (paper) cards do not name it
            cfg["contralateral"] = True
        return cfg

    def _make_heads(self, features: int) -> None:
        if self.backbone == "brain":
            self.heads = SymmetricMTLHeads(features, self.dropout) if self.hemispheres else \
                PlainMTLHeads(features, self.dropout)
        else:
            self.heads = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(features, self.num_classes))

    @property
    def cam_layer(self) -> nn.Module:
        """Module whose output (B*S, C, h, w) is the last conv stage of the image branch, aligned with the slice."""
        return self.merge

    # ---- input ---------------------------------------------------------------------------------------
    def _min_size(self) -> tuple[int, int]:
        """Smallest slice (or hemisphere) the trunk accepts."""
        opts = getattr(self, "trunk_opts", None)
        if self.backbone == "brain" and opts:
            n = 2 ** len(opts["pool_layers"])
            return n, n
        return 32, 32

    def _check(self, x, saliency=None) -> None:
        common.check_volume_input(x, "x", channels=1, even_width=self.hemispheres)
        if self.needs_saliency:
            common.check_saliency_input(x, saliency)
        h, w = x.shape[-2:]
        mh, mw = self._min_size()
        common.check_min_size(h, w // 2 if self.hemispheres else w, mh, mw,
                              f"{self.model_name} ({'each hemisphere' if self.hemispheres else 'each slice'})")

    def _to_trunk_input(self, t: torch.Tensor) -> torch.Tensor:
        """(B, S, C, H, W) -> (B*S, C, H, W), or (2*B*S, C, H, W/2) hemispheres for the brain
        ((2*B*S, 2C, H, W/2) with ``contralateral``: each half and the mirrored opposite half)."""
        t = fold(t)
        if self.contralateral:
            return common.split_hemispheres_contralateral(t)
        return common.split_hemispheres(t) if self.hemispheres else t

    # ---- the pass --------------------------------------------------------------------------------------
    def _trunk_forward(self, inp: torch.Tensor, sal: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        f = inp
        for stage in self.trunk:
            f = stage(f)
        return f, {}

    def _aggregate(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slice features (B, S, ...) -> (pooled (B, ...), weights (B, S)); the baselines average
        (``pooling="mean"``) or take each feature's largest value over the slices (``"topk"``)."""
        b, s = feats.shape[:2]
        weights = feats.new_full((b, s), 1.0 / s)
        if self.pooling == "topk":
            return feats.amax(dim=1), weights
        return feats.mean(dim=1), weights

    def _encode(self, x: torch.Tensor, saliency: torch.Tensor | None = None):
        self._check(x, saliency)
        b = x.shape[0]
        sal = self._to_trunk_input(saliency) if self.needs_saliency else None
        fmap, extras = self._trunk_forward(self._to_trunk_input(x), sal)
        merged = self.merge(fmap)  # cam_layer output, (B*S, C, h, w)
        if self.hemispheres:
            right, left = common.hemisphere_features(merged, self.pooling, self.topk)
            feats = unfold(torch.stack([right, left], dim=1), b)  # (B, S, 2, C)
        else:
            feats = unfold(common.spatial_pool(merged, self.pooling, self.topk), b)  # (B, S, C)
        pooled, weights = self._aggregate(feats)
        extras["slice_weights"] = weights
        return pooled, extras

    def _heads_from_pooled(self, pooled: torch.Tensor):
        if self.backbone != "brain":
            return self.heads(pooled)
        if self.hemispheres:
            return self.heads(pooled[:, 0], pooled[:, 1])
        return self.heads(pooled)

    def forward_heads(self, x: torch.Tensor, saliency: torch.Tensor | None = None):
        """Brain models: (lesion_logits (B, 2) [no lesion, lesion], side_logits (B, 3) [left, right, both])."""
        if self.backbone != "brain":
            raise ConfigError(f"{self.model_name} on the lung backbone has no lesion/side heads")
        pooled, _ = self._encode(x, saliency)
        return self._heads_from_pooled(pooled)

    def _logits(self, out) -> torch.Tensor:
        return combine_mtl(*out) if self.backbone == "brain" else out

    def forward(self, x: torch.Tensor, saliency: torch.Tensor | None = None) -> torch.Tensor:
        pooled, _ = self._encode(x, saliency)
        return self._logits(self._heads_from_pooled(pooled))

    def counterfactual_logits(self, x: torch.Tensor, saliency: torch.Tensor | None = None) -> torch.Tensor:
        """Logits the counterfactual engine steers: brain -> the lesion head (B, 2); lung -> the classes."""
        pooled, _ = self._encode(x, saliency)
        out = self._heads_from_pooled(pooled)
        return out[0] if self.backbone == "brain" else out

    # ---- Algorithm 1: fine-tune from the baseline ------------------------------------------------------
    def init_from_baseline(self, baseline: nn.Module) -> list[str]:
        """Copy a trained baseline's trunk and heads into this model (every tensor whose name and shape
        match; a saliency branch gets the baseline trunk too). Returns the names of this model's tensors
        that kept their initial values."""
        if getattr(baseline, "backbone", None) != self.backbone or not hasattr(baseline, "trunk"):
            raise ConfigError(f"{self.model_name} ({self.backbone}) cannot start from {getattr(baseline, 'model_name', type(baseline).__name__)}")
        src = {}
        for k, v in baseline.trunk.state_dict().items():
            src["trunk." + k] = v
            src["sal_trunk." + k] = v
        for k, v in baseline.heads.state_dict().items():
            src["heads." + k] = v
        own = self.state_dict()
        copied = {k: src[k] for k in own if k in src and src[k].shape == own[k].shape}
        self.load_state_dict(copied, strict=False)
        return sorted(k for k in own if k not in copied)


class BrainMTL(SliceClassifier):
    """``brain_mtl``: the brain baseline (multi-task CNN over hemispheres), default input 11 x 400 x 500."""

    model_name = "brain_mtl"

    def __init__(self, widths=None, pool_layers=None, dropout: float = 0.0, pooling: str = "mean", topk: int = 8,
                 contralateral: bool = False):
        super().__init__("brain", dropout=dropout, pooling=pooling, topk=topk, contralateral=contralateral)
        self._build_trunk(resolve_backbone("brain", widths=widths, pool_layers=pool_layers))
        self.config = self._base_config()


class LungResNet50(SliceClassifier):
    """``lung_resnet50``: ResNet-50 per slice (MONAI), mean over slices, linear classifier."""

    model_name = "lung_resnet50"

    def __init__(self, block_inplanes=None, layers=None, num_classes: int = 2, dropout: float = 0.0):
        super().__init__("lung", num_classes=num_classes, dropout=dropout)
        self._build_trunk(resolve_backbone("lung", block_inplanes=block_inplanes, layers=layers))
        self.config = self._base_config()


__all__ = ["SliceClassifier", "BrainMTL", "LungResNet50", "resolve_backbone", "make_trunk", "trunk_channels",
           "ATTENTION_STAGES"]
