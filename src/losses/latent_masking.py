"""Latent-code masking of cooperative training (latent-space data augmentation, Chen et al. MICCAI 2021, Sec. 2.2).

Three schemes perturb a code z (B, C, h, w) to make "hard" images/segmentations after decoding:

- ``"dropout"``: random channel dropout, `dropout2d(z, p)` with the usual 1/(1-p) rescale (x2 at p=0.5);
- ``"channel"``: targeted channel-wise: with g = dL/dz (L = task loss of the frozen decoder's output), score each
  channel by the mean of g over (h, w) and mask the top-k channels per sample, k = floor(C * f);
- ``"spatial"``: targeted spatial-wise: score each position by the mean of g over channels, mask the top-k
  positions per sample, k = floor(h * w * f).

f ~ U(0, max_fraction) is drawn once per call (the reference's ``random_threshold``). Soft masking (the paper's
default) multiplies each masked channel/position by its own U(0, 0.5) factor; hard masking sets it to 0.

Scores are the *signed* gradient means, never |g|: the reference masks the entries whose increase would raise the
loss most, and the digest insists on keeping that. Ties are broken by `torch.topk` (exactly k entries are masked);
the reference thresholds with ">" at the k-th largest value, which masks fewer than k entries only under exact ties.

Randomness comes only from the `generator` argument, so a seeded generator reproduces the masks exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "MASK_SCHEMES",
    "apply_scores_mask",
    "image_mse",
    "latent_code_gradient",
    "mask_latent_code",
    "pixel_cross_entropy",
    "random_channel_dropout",
    "targeted_channel_mask",
    "targeted_spatial_mask",
]

MASK_SCHEMES = ("dropout", "channel", "spatial")
_SOFT_MASK_MAX = 0.5  # soft masks scale masked entries by U(0, 0.5)


def _check_code(z: torch.Tensor, name: str = "z") -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {z.dtype}")
    if z.ndim != 4:
        raise ValueError(f"{name} must be (B, C, h, w), got shape {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise ValueError(f"{name} contains NaN or inf values")


def _check_fraction(fraction: float, name: str = "fraction") -> None:
    if not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {fraction!r}")


def _uniform(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def random_channel_dropout(
    z: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel dropout with rescaling, as `F.dropout2d(z, p)` but drawn from `generator`.

    Args:
        z: code (B, C, h, w).
        p: probability of zeroing a channel (per sample), in [0, 1).
        generator: source of randomness.

    Returns:
        (masked code, multiplicative mask (B, C, 1, 1) with entries 0 or 1/(1-p)).
    """
    _check_code(z)
    if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"p must be a number in [0, 1), got {p!r}")
    keep = (_uniform((z.shape[0], z.shape[1], 1, 1), z, generator) >= p).to(z.dtype)
    mask = keep / (1.0 - p)
    return z * mask, mask


