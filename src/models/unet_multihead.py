"""FedICRA's multi-head 2-D U-Net (``unet_lc_multihead``): WSL4MIS U-Net + site channel selection + 3 aux heads.

Layout (channels 16-32-64-128-256, 256 x 256 input -> 16 x 16 bottleneck):

- ``encoder``: ``in_conv`` and ``down1..down4``; block = conv3x3-BN-LeakyReLU-Dropout-conv3x3-BN-LeakyReLU, dropout
  0.05/0.1/0.2/0.3/0.5, max-pool down.
- ``channel_selection``: :class:`SiteChannelSelection` on the deepest encoder output (CBAM-style gate conditioned on
  a one-hot site code). Unlike the reference, which keeps this module in a plain Python list (so it is never
  registered, never trained and absent from ``state_dict``: a frozen random MLP), it is a registered submodule.
- ``decoder``: ``up1..up4`` (upsample + concat skip + block without dropout) and ``out_conv`` (3x3 -> C logits).
- ``aux_heads``: three heads on decoder features at 1/4, 1/2 and full resolution (conv3x3 -> 512, BN, ReLU,
  Dropout2d(0.1), conv1x1 -> C without bias). They only feed the multiscale tree energy loss.

Upsampling: the reference configures ``bilinear=False`` but never passes it to ``UpBlock``, whose default
``bilinear=True`` wins, so the published model upsamples with conv1x1 + bilinear (align_corners=True). The digest
describes the intended transposed convolution (its "~1.9M parameters" is that variant's count). Default here is
``"bilinear"``, what produced the published numbers (U-Net 1.81M parameters for C=2, plus 0.52M aux heads and
0.08M channel selection); ``upsample="deconv"`` gives the transposed-convolution variant (U-Net 1.94M).

Key groups for federation (:func:`fedicra_key_groups`): the channel-selection module is personal (it is client state
in the reference and is never sent); the main decoder's parameters are sent and averaged but loaded back through
adaptive mixing; everything else (encoder, aux heads, every BN buffer) is shared and loaded as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.models.key_groups import KeyGroups

__all__ = [
    "SiteChannelSelection",
    "UNetLCMultiHead",
    "MultiHeadOutput",
    "fedicra_key_groups",
    "one_hot_site_code",
]

FEATURE_CHANNELS = (16, 32, 64, 128, 256)
ENCODER_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)
UPSAMPLE_MODES = ("bilinear", "deconv")


def one_hot_site_code(site_index: int, num_sites: int, batch_size: int, device=None) -> torch.Tensor:
    """(B, K) one-hot site codes; rejects an index outside ``[0, num_sites)``."""
    if isinstance(site_index, bool) or not isinstance(site_index, int) or not 0 <= site_index < num_sites:
        raise ValueError(f"site_index must be an int in [0, {num_sites}), got {site_index!r}")
    code = torch.zeros(batch_size, num_sites, device=device)
    code[:, site_index] = 1.0
    return code


class ConvBlock(nn.Sequential):
    """conv3x3-BN-LeakyReLU-Dropout-conv3x3-BN-LeakyReLU (WSL4MIS/PyMIC block)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
        )


class DownBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(nn.MaxPool2d(2), ConvBlock(in_channels, out_channels, dropout))


class UpBlock(nn.Module):
    """Upsample the deeper map to the skip's channels, concat ``[skip, up]``, then a block without dropout."""

    def __init__(self, deep_channels: int, skip_channels: int, out_channels: int, upsample: str) -> None:
        super().__init__()
        self.upsample = upsample
        if upsample == "bilinear":
            self.conv1x1 = nn.Conv2d(deep_channels, skip_channels, 1)
        else:
            self.up = nn.ConvTranspose2d(deep_channels, skip_channels, 2, stride=2)
        self.conv = ConvBlock(2 * skip_channels, out_channels, 0.0)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.upsample == "bilinear":
            up = F.interpolate(self.conv1x1(deep), scale_factor=2, mode="bilinear", align_corners=True)
        else:
            up = self.up(deep)
        return self.conv(torch.cat([skip, up], dim=1))


class AuxHead(nn.Sequential):
    def __init__(self, in_channels: int, num_classes: int, hidden: int = 512) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(hidden, num_classes, 1, bias=False),
        )


