"""Dual network of cooperative training (Chen et al., MICCAI 2021): FTN (encoder, code filter, image decoder,
segmentation decoder) and STN (denoising shape autoencoder) in one `nn.Module`.

Paper: "Cooperative Training and Latent Space Data Augmentation for Robust Medical Image Segmentation",
https://arxiv.org/abs/2107.01079. Architecture as in the public reference code (`FCN_16_standard`), rewritten:

- BatchNorm, LeakyReLU(0.2), **no skip connections** (the codes must carry all information, or masking them would
  not perturb the outputs);
- encoder: input block 2x(conv3x3 + BN) with 16 channels, four residual down-blocks 16->32->64->128->128
  (stride-2 conv, conv-BN-LReLU-conv-BN, 1x1 shortcut, LReLU), 1x1 conv + BN + ReLU -> image code z_i
  (128 x H/16 x W/16, i.e. 128x12x12 at 192x192);
- code filter: conv3x3-BN-LReLU-conv3x3-BN-ReLU -> shape code z_s (same shape as z_i);
- image decoder: four residual up-blocks 128->64->32->16->16 with 2x2 transposed-conv upsampling, 1x1 conv;
- segmentation decoder: the same with nearest-neighbour upsampling, `num_classes` logits;
- STN: an encoder like the FTN's with `num_classes` input channels (softmax(logits / T) or one-hot labels) and a
  nearest-upsampling decoder to `num_classes` logits.

Decisions where digest and reference code differ:
- The image decoder ends in a sigmoid, as in the reference code and the digest (targets are [0, 1] images);
  `image_output_sigmoid=False` drops it (not the reference; kept for experiments).
- The reference stores its five networks in a plain dict and overrides `parameters()` incorrectly, so its
  `state_dict()` is empty. Here the five parts are registered submodules; `state_dict()` holds all of them under the
  prefixes in `PART_NAMES`.
- Initialisation as the reference's `init_weights(kaiming)`: Conv2d weights Kaiming-normal (fan_in), BN weight
  N(1, 0.02) and bias 0; transposed convolutions and conv biases keep PyTorch defaults (the reference's extra
  N(0, 0.02) init of a few top-level layers is overwritten or never reached, so it is not reproduced).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.models.freezable_batchnorm import FreezableBatchNorm2d
from src.models.key_groups import KeyGroups

__all__ = ["CooperativeNet", "PART_NAMES", "ShapeAutoencoder"]

PART_NAMES = ("encoder", "code_filter", "image_decoder", "segmentation_decoder", "stn")
_DOWNSAMPLING = 16  # four stride-2 blocks


def _conv_bn_lrelu_conv_bn(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        FreezableBatchNorm2d(out_ch),
        nn.LeakyReLU(0.2),
        nn.Conv2d(out_ch, out_ch, 3, padding=1),
        FreezableBatchNorm2d(out_ch),
    )


class ResidualDownBlock(nn.Module):
    """Stride-2 3x3 conv, then LReLU(1x1 shortcut + conv-BN-LReLU-conv-BN). Halves H and W."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(in_ch, in_ch, 3, stride=2, padding=1)
        self.body = _conv_bn_lrelu_conv_bn(in_ch, out_ch)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return F.leaky_relu(self.shortcut(x) + self.body(x), 0.2)


class ResidualUpBlock(nn.Module):
    """x2 upsampling (nearest or 2x2 transposed conv), then LReLU(1x1 shortcut + conv-BN-LReLU-conv-BN)."""

    def __init__(self, in_ch: int, out_ch: int, upsample: str) -> None:
        super().__init__()
        if upsample == "nearest":
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="nearest")
        elif upsample == "transposed":
            self.up = nn.ConvTranspose2d(in_ch, in_ch, kernel_size=2, stride=2)
        else:
            raise ValueError(f"upsample must be 'nearest' or 'transposed', got {upsample!r}")
        self.body = _conv_bn_lrelu_conv_bn(in_ch, out_ch)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return F.leaky_relu(self.shortcut(x) + self.body(x), 0.2)


