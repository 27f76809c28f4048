"""What the ACDC and M&Ms converters share: label convention, intensity and spacing preprocessing, checks, output.

One label convention for every cardiac data set in the bundle: 0 background, 1 LV blood pool, 2 myocardium,
3 RV blood pool (the reference code's convention; raw ACDC uses 1 RV, 3 LV, raw M&Ms already uses 1 LV, 3 RV).

Preprocessing follows the reference code (cherise215/Cooperative_Training_and_Latent_Space_Data_Augmentation,
``acdc_preprocess.py``): per 3-D frame, clip intensities to the 2nd-98th percentile and rescale to [0, 1], then
resample in-plane to 1.36719 mm keeping the slice spacing (linear for images, nearest for labels). Resampling
uses scipy (the reference uses SimpleITK), keeping the volume's orientation and origin.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from data_prep.common import (
    DataValidationError,
    check_inside_root,
    check_label_values,
    check_same_grid,
    load_nifti,
)

__all__ = [
    "LABELS",
    "ALLOWED_LABELS",
    "TARGET_SPACING",
    "ACDC_TO_TARGET",
    "MNMS_TO_TARGET",
    "remap_labels",
    "clip_and_rescale",
    "resample_in_plane",
    "check_image_label_pair",
    "CardiacFrame",
    "write_frame",
    "validate_datalists",
]

LABELS = {"background": 0, "LV": 1, "MYO": 2, "RV": 3}
ALLOWED_LABELS = (0, 1, 2, 3)
TARGET_SPACING = 1.36719  # mm, in-plane, as in the paper's preprocessing
# lookup tables raw value -> target value
ACDC_TO_TARGET = np.array([0, 3, 2, 1], np.uint8)  # raw ACDC: 1 RV, 2 MYO, 3 LV
MNMS_TO_TARGET = np.array([0, 1, 2, 3], np.uint8)  # raw M&Ms: 1 LV, 2 MYO, 3 RV (already the target)
_SPACING_RTOL = 1e-3


def remap_labels(label: np.ndarray, lut: np.ndarray, path: str | os.PathLike = "label") -> np.ndarray:
    """Map raw label values through ``lut`` (index = raw value), after checking they are all in range.

    Args:
        label: integer-valued label array of any shape.
        lut: 1-D array, ``lut[raw] = target``.
        path: file name for the error message.
    """
    values = np.asarray(label)
    if not np.all(values == np.round(values)):
        raise DataValidationError(f"label: {str(path)!r} has non-integer values")
    check_label_values(values.astype(np.int64), range(len(lut)), path)
    return lut[values.astype(np.int64)]


def clip_and_rescale(image: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """Clip to the ``low``-``high`` percentiles of the whole array and rescale to [0, 1] (float32).

    A constant image maps to zeros (the reference divides by ``1e-10 + p98 - p2`` to the same effect).
    """
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        return np.zeros_like(image)
    return ((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def resample_in_plane(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, spacing: float = TARGET_SPACING
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a 3-D image (linear) and its label (nearest) to ``spacing`` mm in-plane, slices unchanged.

    Voxel (0, 0, z) keeps its world position and the axes keep their directions (as MONAI's ``Spacing`` and the
    reference's SimpleITK resampling do); the new in-plane size is ``round(n * old_spacing / spacing)``. Written
    with scipy's ``map_coordinates`` rather than MONAI's ``Spacing`` because importing MONAI costs ~10 s on the
    2-core CI machine, more than the whole conversion; a test checks both agree.

    Args:
        image: (H, W, Z) float array.
        label: (H, W, Z) integer array on the same grid.
        affine: 4x4 voxel-to-world affine shared by both (its column norms are the spacings).
        spacing: target in-plane spacing in mm.

    Returns:
        (image float32, label uint8, new affine); both arrays have the same new shape.
    """
    from scipy import ndimage

    if spacing <= 0:
        raise ValueError(f"spacing must be positive, got {spacing!r}")
    affine = np.asarray(affine, dtype=np.float64)
    old = np.linalg.norm(affine[:3, :2], axis=0)
    ratio = spacing / old  # input voxels per output voxel, per in-plane axis
    size = [max(1, int(round(n / r))) for n, r in zip(image.shape[:2], ratio)]
    grid = np.meshgrid(np.arange(size[0]) * ratio[0], np.arange(size[1]) * ratio[1], np.arange(image.shape[2]),
                       indexing="ij")
    new_image = ndimage.map_coordinates(np.asarray(image, np.float32), grid, order=1, mode="nearest")
    new_label = ndimage.map_coordinates(np.asarray(label, np.uint8), grid, order=0, mode="nearest")
    new_affine = affine.copy()
    new_affine[:3, :2] = affine[:3, :2] * ratio
    return new_image.astype(np.float32), new_label.astype(np.uint8), new_affine


