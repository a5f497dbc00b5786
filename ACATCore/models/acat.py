"""ACAT: saliency-based attention over either baseline (paper Sec. 3.1, 3.1.1, 4.2).

Two branches of the baseline's architecture: the image branch (the full baseline) and the saliency
branch (the same stages without classifier, up to the last stage that feeds an attention module).
After the early / middle / late stage (brain MTL: conv layers 1, 3, 5; ResNet-50: blocks 1, 2, 3) an
attention module turns the saliency features into a mask S (channel pool, 3x3 conv, sigmoid) that
modulates the image features, G = F + F * S (Eq. 1-2). The fusion layer pools the three masks to the
last feature map's size, concatenates them and a 1x1 conv gives the fused mask, applied the same way
after the last stage. An MLP over slice features replaces the slice mean.

Where the authors' code differs from the paper, the paper is the default and a flag gives the code:
``attention_batchnorm=True`` (BatchNorm before the attention sigmoid), ``fused_sigmoid=False`` (no
sigmoid on the fused mask), ``normalise_slice_weights=False`` (plain weighted sum over slices),
``slice_attention="joint"`` with ``num_slices`` (one MLP over all slices' features at once).

``start="identity"`` (ours, for fine-tuning from the baseline) gates every modulation,
G = F + g * F * S with a learned scalar g starting at 0, and starts the slice MLP's output layer at 0
(equal slice weights = the baseline's mean): the untrained ACAT computes exactly the baseline, so
fine-tuning starts from the baseline's accuracy instead of from features scaled by about 1.5.
``start="paper"`` (default) is Eq. 2 as written.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .backbones import ATTENTION_STAGES, SliceClassifier, make_trunk, resolve_backbone, trunk_channels
from .common import (AttentionFusion, SliceAttention, SpatialAttention, check_choice, merge_hemispheres, modulate,
                     unfold)

MASK_NAMES = ("early", "middle", "late")


class ACAT(SliceClassifier):
    """``acat_brain`` / ``acat_lung``: ``forward(x, saliency, return_intermediates=False)``."""

    needs_saliency = True

    def __init__(self, backbone: str = "brain", widths=None, pool_layers=None, block_inplanes=None,
                 layers=None, num_classes: int | None = None, dropout: float = 0.0,
                 attention_pool: str = "max", attention_batchnorm: bool = False, fused_sigmoid: bool = True,
                 slice_attention: str = "shared", num_slices: int | None = None, slice_hidden: int = 64,
                 slice_dropout: float = 0.1, normalise_slice_weights: bool = True, pooling: str = "mean",
                 topk: int = 8, start: str = "paper", contralateral: bool = False):
        super().__init__(backbone, num_classes=num_classes, dropout=dropout, pooling=pooling, topk=topk,
                         contralateral=contralateral)
        self.model_name = f"acat_{backbone}"
        opts = resolve_backbone(backbone, widths=widths, pool_layers=pool_layers,
                                block_inplanes=block_inplanes, layers=layers)
        self._build_trunk(opts)
        self.attention_stages = ATTENTION_STAGES[backbone]
        # saliency branch: same architecture, only the stages that feed an attention module
        sal_full = make_trunk(backbone, opts, self.in_channels)  # the saliency map is split like the image
        self.sal_trunk = nn.ModuleList(list(sal_full)[: max(self.attention_stages) + 1])
        self.attention = nn.ModuleList(SpatialAttention(attention_pool, bool(attention_batchnorm))
                                       for _ in self.attention_stages)
        self.fusion = AttentionFusion(len(self.attention_stages), sigmoid=bool(fused_sigmoid))
        channels = trunk_channels(backbone, opts)[-1]
        slice_features = 2 * channels if self.hemispheres else channels
        self.slice_attention = SliceAttention(slice_features, hidden=int(slice_hidden), dropout=float(slice_dropout),
                                              mode=slice_attention, num_slices=num_slices,
                                              normalise=bool(normalise_slice_weights))
        check_choice("start", start, ("paper", "identity"))
        if start == "identity" and not normalise_slice_weights:
            raise ConfigError("start='identity' needs normalise_slice_weights=True (equal weights = the mean)")
        self.start = start
        # one gate per mask and one for the fused mask; None: Eq. 2 as written
        self.gates = nn.Parameter(torch.zeros(len(self.attention_stages) + 1)) if start == "identity" else None
        if start == "identity":
            nn.init.zeros_(self.slice_attention.mlp[-1].weight)
            nn.init.zeros_(self.slice_attention.mlp[-1].bias)
        self.config = {**self._base_config(), "attention_pool": attention_pool,
                       "attention_batchnorm": bool(attention_batchnorm), "fused_sigmoid": bool(fused_sigmoid),
                       "slice_attention": slice_attention, "num_slices": None if num_slices is None else int(num_slices),
                       "slice_hidden": int(slice_hidden), "slice_dropout": float(slice_dropout),
                       "normalise_slice_weights": bool(normalise_slice_weights)}
        if start != "paper":            # cards of paper-start models stay as they were
            self.config["start"] = start

    def _modulate(self, f: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
        """G = F + F * S (Eq. 2), or F + g_k * F * S with start='identity'."""
        return modulate(f, mask if self.gates is None else self.gates[k] * mask)

    def _trunk_forward(self, inp: torch.Tensor, sal: torch.Tensor):
        f, s, masks = inp, sal, []
        for i, stage in enumerate(self.trunk):
            f = stage(f)  # F^i
            if i < len(self.sal_trunk):
                s = self.sal_trunk[i](s)  # S^i
            if i in self.attention_stages:
                mask = self.attention[len(masks)](s)  # S_s^i
                f = self._modulate(f, mask, len(masks))  # G^i = F^i + F^i * S_s^i
                masks.append(mask)
        fused = self.fusion(masks, f.shape[-2:])  # S_f
        f = self._modulate(f, fused, len(masks))
        return f, {"masks": masks, "fused": fused}

    def _aggregate(self, feats: torch.Tensor):
        if self.hemispheres:  # feats (B, S, 2, C) [right, left]: score both orders so mirroring is symmetric
            right, left = feats[:, :, 0], feats[:, :, 1]
            scores = 0.5 * (self.slice_attention.scores(torch.cat([left, right], dim=-1))
                            + self.slice_attention.scores(torch.cat([right, left], dim=-1)))
            weights = self.slice_attention.weights(scores)
            return (weights[:, :, None, None] * feats).sum(dim=1), weights
        return self.slice_attention(feats)

    def _display_map(self, m: torch.Tensor, batch: int) -> torch.Tensor:
        """(B*S or 2*B*S, 1, h, w) mask -> (B, S, 1, h, w') aligned with the slices."""
        if self.hemispheres:
            m = merge_hemispheres(m)
        return unfold(m, batch)

    def forward(self, x: torch.Tensor, saliency: torch.Tensor | None = None, return_intermediates: bool = False):
        pooled, extras = self._encode(x, saliency)
        logits = self._logits(self._heads_from_pooled(pooled))
        if not return_intermediates:
            return logits
        b = x.shape[0]
        inter = {name: self._display_map(m, b) for name, m in zip(MASK_NAMES, extras["masks"])}
        inter["fused"] = self._display_map(extras["fused"], b)
        inter["slice_weights"] = extras["slice_weights"]
        return logits, inter

    def init_from_baseline(self, baseline: nn.Module) -> list[str]:
        """Algorithm 1: start both branches (and the heads) from the trained baseline's weights."""
        expected = "brain_mtl" if self.backbone == "brain" else "lung_resnet50"
        if getattr(baseline, "model_name", None) != expected:
            raise ConfigError(f"{self.model_name} starts from a {expected} baseline, got "
                              f"{getattr(baseline, 'model_name', type(baseline).__name__)}")
        kept = super().init_from_baseline(baseline)
        missed = [k for k in kept if k.startswith(("trunk.", "sal_trunk.", "heads."))]
        if missed:
            raise ConfigError(f"the baseline's architecture does not fit this {self.model_name} "
                              f"(e.g. {missed[0]}); build it with the baseline's config")
        return kept


def acat_brain(**config) -> ACAT:
    return ACAT(backbone="brain", **config)


def acat_lung(**config) -> ACAT:
    return ACAT(backbone="lung", **config)