class ConvEncoder(nn.Module):
    """Image (or shape) -> code of `code_channels` x H/16 x W/16, ReLU output."""

    def __init__(self, in_channels: int, base_channels: int = 16, code_channels: int = 128) -> None:
        super().__init__()
        widths = [base_channels, 2 * base_channels, 4 * base_channels, code_channels, code_channels]
        self.input_block = _conv_bn_lrelu_conv_bn(in_channels, base_channels)
        self.down_blocks = nn.Sequential(*[ResidualDownBlock(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.to_code = nn.Sequential(nn.Conv2d(code_channels, code_channels, 1), FreezableBatchNorm2d(code_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.input_block(x), 0.2)
        return F.relu(self.to_code(self.down_blocks(x)))


class CodeFilter(nn.Module):
    """z_i -> z_s: keeps the shape-relevant part of the image code (conv-BN-LReLU-conv-BN-ReLU, same shape)."""

    def __init__(self, code_channels: int = 128) -> None:
        super().__init__()
        self.body = _conv_bn_lrelu_conv_bn(code_channels, code_channels)

    def forward(self, z_i: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(z_i))


class ConvDecoder(nn.Module):
    """Code (code_channels x h x w) -> `out_channels` x 16h x 16w, no skip connections."""

    def __init__(
        self, out_channels: int, upsample: str, base_channels: int = 16, code_channels: int = 128, sigmoid: bool = False
    ) -> None:
        super().__init__()
        widths = [code_channels, 4 * base_channels, 2 * base_channels, base_channels, base_channels]
        self.up_blocks = nn.Sequential(*[ResidualUpBlock(a, b, upsample) for a, b in zip(widths[:-1], widths[1:])])
        self.output = nn.Conv2d(base_channels, out_channels, 1)
        self.sigmoid = sigmoid

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.output(self.up_blocks(z))
        return torch.sigmoid(out) if self.sigmoid else out


class ShapeAutoencoder(nn.Module):
    """STN: (B, num_classes, H, W) soft or one-hot segmentation -> (B, num_classes, H, W) corrected logits."""

    def __init__(self, num_classes: int, base_channels: int = 16, code_channels: int = 128) -> None:
        super().__init__()
        self.encoder = ConvEncoder(num_classes, base_channels, code_channels)
        self.decoder = ConvDecoder(num_classes, "nearest", base_channels, code_channels)

    def forward(self, shape: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(shape))


def _init_like_reference(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class CooperativeNet(nn.Module):
    """FTN + STN of cooperative training, registered as five parts (see `PART_NAMES`).

    Args:
        in_channels: image channels (1 for cine MR).
        num_classes: segmentation classes including background (4 for ACDC: BG, LV, MYO, RV).
        base_channels: width of the first encoder stage (16 in the paper's `FCN_16` setting).
        code_channels: channels of the latent codes z_i and z_s (128).
        shape_temperature: T in softmax(logits / T), the soft segmentation fed to the STN (2 in the reference).
        image_output_sigmoid: sigmoid after the image decoder (True: the reference and the digest).

    Shapes: images (B, in_channels, H, W) with H and W multiples of 16; codes (B, code_channels, H/16, W/16);
    logits (B, num_classes, H, W); labels (B, H, W) integer class maps.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        base_channels: int = 16,
        code_channels: int = 128,
        shape_temperature: float = 2.0,
        image_output_sigmoid: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("base_channels", base_channels),
                            ("code_channels", code_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not shape_temperature > 0:
            raise ValueError(f"shape_temperature must be > 0, got {shape_temperature!r}")
        # NVFlare re-creates a server-side model from the attributes named like the __init__ parameters
        self.in_channels, self.num_classes = in_channels, num_classes
        self.base_channels, self.code_channels = base_channels, code_channels
        self.shape_temperature = float(shape_temperature)
        self.image_output_sigmoid = image_output_sigmoid
        self.encoder = ConvEncoder(in_channels, base_channels, code_channels)
        self.code_filter = CodeFilter(code_channels)
        self.image_decoder = ConvDecoder(in_channels, "transposed", base_channels, code_channels,
                                         sigmoid=image_output_sigmoid)
        self.segmentation_decoder = ConvDecoder(num_classes, "nearest", base_channels, code_channels)
        self.stn = ShapeAutoencoder(num_classes, base_channels, code_channels)
        self.apply(_init_like_reference)

    # ---- FTN -------------------------------------------------------------------------------------------------
    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) image -> (z_i, z_s), each (B, code_channels, H/16, W/16)."""
        self.check_image(image)
        z_i = self.encoder(image)
        return z_i, self.code_filter(z_i)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """FTN segmentation logits (B, num_classes, H, W) for a (B, C, H, W) image."""
        _, z_s = self.encode(image)
        return self.segmentation_decoder(z_s)

    # ---- STN -------------------------------------------------------------------------------------------------
    def soft_shape(self, logits: torch.Tensor) -> torch.Tensor:
        """STN input from logits: softmax(logits / T) over the class dimension."""
        return torch.softmax(logits / self.shape_temperature, dim=1)

    def one_hot_shape(self, label: torch.Tensor) -> torch.Tensor:
        """STN input from a (B, H, W) integer label map: (B, num_classes, H, W) float one-hot."""
        self.check_label(label)
        return F.one_hot(label.long(), self.num_classes).permute(0, 3, 1, 2).float()

    def refine(self, logits: torch.Tensor) -> torch.Tensor:
        """STN correction of FTN logits: STN(softmax(logits / T)) -> logits (the paper's inference output)."""
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be (B, {self.num_classes}, H, W), got shape {tuple(logits.shape)}")
        return self.stn(self.soft_shape(logits))

    # ---- checks and bookkeeping ------------------------------------------------------------------------------
    def check_image(self, image: torch.Tensor) -> None:
        """Raise ValueError/TypeError on a wrong shape, dtype, size or NaN/inf values."""
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
        if not image.is_floating_point():
            raise TypeError(f"image must be a floating-point tensor, got dtype {image.dtype}")
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"image must be (B, {self.in_channels}, H, W), got shape {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h % _DOWNSAMPLING or w % _DOWNSAMPLING or h == 0 or w == 0:
            raise ValueError(f"image H and W must be positive multiples of {_DOWNSAMPLING}, got {h}x{w}")
        if not torch.isfinite(image).all():
            raise ValueError("image contains NaN or inf values")

    def check_label(self, label: torch.Tensor) -> None:
        """Raise on a label map that is not (B, H, W) integer with values in [0, num_classes)."""
        if not isinstance(label, torch.Tensor):
            raise TypeError(f"label must be a torch.Tensor, got {type(label).__name__}")
        if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
            raise TypeError(f"label must be an integer tensor, got dtype {label.dtype}")
        if label.ndim != 3:
            raise ValueError(f"label must be (B, H, W), got shape {tuple(label.shape)}")
        if label.numel() and (int(label.min()) < 0 or int(label.max()) >= self.num_classes):
            raise ValueError(
                f"label values must lie in [0, {self.num_classes - 1}], got range "
                f"[{int(label.min())}, {int(label.max())}]"
            )

    def key_groups(self, personal_parts: tuple[str, ...] = ()) -> KeyGroups:
        """:class:`KeyGroups` keeping ``personal_parts`` (e.g. ``("image_decoder",)``) on the site."""
        unknown = sorted(set(personal_parts) - set(PART_NAMES))
        if unknown:
            raise ValueError(f"unknown parts {unknown}; parts are {PART_NAMES}")
        by_part = self.state_dict_keys_by_part()
        return KeyGroups.split(self, personal=set().union(*(by_part[p] for p in personal_parts)))

    def state_dict_keys_by_part(self) -> dict[str, set[str]]:
        """The state_dict keys of each part, e.g. to keep `image_decoder` local while sharing the rest."""
        keys: dict[str, set[str]] = {name: set() for name in PART_NAMES}
        for key in self.state_dict():
            keys[key.split(".", 1)[0]].add(key)
        return keys
