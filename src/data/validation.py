"""Input validation shared by converters (``data_prep``) and learners: errors name the file and the field."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["DataValidationError", "check_inside_root", "load_nifti", "check_label_values"]


class DataValidationError(ValueError):
    """Raised when raw or converted data is unusable; the message names the file and the field."""



def check_inside_root(relative: str, data_root: str | os.PathLike, field: str) -> Path:
    """Return ``data_root/relative`` after checking it neither is absolute nor escapes the root."""
    if os.path.isabs(relative):
        raise DataValidationError(f"{field}: path {relative!r} must be relative to the data root {str(data_root)!r}")
    root = Path(data_root).resolve()
    full = (root / relative).resolve()
    if root != full and root not in full.parents:
        raise DataValidationError(f"{field}: path {relative!r} escapes the data root {str(root)!r}")
    return full


def load_nifti(path: str | os.PathLike, field: str = "image"):
    """Load a NIfTI file fully (catching truncation now, not mid-training); return (array, affine, zooms)."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataValidationError(f"{field}: file {str(path)!r} does not exist")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for corrupt/truncated gzip or headers
        raise DataValidationError(f"{field}: cannot read NIfTI {str(path)!r}: {e}") from e
    if not np.all(np.isfinite(data)):
        raise DataValidationError(f"{field}: NIfTI {str(path)!r} contains NaN or Inf values")
    return data, img.affine, tuple(float(z) for z in img.header.get_zooms())


def check_label_values(label: np.ndarray, allowed: Sequence[int], path: str | os.PathLike) -> None:
    """Raise if ``label`` holds values outside ``allowed``, naming the file and the offending values."""
    values = np.unique(label)
    bad = sorted(set(values.tolist()) - set(allowed))
    if bad:
        raise DataValidationError(
            f"label: {str(path)!r} has values {bad[:10]} outside the expected set {sorted(allowed)}"
        )
