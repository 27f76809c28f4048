"""Checks of a site's converted cardiac datalist (ACDC / M&Ms frames) before any training, file named on failure."""

from __future__ import annotations

from collections.abc import Mapping

from src.data.validation import DataValidationError, check_label_values, load_nifti

__all__ = ["CARDIAC_LABELS", "PHASES", "check_cardiac_datalist"]

CARDIAC_LABELS = (0, 1, 2, 3)  # background, LV, MYO, RV
PHASES = ("ED", "ES")


def check_cardiac_datalist(datalist: Mapping[str, list[dict]], site: str = "site") -> None:
    """Every subject has an ED and an ES frame; every image and label is 3-D (H, W, Z), same shape; labels in 0..3.

    Raises :class:`DataValidationError` naming the site, split, subject and file.
    """
    for split, items in datalist.items():
        phases: dict[str, dict[str, str]] = {}
        for i, item in enumerate(items):
            where = f"{site}: {split}[{i}]"
            for key in ("image", "label", "subject", "phase"):
                if key not in item:
                    raise DataValidationError(f"{where} has no {key!r} field")
            if item["phase"] not in PHASES:
                raise DataValidationError(
                    f"{where}: phase {item['phase']!r} of {item['image']!r} is not one of {PHASES}")
            seen = phases.setdefault(str(item["subject"]), {})
            if item["phase"] in seen:
                raise DataValidationError(f"{where}: subject {item['subject']!r} has two {item['phase']} frames "
                                          f"({seen[item['phase']]!r} and {item['image']!r})")
            seen[item["phase"]] = str(item["image"])
            image, _, _ = load_nifti(item["image"], f"{where}.image")
            label, _, _ = load_nifti(item["label"], f"{where}.label")
            for array, path in ((image, item["image"]), (label, item["label"])):
                if array.ndim != 3:
                    raise DataValidationError(
                        f"{where}: {str(path)!r} is {array.ndim}-D with shape {array.shape}; expected one 3-D "
                        "(H, W, Z) frame (convert 4-D cine stacks with data_prep.acdc / data_prep.mnms)")
            if image.shape != label.shape:
                raise DataValidationError(f"{where}: label {str(item['label'])!r} shape {label.shape} does not match "
                                          f"image {str(item['image'])!r} shape {image.shape}")
            check_label_values(label, CARDIAC_LABELS, item["label"])
        for subject, seen in phases.items():
            missing = [p for p in PHASES if p not in seen]
            if missing:
                raise DataValidationError(f"{site}: {split}: subject {subject!r} has no {missing[0]} frame "
                                          f"(only {next(iter(seen.values()))!r})")
