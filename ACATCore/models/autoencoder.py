"""The residual autoencoder of the counterfactual engine (paper Sec. 3.2, Appendix B).

No bottleneck: the latent code is spatial, ``(N, 16, H/4, W/4)`` with the default channels. Encoder: a
3x3 conv 1 -> 128, then 3 residual stages of 2 basic blocks each (128 -> 6, stride 1; 6 -> 12, stride 2;
12 -> 16, stride 2). Decoder: 3 stages of 2 basic blocks, each stage after a nearest-neighbour
upsampling where it doubles the size (16 -> 16 x2; 16 -> 12 x2; 12 -> 12), then a 3x3 conv 12 -> 1 with
no output activation. These are the channel numbers of the authors' code; all are configurable.
Works on single slices ``(N, 1, H, W)``; a stack ``(B, S, 1, H, W)`` is folded and unfolded for you.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .common import StridedPointwise, as_int_list, fold, relu, unfold


class BasicBlock(nn.Module):
    """Residual block: conv3x3-BN-ReLU-conv3x3-BN plus (projected) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = relu()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(StridedPointwise(c_in, c_out, stride), nn.BatchNorm2d(c_out))
        self.act2 = relu()

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


def stage(c_in: int, c_out: int, blocks: int, stride: int = 1, upsample: bool = False) -> nn.Sequential:
    layers = [nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []
    layers.append(BasicBlock(c_in, c_out, stride))
    layers += [BasicBlock(c_out, c_out) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """``autoencoder``: ``encode``/``decode``/``forward`` on slices."""

    model_name = "autoencoder"
    needs_saliency = False
    downsampling = 4

    def __init__(self, stem_channels: int = 128, encoder_channels=(6, 12, 16), decoder_channels=(16, 12, 12),
                 blocks_per_stage: int = 2):
        super().__init__()
        enc = as_int_list("encoder_channels", encoder_channels, 3)
        dec = as_int_list("decoder_channels", decoder_channels, 3)
        stem = as_int_list("stem_channels", [stem_channels], 1)[0]
        blocks = as_int_list("blocks_per_stage", [blocks_per_stage], 1)[0]
        self.stem = nn.Sequential(nn.Conv2d(1, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), relu())
        self.encoder = nn.Sequential(stage(stem, enc[0], blocks, stride=1),
                                     stage(enc[0], enc[1], blocks, stride=2),
                                     stage(enc[1], enc[2], blocks, stride=2))
        self.decoder = nn.Sequential(stage(enc[2], dec[0], blocks, upsample=True),
                                     stage(dec[0], dec[1], blocks, upsample=True),
                                     stage(dec[1], dec[2], blocks))
        self.head = nn.Conv2d(dec[2], 1, 3, padding=1)
        self.latent_channels = enc[2]
        self.config = {"stem_channels": stem, "encoder_channels": enc, "decoder_channels": dec,
                       "blocks_per_stage": blocks}

    def _check_image(self, x) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5) or x.shape[-3] != 1:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"expected slices of shape (N, 1, H, W) (or (B, S, 1, H, W)), got {shape}")
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise InputError(f"the autoencoder needs H and W divisible by 4, got {x.shape[-2]}x{x.shape[-1]}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> z (N, C_z, H/4, W/4) [(B, S, 1, H, W) -> (B, S, C_z, H/4, W/4)]."""
        self._check_image(x)
        if x.dim() == 5:
            return unfold(self.encode(fold(x)), x.shape[0])
        return self.encoder(self.stem(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, C_z, h, w) -> (N, 1, 4h, 4w) [(B, S, C_z, h, w) -> (B, S, 1, 4h, 4w)]."""
        if not isinstance(z, torch.Tensor) or z.dim() not in (4, 5) or z.shape[-3] != self.latent_channels:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise InputError(f"expected a latent code of shape (N, {self.latent_channels}, h, w), got {shape}")
        if z.dim() == 5:
            return unfold(self.decode(fold(z)), z.shape[0])
        return self.head(self.decoder(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
