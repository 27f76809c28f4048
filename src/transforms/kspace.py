"""Centred orthonormal 2-D k-space operations and the FedMRI input/target pipeline.

FedMRI (Feng et al., IEEE TMI 2022, arXiv 2112.05752) trains single-coil reconstruction on *simulated* k-space:
``k = FFT(magnitude image)``, ``input = |IFFT(mask * k)|`` (zero-filled), ``target = |IFFT(k)|``. The input is
standardised by its own mean/std and the target by the *same* values, so the network learns a residual in the input's
units; metrics are computed after de-normalising. Real fastMRI single-coil k-space (``kspace`` [slices, H, W]
complex64) goes through the same functions, with a centre crop to the reconstruction size.

Convention: complex data are complex torch tensors ``(..., H, W)`` (not a trailing real/imaginary axis); masks are
real ``(H, W)`` tensors of 0/1 broadcast over leading axes. The FFTs are MONAI's centred orthonormal
``fftn_centered_t``/``ifftn_centered_t`` (numpy ``fftshift(fft2(ifftshift(x), norm="ortho"))``).

Deviations from the reference code (chunmeifeng/FedMRI), decided here:
- The reference BraTS loader uses ``fftshift(fft2(x))`` and a plain ``ifft2`` of the shifted k-space; the magnitude is
  the same up to floating point, but we use one centred orthonormal pair everywhere so k-space energy equals image
  energy (Parseval) and masks are always in centred k-space.
- The reference fastMRI branch clamps normalised input and target to [-6, 6] and its BraTS branch does not; here the
  clamp is an option (``clamp=None`` by default, as the digest describes), and de-normalisation is exact only
  without a clamp.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from monai.networks.blocks.fft_utils_t import fftn_centered_t, ifftn_centered_t
from torch import Tensor

__all__ = [
    "fft2c",
    "ifft2c",
    "apply_mask",
    "zero_filled_reconstruction",
    "center_crop",
    "normalize_instance",
    "normalize",
    "denormalize",
    "ReconstructionPair",
    "simulate_kspace",
    "make_reconstruction_pair",
]

NORM_EPS = 1e-11  # the reference's eps in (x - mean) / (std + eps)


def _check_tensor(name: str, x: Tensor, *, complex_ok: bool = True, real_ok: bool = True, min_dim: int = 2) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims (..., H, W), got shape {tuple(x.shape)}")
    is_complex = x.is_complex()
    if is_complex and not complex_ok:
        raise TypeError(f"{name} must be real-valued, got dtype {x.dtype}")
    if not is_complex and not (real_ok and x.is_floating_point()):
        allowed = "floating or complex" if complex_ok and real_ok else ("complex" if complex_ok else "floating")
        raise TypeError(f"{name} must have a {allowed} dtype, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values (shape {tuple(x.shape)})")


def _as_complex(x: Tensor) -> Tensor:
    return x if x.is_complex() else torch.complex(x, torch.zeros_like(x))


def fft2c(image: Tensor) -> Tensor:
    """Centred orthonormal 2-D FFT over the last two axes.

    Args:
        image: real or complex tensor ``(..., H, W)``; real input is treated as a zero-phase image.

    Returns:
        complex k-space ``(..., H, W)`` with the DC component at index ``(H // 2, W // 2)``.
    """
    _check_tensor("image", image)
    x = torch.view_as_real(_as_complex(image).contiguous())
    return torch.view_as_complex(fftn_centered_t(x, spatial_dims=2, is_complex=True).contiguous())


def ifft2c(kspace: Tensor) -> Tensor:
    """Centred orthonormal 2-D inverse FFT over the last two axes (inverse of :func:`fft2c`).

    Args:
        kspace: complex tensor ``(..., H, W)`` in centred k-space (real input is promoted to complex).

    Returns:
        complex image ``(..., H, W)``.
    """
    _check_tensor("kspace", kspace)
    x = torch.view_as_real(_as_complex(kspace).contiguous())
    return torch.view_as_complex(ifftn_centered_t(x, spatial_dims=2, is_complex=True).contiguous())


def _check_mask(mask: Tensor, kspace: Tensor) -> None:
    _check_tensor("mask", mask, complex_ok=False)
    if tuple(mask.shape[-2:]) != tuple(kspace.shape[-2:]):
        raise ValueError(
            f"mask spatial shape {tuple(mask.shape[-2:])} does not match "
            f"kspace spatial shape {tuple(kspace.shape[-2:])}"
        )
    bad = (mask != 0) & (mask != 1)
    if bad.any():
        raise ValueError(f"mask must contain only 0 and 1, got value {mask[bad][0].item()!r}")


def apply_mask(kspace: Tensor, mask: Tensor) -> Tensor:
    """Keep the sampled k-space points (``mask == 1``) and zero the rest.

    Args:
        kspace: complex ``(..., H, W)``.
        mask: real 0/1 ``(H, W)`` (or broadcastable with the same last two axes).
    """
    _check_tensor("kspace", kspace)
    _check_mask(mask, kspace)
    return _as_complex(kspace) * mask.to(kspace.real.dtype)


def zero_filled_reconstruction(kspace: Tensor, mask: Tensor) -> Tensor:
    """Magnitude of the inverse FFT of the masked k-space: the network input ``|IFFT(mask * k)|``.

    Args:
        kspace: complex ``(..., H, W)``.
        mask: real 0/1 ``(H, W)``.

    Returns:
        real ``(..., H, W)``.
    """
    return ifft2c(apply_mask(kspace, mask)).abs()


def center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Centre crop of the last two axes to ``size`` (fastMRI's rule: start at ``(H - h) // 2``).

    Args:
        x: tensor ``(..., H, W)``.
        size: ``(h, w)`` with ``0 < h <= H`` and ``0 < w <= W``.
    """
    h, w = (int(s) for s in size)
    big_h, big_w = x.shape[-2], x.shape[-1]
    if not (0 < h <= big_h and 0 < w <= big_w):
        raise ValueError(f"size must fit inside the input's last two axes {(big_h, big_w)}, got {size!r}")
    top, left = (big_h - h) // 2, (big_w - w) // 2
    return x[..., top : top + h, left : left + w]


def normalize_instance(image: Tensor, eps: float = NORM_EPS) -> tuple[Tensor, Tensor, Tensor]:
    """Standardise each 2-D image by its own mean and std, as the reference's ``normalize_instance``.

    Deviation (documented): the std here is the unbiased one (``torch.std``, divisor ``H*W - 1``); the FedMRI
    reference takes the population std (numpy's default, divisor ``H*W``). The two differ by the factor
    ``sqrt(H*W / (H*W - 1))``: 1 + 5e-6 for 320 x 320, 1 + 9e-6 for 240 x 240, 1 + 2e-4 for a 48 x 48 test slice.
    Since the target is standardised by the same statistics and metrics are computed after de-normalising, the
    choice only rescales the network's working units by that factor; it is kept for compatibility with the tests
    and checkpoints that rely on unit unbiased std.

    Args:
        image: real ``(..., H, W)``; statistics are taken per image over the last two axes.
        eps: added to the std before dividing.

    Returns:
        ``(normalised, mean, std)`` with mean/std shaped ``(..., 1, 1)`` so they broadcast back.
    """
    _check_tensor("image", image, complex_ok=False)
    if image.shape[-1] * image.shape[-2] < 2:
        raise ValueError(f"image needs at least 2 pixels to compute a std, got shape {tuple(image.shape)}")
    mean = image.mean(dim=(-2, -1), keepdim=True)
    std = image.std(dim=(-2, -1), keepdim=True)
    return (image - mean) / (std + eps), mean, std


def _check_stats(mean: Tensor | float, std: Tensor | float) -> None:
    for name, value in (("mean", mean), ("std", std)):
        t = torch.as_tensor(value)
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} must be finite, got {value!r}")
    if (torch.as_tensor(std) < 0).any():
        raise ValueError(f"std must be non-negative, got {std!r}")


