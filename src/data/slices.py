"""Checks of the 2.5-D slice files written by ``data_prep.multisite_prostate`` (shared by converter and learner)."""

from __future__ import annotations

import os

import numpy as np

from src.data.validation import DataValidationError, check_label_values

__all__ = ["check_slice_pair"]


def check_slice_pair(image_path: str | os.PathLike, label_path: str | os.PathLike) -> None:
    """An image (3,H,W) float32 and its label (1,H,W) with values {0,1}; raises naming the file otherwise."""
    image, label = np.load(image_path), np.load(label_path)
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != np.float32:
        raise DataValidationError(f"image: {str(image_path)!r} is {image.dtype}{image.shape}, expected float32 (3,H,W)")
    if label.shape != (1, *image.shape[1:]):
        raise DataValidationError(f"label: {str(label_path)!r} shape {label.shape} does not match image {image.shape}")
    check_label_values(label, (0, 1), label_path)
