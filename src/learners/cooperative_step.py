"""One training step of cooperative training with latent-space data augmentation, as plain PyTorch.

Chen et al., "Cooperative Training and Latent Space Data Augmentation for Robust Medical Image Segmentation",
MICCAI 2021 (https://arxiv.org/abs/2107.01079). No NVFlare here: a federated learner calls `cooperative_step` on
each local batch, so hard examples are made from the site's own model and data and nothing extra leaves the site.

The step (x: clean image, y: label map, x~ = x + 0.05 N(0, 1)):

1. standard losses on x~: ``CE(D_s(z_s), y) + 0.5 MSE(D_i(z_i), x) + CE(STN(onehot y), y) + CE(STN(softmax(p/2)), y)``,
   where the last term's gradient also flows into the FTN (the reference's ``separate_training=False``);
2. hard-example generation from the cached codes with the decoders frozen (no parameter gradients) and their
   BatchNorm statistics untouched: ``x^ = D_i(mask(z_i))``, ``p^ = D_s(mask(z_s))``, constants; the masking scheme is
   drawn independently for z_i (targeted by MSE to x) and z_s (targeted by pixel CE to y);
3. hard losses: ``CE(FTN(x^), y) + 0.5 MSE(D_i(E(x^)), x) + CE(STN(softmax(FTN(x^)/2)), y)
   + CE(STN(softmax(p^/2)), y)``;
4. one backward of the sum and one Adam step (lr 1e-4, no schedule). One Adam over all parameters equals the
   reference's one Adam per module (Adam is element-wise and all share the learning rate).

BatchNorm on the hard-example passes of step 3 (``hard_example_bn``; default ``"reference"``, what the reference
code does): the encoder, code filter, segmentation decoder and STN run those passes with frozen BN (batch statistics
for normalisation, but no running-statistics update and no gradient to the BN affine parameters); only the image
decoder's pass D_i(E(x^)) is an ordinary training pass that tracks statistics and trains its BN affine parameters.
``"all"`` freezes BN in every part (then the running statistics after a cooperative step equal those after a standard
step); ``"none"`` runs every hard-example pass as a plain training pass. Neither is the reference.

Also as the reference: the noisy input is clamped to [0, 1] (``clamp_noisy_input``, default True) and the image
decoder ends in a sigmoid (``CooperativeNet(image_output_sigmoid=True)``).

Deviation: the targeted-mask gradient passes of step 2 run with frozen decoder BN statistics here, so generating hard
examples never moves the decoders' running statistics with masked codes (the issue asks for untouched statistics
during generation).

The reference trains on a batch of augmented slices concatenated with the same slices un-augmented; that batch
composition is the data pipeline's job, not this function's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from src.config.cooptrain import HARD_EXAMPLE_BN
from src.losses.latent_masking import MASK_SCHEMES, image_mse, mask_latent_code, pixel_cross_entropy
from src.models.cooperative_net import CooperativeNet
from src.models.freezable_batchnorm import frozen_batchnorm, frozen_parameters

__all__ = [
    "HARD_EXAMPLE_BN",
    "CooperativeConfig",
    "HardExamples",
    "add_input_noise",
    "build_optimizer",
    "cooperative_step",
    "generate_hard_examples",
    "hard_example_losses",
    "standard_losses",
]

_FROZEN_ON_HARD = {
    "reference": ("encoder", "code_filter", "segmentation_decoder", "stn"),
    "all": ("encoder", "code_filter", "image_decoder", "segmentation_decoder", "stn"),
    "none": (),
}


@dataclass(frozen=True)
class CooperativeConfig:
    """Hyper-parameters of one cooperative step; defaults are the paper's / reference's ACDC settings.

    Args:
        latent_da: add hard examples (cooperative training); False gives the standard step of the same networks.
        cooperative: the dual network's four standard terms (True) or only the segmentation term
            ``CE(D_s(z_s(x~)), y)`` (False: plain training of the segmentation path, image decoder and STN unused;
            the benchmark's "standard" baseline; needs ``latent_da=False``).
        input_noise_std: std of the Gaussian noise on the FTN input (0.05).
        clamp_noisy_input: clamp the noisy input to [0, 1] (the reference and the digest do).
        image_loss_weight: weight of the image reconstruction MSE (0.5).
        image_code_scheme, shape_code_scheme: masking scheme per code: "random", "dropout", "channel", "spatial".
        max_mask_fraction: f ~ U(0, max_mask_fraction) of targeted masks (0.5).
        dropout_p: channel dropout rate of the "dropout" scheme (0.5).
        soft_mask: soft (U(0, 0.5)) rather than hard (0) targeted masks (True in the paper).
        hard_example_bn: which parts' BN is frozen on the hard-example passes: "reference" (all but the image
            decoder, the default), "all" or "none"; see the module docstring.
        learning_rate: Adam learning rate (1e-4).
    """

    latent_da: bool = True
    cooperative: bool = True
    input_noise_std: float = 0.05
    clamp_noisy_input: bool = True
    image_loss_weight: float = 0.5
    image_code_scheme: str = "random"
    shape_code_scheme: str = "random"
    max_mask_fraction: float = 0.5
    dropout_p: float = 0.5
    soft_mask: bool = True
    hard_example_bn: str = "reference"
    learning_rate: float = 1e-4

    def __post_init__(self) -> None:
        valid = (*MASK_SCHEMES, "random")
        for name in ("image_code_scheme", "shape_code_scheme"):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        if self.latent_da and not self.cooperative:
            raise ValueError("latent_da=True needs cooperative=True (hard examples come from the dual network)")
        if self.hard_example_bn not in HARD_EXAMPLE_BN:
            raise ValueError(f"hard_example_bn must be one of {HARD_EXAMPLE_BN}, got {self.hard_example_bn!r}")
        for name in ("input_noise_std", "image_loss_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.max_mask_fraction <= 1.0:
            raise ValueError(f"max_mask_fraction must be in [0, 1], got {self.max_mask_fraction!r}")
        if not 0.0 <= self.dropout_p < 1.0:
            raise ValueError(f"dropout_p must be in [0, 1), got {self.dropout_p!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")


@dataclass
class HardExamples:
    """Generated constants: image (B, C, H, W), segmentation logits (B, K, H, W), and the schemes used."""

    image: torch.Tensor
    segmentation_logits: torch.Tensor
    image_code_scheme: str
    shape_code_scheme: str
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


def build_optimizer(model: CooperativeNet, config: CooperativeConfig | None = None) -> torch.optim.Adam:
    """Adam over all five parts at the configured learning rate (1e-4)."""
    config = config or CooperativeConfig()
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate)


def add_input_noise(
    image: torch.Tensor, std: float, clamp: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x~ = x + std * N(0, 1), optionally clamped to [0, 1]; a constant (no graph)."""
    noise = torch.randn(image.shape, generator=generator, dtype=image.dtype, device=image.device)
    noisy = image.detach() + std * noise
    return noisy.clamp(0.0, 1.0) if clamp else noisy