def check_image_label_pair(
    image_shape: Sequence[int],
    label_shape: Sequence[int],
    image_zooms: Sequence[float],
    label_zooms: Sequence[float],
    image_path: str | os.PathLike,
    label_path: str | os.PathLike,
    ndim: int,
) -> None:
    """Raise unless image and label have rank ``ndim``, the same shape and the same spatial spacing."""
    for shape, path in ((image_shape, image_path), (label_shape, label_path)):
        if len(shape) != ndim:
            raise DataValidationError(f"shape: {str(path)!r} must be {ndim}-D, got shape {tuple(shape)}")
    if tuple(image_shape) != tuple(label_shape):
        raise DataValidationError(
            f"shape: image {str(image_path)!r} {tuple(image_shape)} and label {str(label_path)!r} "
            f"{tuple(label_shape)} differ"
        )
    if not np.allclose(image_zooms[:3], label_zooms[:3], rtol=_SPACING_RTOL):
        raise DataValidationError(
            f"spacing: image {str(image_path)!r} {tuple(image_zooms[:3])} and label {str(label_path)!r} "
            f"{tuple(label_zooms[:3])} differ"
        )


@dataclass(frozen=True)
class CardiacFrame:
    """One annotated 3-D frame (ED or ES) of one subject, as the converters output it.

    Args:
        subject: subject id (ACDC ``patient001``, M&Ms external code).
        phase: ``"ED"`` or ``"ES"``.
        meta: extra datalist fields (group, vendor, centre, source files...).
    """

    subject: str
    phase: str
    meta: dict

    @property
    def image(self) -> str:
        return f"{self.subject}/{self.subject}_{self.phase}.nii.gz"

    @property
    def label(self) -> str:
        return f"{self.subject}/{self.subject}_{self.phase}_gt.nii.gz"

    def entry(self) -> dict:
        """The datalist entry: paths relative to the converted data root."""
        return {"image": self.image, "label": self.label, "subject": self.subject, "phase": self.phase, **self.meta}


def write_frame(
    root: Path, frame: CardiacFrame, image: np.ndarray, label: np.ndarray, affine: np.ndarray, lut: np.ndarray,
    spacing: float = TARGET_SPACING, label_path: str = "label",
) -> tuple[int, ...]:
    """Preprocess one raw frame (remap, clip/rescale, resample) and save it under ``root``; return the new shape."""
    label = remap_labels(label, lut, label_path)
    image = clip_and_rescale(image)
    image, label, new_affine = resample_in_plane(image, label, affine, spacing)
    for array, rel in ((image, frame.image), (label, frame.label)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        nii = nib.Nifti1Image(array, new_affine)
        nii.header.set_xyzt_units("mm")
        nib.save(nii, str(path))
    return tuple(image.shape)


def _load_site_datalist(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataValidationError(f"datalist {str(path)!r}: cannot read JSON: {e}") from e
    if not isinstance(payload, dict) or not payload.get("training"):
        raise DataValidationError(f"datalist {str(path)!r}: field 'training' is missing or empty (empty site)")
    return payload


def validate_datalists(
    datalist_files: Iterable[str | os.PathLike], data_root: str | os.PathLike, check_spacing: float | None = None
) -> int:
    """Check converted datalists end to end; return the number of entries checked.

    Every entry's image/label must stay inside ``data_root``, exist, load without NaNs, match in shape,
    spacing and affine, have labels in {0, 1, 2, 3} (and in-plane spacing ``check_spacing`` when given); each site needs
    training cases; no subject may appear in two splits or two sites (no test leakage).
    """
    files = sorted(Path(f) for f in datalist_files)
    if not files:
        raise DataValidationError("datalists: no datalist files given")
    owner: dict[str, str] = {}
    n = 0
    for path in files:
        payload = _load_site_datalist(path)
        for split in ("training", "validation", "testing"):
            for i, item in enumerate(payload.get(split, [])):
                where = f"{path.name}:{split}[{i}]"
                for field in ("image", "label", "subject"):
                    if field not in item:
                        raise DataValidationError(f"{where}: field {field!r} is missing")
                img_path = check_inside_root(item["image"], data_root, f"{where}.image")
                lab_path = check_inside_root(item["label"], data_root, f"{where}.label")
                image, iaffine, izooms = load_nifti(img_path, f"{where}.image")
                label, laffine, lzooms = load_nifti(lab_path, f"{where}.label")
                check_image_label_pair(image.shape, label.shape, izooms, lzooms, img_path, lab_path, ndim=3)
                check_same_grid(image.shape, label.shape, iaffine, laffine, img_path, lab_path)
                check_label_values(label, ALLOWED_LABELS, lab_path)
                if check_spacing is not None and not np.allclose(izooms[:2], check_spacing, rtol=_SPACING_RTOL):
                    raise DataValidationError(
                        f"{where}.image: in-plane spacing {tuple(izooms[:2])} is not {check_spacing} mm"
                    )
                key = f"{path.name}:{split}"
                if owner.setdefault(item["subject"], key) != key:
                    raise DataValidationError(
                        f"{where}: subject {item['subject']!r} also appears in {owner[item['subject']]}"
                    )
                n += 1
    return n
