"""Input validation shared by converters (``data_prep``) and learners: errors name the file and the field."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where it is used: a job's --help and pre-flight need none
    import numpy as np

__all__ = [
    "DataValidationError",
    "check_inside_root",
    "load_nifti",
    "check_label_values",
    "check_same_grid",
    "check_cases_disjoint",
]


class DataValidationError(ValueError):
    """Raised when raw or converted data is unusable; the message names the file and the field."""


def check_inside_root(relative: str, data_root: str | os.PathLike, field: str) -> Path:
    """Return ``data_root/relative`` after checking it is a string, not absolute, and (symlinks resolved)
    inside the root: a list or a link pointing out would otherwise let a datalist read any file."""
    if not isinstance(relative, str):
        raise DataValidationError(
            f"{field}: path must be a string relative to the data root, got {type(relative).__name__} {relative!r}"
        )
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
    import numpy as np

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
    import numpy as np

    values = np.unique(label)
    bad = sorted(set(values.tolist()) - set(allowed))
    if bad:
        raise DataValidationError(
            f"label: {str(path)!r} has values {bad[:10]} outside the expected set {sorted(allowed)}"
        )


def check_same_grid(
    image_shape: Sequence[int],
    label_shape: Sequence[int],
    image_affine: np.ndarray,
    label_affine: np.ndarray,
    image_path: str | os.PathLike,
    label_path: str | os.PathLike,
    atol: float = 1e-3,
) -> None:
    """Raise unless image and label share the spatial shape and the voxel-to-world affine.

    A label with a shifted or flipped affine lies elsewhere in the patient than its image, even when the arrays
    have the same shape; training on it teaches the wrong anatomy, so it is rejected, never resampled.
    """
    import numpy as np

    if tuple(image_shape) != tuple(label_shape):
        raise DataValidationError(
            f"label: {str(label_path)!r} shape {tuple(label_shape)} does not match image {str(image_path)!r} "
            f"shape {tuple(image_shape)}"
        )
    a, b = np.asarray(image_affine, dtype=np.float64), np.asarray(label_affine, dtype=np.float64)
    if a.shape != b.shape or not np.allclose(a, b, atol=atol):
        diff = float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
        raise DataValidationError(
            f"label: {str(label_path)!r} affine differs from image {str(image_path)!r} by up to {diff:.4g} "
            f"(tolerance {atol}): the label lies elsewhere in the patient"
        )


def check_cases_disjoint(
    lists: Mapping[str, Mapping[str, Sequence[Mapping]]],
    case_key: Callable[[Mapping], object],
    source: str = "datalists",
) -> None:
    """Raise if one case (``case_key(item)``) is listed in two splits or two sites (test leakage).

    Args:
        lists: ``{datalist name: {split: items}}``; entries of one case within one split (slices) are fine.
        case_key: the case an entry belongs to (its image, subject or volume).
        source: the folder, for the message.
    """
    where: dict[object, str] = {}
    for name, splits in lists.items():
        for split, items in splits.items():
            for i, item in enumerate(items):
                key = case_key(item)
                here = f"{name}:{split}"
                first = where.setdefault(key, here)
                if first != here:
                    raise DataValidationError(
                        f"{source}: {name} {split}[{i}]: case {key!r} is also in {first} "
                        "(a case in two splits or two sites leaks test data)"
                    )
