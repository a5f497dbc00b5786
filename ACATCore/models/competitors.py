"""The competing methods of the paper (Sec. 4.3, Appendix E), on either backbone (``backbone="brain"|"lung"``).

Saliency-aided (``forward(x, saliency)``):
* ``smic`` (Flores et al. 2019): a saliency branch of the first two stages (brain: conv 1-2; ResNet: up
  to block 2) whose features modulate the image features there: G = F + F * sigmoid(S).
* ``hsm`` (Figueroa-Flores et al. 2020): a saliency branch of four stages (brain: conv 1-4; ResNet: up to
  block 4): G = F + F * relu(S).
* ``salclassnet`` (Murabito et al. 2018): image and saliency map concatenated as 2 input channels.
Image only:
* ``spatt``: spatial attention masks computed from the image features themselves, at ACAT's stages.
* ``seatt``: SAGAN self-attention (Zhang et al. 2019) after conv 3 and 5 (brain) / blocks 3 and 4 (ResNet).
* ``vit``: MONAI's ViT per slice (6 blocks, 16 heads, patch 50 brain / 16 lung), mean over slices.
Brain versions output the same 4-class log-probabilities and heads as ``brain_mtl``.
"""
from __future__ import annotations

import torch
from monai.networks.nets import ViT
from torch import nn

from ..errors import ConfigError
from .backbones import ATTENTION_STAGES, SliceClassifier, make_trunk, resolve_backbone, trunk_channels
from .common import SelfAttention2d, SpatialAttention, as_int_list, check_volume_input, fold, modulate


class _Competitor(SliceClassifier):
    def __init__(self, backbone, widths, pool_layers, block_inplanes, layers, num_classes, dropout,
                 in_channels: int = 1):
        super().__init__(backbone, num_classes=num_classes, dropout=dropout)
        opts = resolve_backbone(backbone, widths=widths, pool_layers=pool_layers,
                                block_inplanes=block_inplanes, layers=layers)
        self._build_trunk(opts, in_channels=in_channels)
        self.config = {"backbone": backbone, **self._base_config()}


class _SaliencyBranchModel(_Competitor):
    """Image trunk + saliency trunk (first ``depth`` stages); saliency features modulate the image features
    after stage ``depth - 1`` with ``G = F + F * act(S)``."""

    needs_saliency = True
    depth = {"brain": 2, "lung": 3}
    activation = staticmethod(torch.sigmoid)

    def __init__(self, backbone="brain", widths=None, pool_layers=None, block_inplanes=None, layers=None,
                 num_classes=None, dropout=0.0):
        super().__init__(backbone, widths, pool_layers, block_inplanes, layers, num_classes, dropout)
        self.sal_trunk = nn.ModuleList(list(make_trunk(backbone, self.trunk_opts))[: self.depth[backbone]])

    def _trunk_forward(self, inp, sal):
        f, s = inp, sal
        for i, stage in enumerate(self.trunk):
            f = stage(f)
            if i < len(self.sal_trunk):
                s = self.sal_trunk[i](s)
                if i == len(self.sal_trunk) - 1:
                    f = modulate(f, self.activation(s))
        return f, {}


class SMIC(_SaliencyBranchModel):
    model_name = "smic"
    depth = {"brain": 2, "lung": 3}  # two conv layers / stem + blocks 1-2


class HSM(_SaliencyBranchModel):
    model_name = "hsm"
    depth = {"brain": 4, "lung": 5}  # four conv layers / stem + blocks 1-4
    activation = staticmethod(torch.relu)


class SalClassNet(_Competitor):
    """Image and saliency map concatenated along channels at the input."""

    model_name = "salclassnet"
    needs_saliency = True

    def __init__(self, backbone="brain", widths=None, pool_layers=None, block_inplanes=None, layers=None,
                 num_classes=None, dropout=0.0):
        super().__init__(backbone, widths, pool_layers, block_inplanes, layers, num_classes, dropout,
                         in_channels=2)

    def _trunk_forward(self, inp, sal):
        return super()._trunk_forward(torch.cat([inp, sal], dim=1), None)


