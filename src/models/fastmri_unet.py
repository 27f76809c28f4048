"""fastMRI reference U-Net with an explicit shared-encoder / site-decoder split (FedMRI).

Architecture (Ronneberger et al. as adapted by the fastMRI baseline, used by FedMRI): ``num_pools`` down stages of
``ConvBlock`` (2 x [conv3x3 without bias, non-affine InstanceNorm, LeakyReLU(0.2), Dropout2d]) with 2x2 average
pooling, a bottleneck ``ConvBlock`` doubling the channels, and ``num_pools`` up stages of [transposed conv 2x2
stride 2 without bias, InstanceNorm, LeakyReLU(0.2)] + skip concatenation + ``ConvBlock``; a 1x1 convolution (with
bias) maps to the output channels. 1 -> 1 channels, 32 base channels, 4 pools gives 7,756,097 parameters. There is
no BatchNorm and no running statistic anywhere, so the ``state_dict`` holds only convolution weights.

FedMRI shares the **encoder** (down path + bottleneck: ``encoder.*`` and ``bottleneck.*`` keys) and keeps the
**decoder** (up path + final 1x1 conv: ``decoder.*`` and ``head.*``) on each site; see
:func:`encoder_decoder_keys`. The fastMRI code puts the last ``ConvBlock`` and the 1x1 conv in one ``Sequential``;
here they are ``decoder.blocks.3`` and ``head`` so that the final conv is nameable on its own. Inputs whose size is
not a multiple of ``2**num_pools`` are handled as in fastMRI (reflect-pad the upsampled map to the skip's size), so
the network is fully convolutional for 192, 240 and 320 (and odd sizes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.models.key_groups import KeyGroups

__all__ = ["FastMRIUNet", "ConvBlock", "TransposeConvBlock", "encoder_decoder_keys", "fedmri_key_groups",
           "ENCODER_PREFIXES"]

ENCODER_PREFIXES = ("encoder.", "bottleneck.")
DECODER_PREFIXES = ("decoder.", "head.")


NORMS = ("instance", "batch")


def _norm(kind: str, channels: int) -> nn.Module:
    """fastMRI's non-affine InstanceNorm, or (``"batch"``) an affine BatchNorm for the FedBN baseline."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.InstanceNorm2d(channels)


class ConvBlock(nn.Sequential):
    """Two [conv3x3 (no bias), InstanceNorm (non-affine), LeakyReLU(0.2), Dropout2d] layers."""

    def __init__(self, in_channels: int, out_channels: int, drop_prob: float, norm: str = "instance") -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [
                nn.Conv2d(c_in, out_channels, kernel_size=3, padding=1, bias=False),
                _norm(norm, out_channels),
                nn.LeakyReLU(negative_slope=0.2, inplace=True),
                nn.Dropout2d(drop_prob),
            ]
        super().__init__(*layers)


class TransposeConvBlock(nn.Sequential):
    """Transposed conv 2x2 stride 2 (no bias) doubling the spatial size, InstanceNorm, LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "instance") -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
            _norm(norm, out_channels),
            nn.LeakyReLU(negative_slope=0.2, inplace=True),
        )


class FastMRIUNet(nn.Module):
    """fastMRI-style U-Net for single-coil magnitude reconstruction.

    Args:
        in_channels: input channels (1 for a magnitude image).
        out_channels: output channels.
        channels: channels of the first stage (doubled at each pool).
        num_pools: number of down/up stages.
        drop_prob: Dropout2d probability (fastMRI default 0.0).
        norm: ``"instance"`` (fastMRI's, default) or ``"batch"``: affine BatchNorm, only so that the FedBN
            baseline has normalisation layers to keep local (the reference U-Net has none: FedBN would be FedAvg).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: int = 32,
        num_pools: int = 4,
        drop_prob: float = 0.0,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("channels", channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(num_pools, int) or num_pools < 1:
            raise ValueError(f"num_pools must be a positive int, got {num_pools!r}")
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob!r}")
        # kept so a server can rebuild the same network from the init args
        self.in_channels, self.out_channels = in_channels, out_channels
        self.channels, self.num_pools, self.drop_prob, self.norm = channels, num_pools, drop_prob, norm

        self.encoder = nn.ModuleList([ConvBlock(in_channels, channels, drop_prob, norm)])
        ch = channels
        for _ in range(num_pools - 1):
            self.encoder.append(ConvBlock(ch, ch * 2, drop_prob, norm))
            ch *= 2
        self.bottleneck = ConvBlock(ch, ch * 2, drop_prob, norm)

        self.decoder = nn.Module()
        self.decoder.upsample = nn.ModuleList()
        self.decoder.blocks = nn.ModuleList()
        for _ in range(num_pools):
            self.decoder.upsample.append(TransposeConvBlock(ch * 2, ch, norm))
            self.decoder.blocks.append(ConvBlock(ch * 2, ch, drop_prob, norm))
            ch //= 2
        self.head = nn.Conv2d(channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` for any ``H, W >= 2**num_pools``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        min_size = 2**self.num_pools
        if x.shape[-2] < min_size or x.shape[-1] < min_size:
            raise ValueError(f"x spatial size must be >= {min_size} for {self.num_pools} pools, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor, got dtype {x.dtype}")
        skips = []
        out = x
        for block in self.encoder:
            out = block(out)
            skips.append(out)
            out = F.avg_pool2d(out, kernel_size=2, stride=2, padding=0)
        out = self.bottleneck(out)
        for upsample, block in zip(self.decoder.upsample, self.decoder.blocks):
            skip = skips.pop()
            out = upsample(out)
            pad_w, pad_h = skip.shape[-1] - out.shape[-1], skip.shape[-2] - out.shape[-2]
            if pad_w or pad_h:  # odd sizes: the pooled map lost a row/column
                out = F.pad(out, [0, pad_w, 0, pad_h], mode="reflect")
            out = block(torch.cat([out, skip], dim=1))
        return self.head(out)


def encoder_decoder_keys(model: nn.Module) -> tuple[list[str], list[str]]:
    """Split ``model.state_dict()`` keys into FedMRI's shared encoder and site-specific decoder.

    Args:
        model: a :class:`FastMRIUNet` (or any module named the same way).

    Returns:
        ``(encoder_keys, decoder_keys)`` in ``state_dict`` order: encoder = down path + bottleneck (sent to the
        server and averaged), decoder = up path + final 1x1 conv (never leaves the site). Disjoint, and together they
        are every key.

    Raises:
        ValueError: if a key belongs to neither part or either part is empty (a split that keeps nothing local would
            silently turn FedMRI into FedAvg).
    """
    encoder, decoder, unknown = [], [], []
    for key in model.state_dict():
        if key.startswith(ENCODER_PREFIXES):
            encoder.append(key)
        elif key.startswith(DECODER_PREFIXES):
            decoder.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"state_dict keys outside encoder {ENCODER_PREFIXES} and decoder {DECODER_PREFIXES}: {unknown!r}"
        )
    if not encoder or not decoder:
        raise ValueError(f"encoder and decoder key sets must both be non-empty, got {len(encoder)} and {len(decoder)}")
    return encoder, decoder


def fedmri_key_groups(model: nn.Module) -> KeyGroups:
    """FedMRI's split as :class:`KeyGroups`: the encoder shared, the site's decoder personal."""
    encoder, decoder = encoder_decoder_keys(model)
    return KeyGroups(frozenset(encoder), personal=frozenset(decoder))