def normalize(x: Tensor, mean: Tensor | float, std: Tensor | float, eps: float = NORM_EPS) -> Tensor:
    """``(x - mean) / (std + eps)``: applies the input's statistics to the target."""
    _check_tensor("x", x, complex_ok=False, min_dim=0)
    _check_stats(mean, std)
    return (x - mean) / (std + eps)


def denormalize(x: Tensor, mean: Tensor | float, std: Tensor | float, eps: float = NORM_EPS) -> Tensor:
    """Inverse of :func:`normalize`: ``x * (std + eps) + mean`` (metrics are computed in these units)."""
    _check_tensor("x", x, complex_ok=False, min_dim=0)
    _check_stats(mean, std)
    return x * (std + eps) + mean


class ReconstructionPair(NamedTuple):
    """One training/validation sample: normalised input and target plus the statistics to undo it."""

    input: Tensor  # (..., H, W) normalised zero-filled magnitude
    target: Tensor  # (..., H, W) normalised fully sampled magnitude
    mean: Tensor  # (..., 1, 1)
    std: Tensor  # (..., 1, 1)


def simulate_kspace(image: Tensor) -> Tensor:
    """FedMRI's simulated single-coil k-space: ``fft2c`` of the magnitude image.

    Args:
        image: real ``(..., H, W)`` magnitude image (a complex one is reduced to its magnitude first).
    """
    _check_tensor("image", image)
    return fft2c(image.abs() if image.is_complex() else image)