def standard_losses(
    model: CooperativeNet, clean: torch.Tensor, noisy: torch.Tensor, label: torch.Tensor, config: CooperativeConfig
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The four standard terms on the noisy input, plus the codes (z_i, z_s) for hard-example generation.

    Returns:
        ({"seg", "image", "gt_shape", "pred_shape"} -> scalar losses, z_i, z_s).
    """
    z_i, z_s = model.encode(noisy)
    logits = model.segmentation_decoder(z_s)
    recon = model.image_decoder(z_i)
    losses = {
        "seg": F.cross_entropy(logits, label),
        "image": config.image_loss_weight * F.mse_loss(recon, clean),
        "gt_shape": F.cross_entropy(model.stn(model.one_hot_shape(label)), label),
        "pred_shape": F.cross_entropy(model.refine(logits), label),
    }
    return losses, z_i, z_s


def generate_hard_examples(
    model: CooperativeNet,
    z_i: torch.Tensor,
    z_s: torch.Tensor,
    clean: torch.Tensor,
    label: torch.Tensor,
    config: CooperativeConfig,
    generator: torch.Generator | None = None,
) -> HardExamples:
    """Decode latent-masked codes with frozen decoders into a hard image and a hard segmentation.

    The decoders get no parameter gradient (requires_grad is off inside, and restored after) and their BatchNorm
    layers use batch statistics without updating the running ones. The outputs are detached constants.
    """
    decoders = (model.image_decoder, model.segmentation_decoder)
    with frozen_parameters(*decoders), frozen_batchnorm(*decoders):
        masked_z_i, image_mask, image_scheme = mask_latent_code(
            z_i, config.image_code_scheme, model.image_decoder, image_mse(clean),
            config.max_mask_fraction, config.dropout_p, config.soft_mask, generator,
        )
        masked_z_s, shape_mask, shape_scheme = mask_latent_code(
            z_s, config.shape_code_scheme, model.segmentation_decoder, pixel_cross_entropy(label),
            config.max_mask_fraction, config.dropout_p, config.soft_mask, generator,
        )
        with torch.no_grad():
            hard_image = model.image_decoder(masked_z_i)
            hard_logits = model.segmentation_decoder(masked_z_s)
    return HardExamples(hard_image, hard_logits, image_scheme, shape_scheme,
                        {"image_code": image_mask, "shape_code": shape_mask})


def hard_example_losses(
    model: CooperativeNet, hard: HardExamples, clean: torch.Tensor, label: torch.Tensor, config: CooperativeConfig
) -> dict[str, torch.Tensor]:
    """The four hard-example terms (see module docstring), BN frozen in the parts `config.hard_example_bn` names.

    Returns:
        {"seg", "image", "pred_shape", "masked_shape"} -> scalar losses.
    """
    parts = [getattr(model, name) for name in _FROZEN_ON_HARD[config.hard_example_bn]]
    with frozen_batchnorm(*parts):
        z_i, z_s = model.encode(hard.image)
        logits = model.segmentation_decoder(z_s)
        recon = model.image_decoder(z_i)
        return {
            "seg": F.cross_entropy(logits, label),
            "image": config.image_loss_weight * F.mse_loss(recon, clean),
            "pred_shape": F.cross_entropy(model.refine(logits), label),
            "masked_shape": F.cross_entropy(model.refine(hard.segmentation_logits), label),
        }


def cooperative_step(
    model: CooperativeNet,
    optimizer: torch.optim.Optimizer,
    image: torch.Tensor,
    label: torch.Tensor,
    config: CooperativeConfig | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float | str]:
    """One optimisation step; the standard step of the same networks when `config.latent_da` is False.

    Args:
        model: the dual network, put in training mode here.
        optimizer: optimiser over `model`'s parameters (see `build_optimizer`).
        image: clean images (B, C, H, W), intensities in [0, 1], H and W multiples of 16.
        label: integer label maps (B, H, W) in [0, num_classes).
        config: hyper-parameters (paper defaults).
        generator: source of the input noise and of all masking randomness (seed it for reproducible steps).

    Returns:
        Scalar losses as floats ("loss", "standard/<term>", "hard/<term>") and the schemes applied.
    """
    config = config or CooperativeConfig()
    model.check_image(image)
    model.check_label(label)
    if label.shape[0] != image.shape[0] or label.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"label shape {tuple(label.shape)} does not match image shape {tuple(image.shape)}")
    label = label.long()
    model.train()
    optimizer.zero_grad(set_to_none=True)

    noisy = add_input_noise(image, config.input_noise_std, config.clamp_noisy_input, generator)
    if config.cooperative:
        std_terms, z_i, z_s = standard_losses(model, image, noisy, label, config)
    else:
        std_terms = {"seg": F.cross_entropy(model(noisy), label)}
    total = sum(std_terms.values())
    report: dict[str, float | str] = {f"standard/{k}": float(v.detach()) for k, v in std_terms.items()}

    if config.latent_da:
        hard = generate_hard_examples(model, z_i, z_s, image, label, config, generator)
        hard_terms = hard_example_losses(model, hard, image, label, config)
        total = total + sum(hard_terms.values())
        report.update({f"hard/{k}": float(v.detach()) for k, v in hard_terms.items()})
        report["image_code_scheme"] = hard.image_code_scheme
        report["shape_code_scheme"] = hard.shape_code_scheme

    if not torch.isfinite(total):
        raise FloatingPointError(f"cooperative step produced a non-finite loss {float(total)!r}")
    total.backward()
    optimizer.step()
    report["loss"] = float(total.detach())
    return report
