"""Load one converted FedMRI slice and turn it into a (zero-filled input, target) pair with the site's fixed mask.

The converted files (``data_prep.fedmri``) hold ``kspace`` complex64 ``[slices, H, W]`` and ``target`` float32;
each datalist item names the file (``image``), the slice index (``slice``), its ``volume`` and ``source_type``
(measured k-space or k-space simulated from magnitude images). :func:`check_kspace_file` validates a file before
any training, naming the file and the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from src.data.validation import DataValidationError
from src.transforms.kspace import center_crop, make_reconstruction_pair

__all__ = ["LoadReconstructionSlice", "check_kspace_file", "MEASURED_SOURCE_TYPES"]

#: source types whose k-space was measured (the others were simulated from magnitude images)
MEASURED_SOURCE_TYPES = frozenset({"fastmri_singlecoil_kspace"})


def check_kspace_file(path: str | Path, slices: list[int] | None = None) -> tuple[int, int, int]:
    """Validate one converted file: ``kspace`` present, complex, 3-D ``[slices, H, W]``, finite; slice indices in
    range. Returns the k-space shape.

    Raises:
        DataValidationError: naming the file and what is wrong.
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise DataValidationError(f"{str(path)!r}: cannot open as h5: {e}") from e
    with f:
        if "kspace" not in f:
            raise DataValidationError(f"{str(path)!r}: no 'kspace' dataset (has {sorted(f.keys())})")
        ds = f["kspace"]
        if ds.dtype.kind != "c":
            raise DataValidationError(f"{str(path)!r}: 'kspace' must be complex, got dtype {ds.dtype}")
        if ds.ndim != 3:
            raise DataValidationError(f"{str(path)!r}: 'kspace' must be 3-D [slices, H, W], got shape {ds.shape}")
        bad = [s for s in (slices or []) if not 0 <= s < ds.shape[0]]
        if bad:
            raise DataValidationError(f"{str(path)!r}: slice indices {bad[:5]} outside 0..{ds.shape[0] - 1}")
        data = ds[()]
        if not np.isfinite(data).all():
            raise DataValidationError(f"{str(path)!r}: 'kspace' contains {int((~np.isfinite(data)).sum())} "
                                      f"NaN/Inf values")
        return tuple(int(v) for v in ds.shape)


class LoadReconstructionSlice:
    """Datalist item -> ``{"image": (1,H,W), "label": (1,H,W), "mean", "std", "volume", "slice", "measured"}``.

    Args:
        mask_for: ``(H, W) -> mask``; the site's fixed mask for k-space of that shape (cached by the caller).
        crop: optional centre crop of the image at load time (the mask then applies to the cropped k-space).
    """

    def __init__(self, mask_for: Callable[[tuple[int, int]], torch.Tensor], crop: int | None = None):
        self.mask_for, self.crop = mask_for, crop

    def __call__(self, item: Mapping) -> dict:
        import h5py

        from src.transforms.kspace import fft2c, ifft2c

        with h5py.File(item["image"], "r") as f:
            kspace = torch.from_numpy(np.asarray(f["kspace"][int(item["slice"])]))
        if self.crop is not None and min(kspace.shape[-2:]) > self.crop:
            kspace = fft2c(center_crop(ifft2c(kspace), (self.crop, self.crop)))
        mask = self.mask_for(tuple(kspace.shape[-2:]))
        pair = make_reconstruction_pair(kspace.to(torch.complex64), mask)
        return {
            "image": pair.input[None].float(), "label": pair.target[None].float(),
            "mean": pair.mean.reshape(1).float(), "std": pair.std.reshape(1).float(),
            "volume": str(item.get("volume", Path(str(item["image"])).stem)), "slice": int(item["slice"]),
            "measured": float(item.get("source_type") in MEASURED_SOURCE_TYPES),
        }