class SiteChannelSelection(nn.Module):
    """Site-conditioned channel gate: ``h = sigmoid(fc([GAP(x), e]) + fc([GMP(x), e]))``, output ``x * h + x``.

    ``e`` is the site embedding (one-hot K -> 1x1 conv -> ReLU -> 1x1 conv, no bias). ``fc`` is shared by the
    average and max branches (1x1 conv 2C -> C/16, ReLU, 1x1 conv -> C, no bias).

    Args:
        channels: feature channels C of the gated map (256 at the bottleneck).
        num_sites: number of sites K (length of the one-hot code).
        reduction: bottleneck ratio of ``fc``.
    """

    def __init__(self, channels: int, num_sites: int, reduction: int = 16) -> None:
        super().__init__()
        if num_sites < 2:
            raise ValueError(f"num_sites must be >= 2 for a site-contrastive gate, got {num_sites!r}")
        self.num_sites = num_sites
        self.site_embedding = nn.Sequential(
            nn.Conv2d(num_sites, channels, 1, bias=False), nn.ReLU(), nn.Conv2d(channels, channels, 1, bias=False)
        )
        self.fc = nn.Sequential(
            nn.Conv2d(2 * channels, channels // reduction, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(channels // reduction, channels, 1, bias=False),
        )

    def gate(self, x: torch.Tensor, site_index: int) -> torch.Tensor:
        """(B, C, h, w) features -> (B, C, 1, 1) gate in (0, 1) under site ``site_index``'s code."""
        code = one_hot_site_code(site_index, self.num_sites, x.shape[0], x.device).to(x.dtype)
        emb = self.site_embedding(code[:, :, None, None])
        avg = self.fc(torch.cat([F.adaptive_avg_pool2d(x, 1), emb], dim=1))
        mx = self.fc(torch.cat([F.adaptive_max_pool2d(x, 1), emb], dim=1))
        return torch.sigmoid(avg + mx)

    def forward(self, x: torch.Tensor, site_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.gate(x, site_index)
        return x * h + x, h


class MultiHeadOutput(NamedTuple):
    """Outputs of :class:`UNetLCMultiHead`.

    logits: (B, C, H, W) main prediction. aux_logits: three (B, C, H/4|H/2|H, W/4|W/2|W) tensors.
    gate: (B, 256, 1, 1) channel gate under the requested site. bottleneck: (B, 256, H/16, W/16) encoder output
    BEFORE the gate (cache for :func:`src.losses.site_contrastive.site_contrastive_loss`).
    """

    logits: torch.Tensor
    aux_logits: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    gate: torch.Tensor
    bottleneck: torch.Tensor


class UNetLCMultiHead(nn.Module):
    """Multi-head U-Net with site channel selection (see module docstring).

    Args:
        in_channels: 1 (FAZ) or 3 (fundus).
        num_classes: C, number of output classes.
        num_sites: K, number of federated sites.
        site_index: this client's site, used when ``forward`` gets no explicit site.
        upsample: ``"bilinear"`` (reference behaviour) or ``"deconv"`` (transposed conv).
    """

    def __init__(
        self, in_channels: int, num_classes: int, num_sites: int, site_index: int, upsample: str = "bilinear"
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        one_hot_site_code(site_index, num_sites, 1)  # validates site_index against num_sites
        # NVFlare re-creates a server-side model from the attributes named like the __init__ parameters
        self.in_channels, self.num_classes, self.upsample = in_channels, num_classes, upsample
        self.site_index = site_index
        self.num_sites = num_sites
        ch = FEATURE_CHANNELS
        self.encoder = nn.ModuleDict(
            {
                "in_conv": ConvBlock(in_channels, ch[0], ENCODER_DROPOUT[0]),
                **{f"down{i}": DownBlock(ch[i - 1], ch[i], ENCODER_DROPOUT[i]) for i in range(1, 5)},
            }
        )
        self.channel_selection = SiteChannelSelection(ch[4], num_sites)
        self.decoder = nn.ModuleDict(
            {
                **{f"up{i}": UpBlock(ch[5 - i], ch[4 - i], ch[4 - i], upsample) for i in range(1, 5)},
                "out_conv": nn.Conv2d(ch[0], num_classes, 3, padding=1),
            }
        )
        # heads on decoder features at 1/4 (64 ch), 1/2 (32 ch) and full resolution (16 ch)
        self.aux_heads = nn.ModuleList([AuxHead(ch[i], num_classes) for i in (2, 1, 0)])

    def forward(self, x: torch.Tensor, site_index: int | None = None) -> MultiHeadOutput:
        """Args: x (B, in_channels, H, W) with H, W divisible by 16; site_index defaults to the model's own site.

        ``site_index=0`` means site 0 (the reference's ``if not emb_idx`` silently maps it to the own site).
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (B, {self.in_channels}, H, W), got {tuple(getattr(x, 'shape', ()))}"
            )
        if x.shape[2] % 16 or x.shape[3] % 16:
            raise ValueError(f"x height and width must be divisible by 16, got {tuple(x.shape[2:])}")
        site = self.site_index if site_index is None else site_index
        skips = []
        h = x
        for block in self.encoder.values():
            h = block(h)
            skips.append(h)
        bottleneck = skips[-1]
        gated, gate = self.channel_selection(bottleneck, site)
        d1 = self.decoder["up1"](gated, skips[3])
        d2 = self.decoder["up2"](d1, skips[2])
        d3 = self.decoder["up3"](d2, skips[1])
        d4 = self.decoder["up4"](d3, skips[0])
        logits = self.decoder["out_conv"](d4)
        aux = (self.aux_heads[0](d2), self.aux_heads[1](d3), self.aux_heads[2](d4))
        return MultiHeadOutput(logits=logits, aux_logits=aux, gate=gate, bottleneck=bottleneck)


def fedicra_key_groups(model: UNetLCMultiHead, adaptive_prefixes: Sequence[str] = ("decoder.",)) -> KeyGroups:
    """Split ``model.state_dict()`` keys into FedICRA's groups (disjoint, covering every key).

    shared: sent, averaged, loaded as is (encoder, aux heads, all BN buffers incl. the decoder's);
    adaptive: main-decoder parameters, sent and averaged but loaded through adaptive mixing with the local copy;
    personal: never sent (site channel selection).
    """
    state_keys = set(model.state_dict().keys())
    param_keys = {name for name, _ in model.named_parameters()}
    personal = {k for k in state_keys if k.startswith("channel_selection.")}
    adaptive = {k for k in param_keys - personal if any(k.startswith(p) for p in adaptive_prefixes)}
    shared = state_keys - personal - adaptive
    if not personal or not adaptive:
        raise ValueError(f"model has no personal or adaptive keys: personal={sorted(personal)}, adaptive={adaptive}")
    return KeyGroups(frozenset(shared), frozenset(adaptive), frozenset(personal))