def make_reconstruction_pair(
    kspace: Tensor,
    mask: Tensor,
    crop_size: tuple[int, int] | None = None,
    target: Tensor | None = None,
    clamp: float | None = None,
) -> ReconstructionPair:
    """Build the normalised (input, target) pair from fully sampled k-space and a fixed site mask.

    ``input = |ifft2c(mask * k)|`` and ``target = |ifft2c(k)|`` (or the given ``target``, e.g. fastMRI's
    ``reconstruction_esc``), both centre-cropped to ``crop_size``; the input is standardised by its own mean/std and
    the target by the same values.

    Args:
        kspace: complex ``(..., H, W)`` centred k-space (simulated with :func:`simulate_kspace`, or fastMRI h5).
        mask: real 0/1 ``(H, W)`` sampling mask in centred k-space.
        crop_size: optional ``(h, w)`` centre crop applied to input and computed target (fastMRI: 320x320).
        target: optional ground truth ``(..., h, w)``; when given it replaces ``|ifft2c(k)|``.
        clamp: optional symmetric clamp of the normalised input and target (the reference fastMRI branch uses 6).
    """
    zero_filled = zero_filled_reconstruction(kspace, mask)
    if target is None:
        target = ifft2c(kspace).abs()
    else:
        _check_tensor("target", target, complex_ok=False)
    if crop_size is not None:
        zero_filled = center_crop(zero_filled, crop_size)
        target = center_crop(target, crop_size) if target.shape[-2:] != zero_filled.shape[-2:] else target
    if target.shape != zero_filled.shape:
        raise ValueError(f"target shape {tuple(target.shape)} does not match input shape {tuple(zero_filled.shape)}")
    if clamp is not None and not clamp > 0:
        raise ValueError(f"clamp must be positive or None, got {clamp!r}")
    image, mean, std = normalize_instance(zero_filled)
    target_n = normalize(target.to(image.dtype), mean, std)
    if clamp is not None:
        image, target_n = image.clamp(-clamp, clamp), target_n.clamp(-clamp, clamp)
    return ReconstructionPair(image, target_n, mean, std)