class SpAtt(_Competitor):
    """One branch; soft spatial attention masks from the image features at ACAT's stages, G = F + F * S."""

    model_name = "spatt"

    def __init__(self, backbone="brain", widths=None, pool_layers=None, block_inplanes=None, layers=None,
                 num_classes=None, dropout=0.0, attention_pool="max", attention_batchnorm=False):
        super().__init__(backbone, widths, pool_layers, block_inplanes, layers, num_classes, dropout)
        self.attention_stages = ATTENTION_STAGES[backbone]
        self.attention = nn.ModuleList(SpatialAttention(attention_pool, bool(attention_batchnorm))
                                       for _ in self.attention_stages)
        self.config.update(attention_pool=attention_pool, attention_batchnorm=bool(attention_batchnorm))

    def _trunk_forward(self, inp, sal):
        f, k = inp, 0
        for i, stage in enumerate(self.trunk):
            f = stage(f)
            if i in self.attention_stages:
                f = modulate(f, self.attention[k](f))
                k += 1
        return f, {}


SEATT_STAGES = {"brain": (2, 4), "lung": (3, 4)}  # after conv 3 and 5 / after blocks 3 and 4


class SeAtt(_Competitor):
    """SAGAN self-attention modules inserted in the trunk."""

    model_name = "seatt"

    def __init__(self, backbone="brain", widths=None, pool_layers=None, block_inplanes=None, layers=None,
                 num_classes=None, dropout=0.0):
        super().__init__(backbone, widths, pool_layers, block_inplanes, layers, num_classes, dropout)
        channels = trunk_channels(backbone, self.trunk_opts)
        self.attention_stages = SEATT_STAGES[backbone]
        self.self_attention = nn.ModuleList(SelfAttention2d(channels[i]) for i in self.attention_stages)

    def _trunk_forward(self, inp, sal):
        f, k = inp, 0
        for i, stage in enumerate(self.trunk):
            f = stage(f)
            if i in self.attention_stages:
                f = self.self_attention[k](f)
                k += 1
        return f, {}


class TokenGrid(nn.Module):
    """ViT tokens (N, P, D) -> feature map (N, D, gh, gw) (the ViT's ``cam_layer``)."""

    def __init__(self, grid: tuple[int, int]):
        super().__init__()
        self.grid = tuple(grid)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, _, d = tokens.shape
        return tokens.transpose(1, 2).reshape(n, d, *self.grid)


VIT_DEFAULTS = {"brain": {"image_size": (400, 500), "patch_size": 50},
                "lung": {"image_size": (128, 128), "patch_size": 16}}


class ViTClassifier(SliceClassifier):
    """MONAI ViT on each whole slice; tokens averaged per slice, slices averaged, then the heads."""

    model_name = "vit"

    def __init__(self, backbone="brain", image_size=None, patch_size=None, hidden_size=768, mlp_dim=3072,
                 num_layers=6, num_heads=16, num_classes=None, dropout=0.0):
        super().__init__(backbone, num_classes=num_classes, dropout=dropout, hemispheres=False)
        d = VIT_DEFAULTS[backbone]
        image_size = as_int_list("image_size", d["image_size"] if image_size is None else image_size, 2)
        patch_size = int(d["patch_size"] if patch_size is None else patch_size)
        if image_size[0] % patch_size or image_size[1] % patch_size:
            raise ConfigError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        if int(hidden_size) % int(num_heads):
            raise ConfigError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.image_size = tuple(image_size)
        try:
            import einops  # noqa: F401  (MONAI's ViT needs it)
        except ImportError:
            raise ConfigError("the vit model needs einops: pip install 'ACATCore[vit]'") from None
        self.vit = ViT(in_channels=1, img_size=self.image_size, patch_size=patch_size, hidden_size=int(hidden_size),
                       mlp_dim=int(mlp_dim), num_layers=int(num_layers), num_heads=int(num_heads),
                       classification=False, dropout_rate=self.dropout, spatial_dims=2)
        self.merge = TokenGrid((image_size[0] // patch_size, image_size[1] // patch_size))
        self._make_heads(int(hidden_size))
        self.config = {"backbone": backbone, "image_size": list(image_size), "patch_size": patch_size,
                       "hidden_size": int(hidden_size), "mlp_dim": int(mlp_dim), "num_layers": int(num_layers),
                       "num_heads": int(num_heads)}
        if backbone == "lung":
            self.config["num_classes"] = self.num_classes
        self.config["dropout"] = self.dropout

    def _check(self, x, saliency=None):
        check_volume_input(x, "x", channels=1, size=self.image_size)

    def _to_trunk_input(self, t):
        return fold(t)

    def _trunk_forward(self, inp, sal):
        tokens, _ = self.vit(inp)
        return tokens, {}

    def init_from_baseline(self, baseline):
        raise ConfigError("vit has no convolutional baseline to start from; train it from scratch")
