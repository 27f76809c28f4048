"""Minimal centred, orthonormal 2-D FFT helpers for the FedMRI data tools (numpy only).

The convention is fastMRI's ``fft2c``/``ifft2c``: k-space is stored with the DC term in the centre of the
last two axes, and the transform is unitary (``norm="ortho"``), so image and k-space energies are equal.
These helpers are private to ``data_prep``; the training-side k-space operations live in ``src/transforms``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fft2c", "ifft2c", "center_crop", "rss"]

_AXES = (-2, -1)


def fft2c(image: np.ndarray) -> np.ndarray:
    """Centred unitary 2-D FFT over the last two axes: image ``[..., H, W]`` -> k-space ``[..., H, W]``."""
    shifted = np.fft.ifftshift(image, axes=_AXES)
    return np.fft.fftshift(np.fft.fft2(shifted, axes=_AXES, norm="ortho"), axes=_AXES)


def ifft2c(kspace: np.ndarray) -> np.ndarray:
    """Centred unitary inverse 2-D FFT over the last two axes: k-space ``[..., H, W]`` -> image ``[..., H, W]``."""
    shifted = np.fft.ifftshift(kspace, axes=_AXES)
    return np.fft.fftshift(np.fft.ifft2(shifted, axes=_AXES, norm="ortho"), axes=_AXES)


def center_crop(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop the centre ``size = (h, w)`` of the last two axes, with fastMRI's offset rule ``(H - h) // 2``.

    A requested size larger than the array along an axis keeps that axis whole (fastMRI's "FLAIR 203" case,
    where the k-space is narrower than the 320-pixel reconstruction).
    """
    h_in, w_in = array.shape[-2:]
    h, w = min(int(size[0]), h_in), min(int(size[1]), w_in)
    if h <= 0 or w <= 0:
        raise ValueError(f"crop size must be positive, got {tuple(size)!r}")
    top, left = (h_in - h) // 2, (w_in - w) // 2
    return array[..., top : top + h, left : left + w]


def rss(coil_images: np.ndarray, coil_axis: int = -3) -> np.ndarray:
    """Root-sum-of-squares coil combination: ``sqrt(sum_c |x_c|^2)`` over ``coil_axis``."""
    return np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=coil_axis))
