"""The IOP-FL 2-D U-Net: plain conv blocks with BatchNorm whose state_dict keys are easy to tell apart.

Layout as in the reference (``nets/models.py``): encoder widths ``features[:-1]``, bottleneck ``features[-1]``,
each block [3x3 conv (no bias) -> BatchNorm2d -> ReLU] x 2, max-pool down, 2x2 stride-2 transposed conv up with
skip concatenation, 1x1 output conv to 2 logits. The reference's unused auxiliary head (``bn``, ``fc``, built for
384x384 input) is left out. Every BatchNorm module is named ``norm1``/``norm2`` inside a block, and
:func:`src.models.key_groups.norm_keys` finds them by type, so FedBN cannot silently keep nothing local.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from src.models.key_groups import norm_keys

__all__ = ["UNet2D", "norm_keys"]


class ConvBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)


class UNet2D(nn.Module):
    """2-D U-Net for 2.5-D prostate slices.

    Args:
        in_channels: input channels (3: slices i-1, i, i+1).
        out_channels: logits (2: background, prostate).
        features: encoder widths followed by the bottleneck width; the reference uses (32, 64, 128, 256, 512).

    Shapes: input (B, in_channels, H, W) with H and W divisible by ``2 ** (len(features) - 1)``;
    output (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 2, features: Sequence[int] = (32, 64, 128, 256, 512)):
        super().__init__()
        if len(features) < 2:
            raise ValueError(f"features needs at least one encoder width and a bottleneck, got {list(features)!r}")
        # FedJob re-creates server-side models from attributes named like the __init__ parameters
        self.in_channels, self.out_channels, self.features = in_channels, out_channels, list(features)
        widths = list(features)
        self.encoders = nn.ModuleList()
        channels = in_channels
        for w in widths[:-1]:
            self.encoders.append(ConvBlock(channels, w))
            channels = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(channels, widths[-1])
        self.upconvs = nn.ModuleList()
        self.decoders = nn.ModuleList()
        channels = widths[-1]
        for w in reversed(widths[:-1]):
            self.upconvs.append(nn.ConvTranspose2d(channels, w, 2, stride=2))
            self.decoders.append(ConvBlock(2 * w, w))
            channels = w
        self.head = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = 2 ** (len(self.features) - 1)
        if x.shape[-1] % down or x.shape[-2] % down:
            raise ValueError(f"input H and W must be divisible by {down}, got shape {tuple(x.shape)}")
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.upconvs, self.decoders, reversed(skips)):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)