def apply_scores_mask(
    z: torch.Tensor, scores: torch.Tensor, k: int, soft: bool, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask the k highest-scoring entries of `scores` per sample and apply the mask to z.

    Args:
        z: code (B, C, h, w).
        scores: (B, C, 1, 1) for channel masks or (B, 1, h, w) for spatial masks (broadcastable to z).
        k: number of entries to mask per sample, 0 <= k <= entries per sample.
        soft: masked entries get U(0, 0.5) factors instead of 0.

    Returns:
        (masked code, mask of the shape of `scores`; 1 where kept).
    """
    b = scores.shape[0]
    flat = scores.reshape(b, -1)
    if not 0 <= k <= flat.shape[1]:
        raise ValueError(f"k must be in [0, {flat.shape[1]}], got {k!r}")
    selected = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        selected.scatter_(1, torch.topk(flat, k, dim=1).indices, True)
    masked_value = _uniform(tuple(flat.shape), flat, generator) * _SOFT_MASK_MAX if soft else torch.zeros_like(flat)
    mask = torch.where(selected, masked_value, torch.ones_like(flat)).reshape(scores.shape)
    return z * mask, mask


def targeted_channel_mask(
    z: torch.Tensor, grad: torch.Tensor, fraction: float, soft: bool = True, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask the floor(C * fraction) channels with the largest mean signed gradient, per sample.

    Args:
        z: code (B, C, h, w).
        grad: dL/dz, same shape as z.
        fraction: share of channels to mask, in [0, 1].
        soft: U(0, 0.5) factors (True) or zeros (False) on masked channels.

    Returns:
        (masked code, mask (B, C, 1, 1)).
    """
    _check_code(z)
    _check_code(grad, "grad")
    if grad.shape != z.shape:
        raise ValueError(f"grad must have the shape of z {tuple(z.shape)}, got {tuple(grad.shape)}")
    _check_fraction(fraction)
    scores = grad.mean(dim=(2, 3), keepdim=True)
    return apply_scores_mask(z, scores, int(z.shape[1] * fraction), soft, generator)


def targeted_spatial_mask(
    z: torch.Tensor, grad: torch.Tensor, fraction: float, soft: bool = True, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask the floor(h * w * fraction) positions with the largest channel-mean signed gradient, per sample.

    Args:
        z: code (B, C, h, w).
        grad: dL/dz, same shape as z.
        fraction: share of positions to mask, in [0, 1].
        soft: U(0, 0.5) factors (True) or zeros (False) on masked positions.

    Returns:
        (masked code, mask (B, 1, h, w)).
    """
    _check_code(z)
    _check_code(grad, "grad")
    if grad.shape != z.shape:
        raise ValueError(f"grad must have the shape of z {tuple(z.shape)}, got {tuple(grad.shape)}")
    _check_fraction(fraction)
    scores = grad.mean(dim=1, keepdim=True)
    return apply_scores_mask(z, scores, int(z.shape[2] * z.shape[3] * fraction), soft, generator)


def latent_code_gradient(
    z: torch.Tensor, decoder: Callable[[torch.Tensor], torch.Tensor], loss_fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """g = d loss_fn(decoder(z)) / dz at a detached copy of z; nothing else receives a gradient.

    The caller is responsible for freezing the decoder's parameters and BatchNorm statistics (see
    `src.models.freezable_batchnorm`); only the gradient with respect to the code is computed here.
    """
    _check_code(z)
    code = z.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(decoder(code))
        (grad,) = torch.autograd.grad(loss, [code])
    return grad


def mask_latent_code(
    z: torch.Tensor,
    scheme: str,
    decoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_fraction: float = 0.5,
    dropout_p: float = 0.5,
    soft: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Perturb a code with one scheme; ``"random"`` picks one of `MASK_SCHEMES` uniformly (from `generator`).

    Args:
        z: code (B, C, h, w); used detached, so the result is a constant for the caller's graph.
        scheme: "dropout", "channel", "spatial" or "random".
        decoder, loss_fn: decoder of this code and the task loss of its output (needed by targeted schemes).
        max_fraction: upper bound of f ~ U(0, max_fraction) for targeted schemes (0.5 in the paper).
        dropout_p: channel dropout rate (0.5 in the paper).
        soft: soft (U(0, 0.5)) or hard (0) masks for targeted schemes.

    Returns:
        (masked detached code, mask, the scheme that was applied).
    """
    valid = (*MASK_SCHEMES, "random")
    if scheme not in valid:
        raise ValueError(f"scheme must be one of {valid}, got {scheme!r}")
    _check_fraction(max_fraction, "max_fraction")
    if scheme != "dropout" and (decoder is None or loss_fn is None):
        raise ValueError(f"scheme {scheme!r} may be targeted and needs decoder and loss_fn, got None")
    if scheme == "random":
        scheme = MASK_SCHEMES[int(torch.randint(len(MASK_SCHEMES), (1,), generator=generator))]
    code = z.detach()
    if scheme == "dropout":
        masked, mask = random_channel_dropout(code, dropout_p, generator)
        return masked, mask, scheme
    grad = latent_code_gradient(code, decoder, loss_fn)
    fraction = float(torch.rand((), generator=generator)) * max_fraction
    masking = targeted_channel_mask if scheme == "channel" else targeted_spatial_mask
    masked, mask = masking(code, grad, fraction, soft, generator)
    return masked, mask, scheme


def pixel_cross_entropy(target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Loss closure for segmentation codes: mean pixel CE of logits against a (B, H, W) label map."""
    return lambda logits: F.cross_entropy(logits, target)


def image_mse(target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Loss closure for image codes: MSE of the reconstruction against the clean image."""
    return lambda recon: F.mse_loss(recon, target)
