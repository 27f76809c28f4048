"""The FedICRA release layout: what its folders and files hold, how to list, read and check them.

Two equivalent layouts are published (llmir/FedICRA), one root per task:

- h5: ``<root>/Domain{k}/{train,test}/<case>.h5`` with datasets ``image`` (FAZ (H, W); fundus (3, H, W);
  float in [0, 1]), ``mask`` (class indices) and the sparse maps of :data:`SPARSE_FORMS` (train files);
- PNG tree: ``<root>/Domain{k}/train/{imgs,mask,scr,scr_n,keypoint,block,box}/<case>.png`` and
  ``<root>/Domain{k}/test/{imgs,mask}/<case>.png``; images 8-bit grey (FAZ) or RGB (fundus), divided by 255;
  label PNGs 8-bit (``L`` or palette ``P``) holding the class indices themselves (unannotated = number of
  classes). The release's PNG encoding could not be inspected here (binary files); a copy whose label PNGs
  use another encoding (e.g. 0/255) is rejected by :func:`read_raw_case` with the offending values.

Classes: FAZ 0 background, 1 FAZ; fundus 0 background, 1 cup, 2 disc rim (disc = label >= 1).
Both layouts may also hold extra folders (the PNG tree has ``img_overload`` previews); they are ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.common import DataValidationError, check_label_values

__all__ = [
    "TaskSpec",
    "TASKS",
    "SPARSE_FORMS",
    "PNG_SPARSE_DIRS",
    "PAPER_SUP_TYPES",
    "CODE_SUP_TYPES",
    "RawCase",
    "resolve_sup_types",
    "discover_domains",
    "detect_layout",
    "list_cases",
    "read_raw_case",
    "load_case",
]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    num_classes: int  # the ignore value of sparse maps equals this
    in_channels: int
    h5_dir: str  # conventional folder name of the h5 root
    png_dir: str  # conventional folder name of the PNG-tree root


TASKS = {
    "faz": TaskSpec("faz", num_classes=2, in_channels=1, h5_dir="FAZ_h5", png_dir="FAZ"),
    "odoc": TaskSpec("odoc", num_classes=3, in_channels=3, h5_dir="ODOC_h5", png_dir="ODOC"),
}
# the form tables and the reader live in src/ (the learner inside an exported job carries only src/)
from src.data.fedicra import (  # noqa: E402
    CODE_SUP_TYPES,
    PAPER_SUP_TYPES,
    PNG_SPARSE_DIRS,
    SPARSE_FORMS,
)
from src.data.fedicra import read_h5 as _read_h5  # noqa: E402
from src.data.fedicra import read_png as _read_png  # noqa: E402

_DOMAIN_RE = re.compile(r"^Domain(\d+)$")


@dataclass(frozen=True)
class RawCase:
    """One image of the release. ``label`` is the file holding the training label (sparse map for train,
    ``mask`` for test); for h5 all three paths are the same file and ``label_key`` names the dataset."""

    domain: int
    split: str
    case_id: str
    image: Path
    label: Path
    mask: Path
    label_key: str
    layout: str


def resolve_sup_types(spec: str | Sequence[str], task: str, n_sites: int) -> tuple[str, ...]:
    """``paper``, ``code`` or one sparse form per site (a sequence or a comma-separated string)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    if isinstance(spec, str) and spec in ("paper", "code"):
        table = PAPER_SUP_TYPES if spec == "paper" else CODE_SUP_TYPES
        if n_sites > len(table[task]):
            raise ValueError(f"sup_types {spec!r} names {len(table[task])} sites, data has {n_sites}; list them")
        return table[task][:n_sites]
    forms = tuple(s.strip() for s in spec.split(",")) if isinstance(spec, str) else tuple(spec)
    bad = [f for f in forms if f not in SPARSE_FORMS + ("mask",)]
    if bad:
        raise ValueError(f"sup_types: unknown form(s) {bad}; expected 'paper', 'code' or a list of {SPARSE_FORMS}")
    if len(forms) != n_sites:
        raise ValueError(f"sup_types: {len(forms)} form(s) {list(forms)} given for {n_sites} sites")
    return forms


def discover_domains(root: str | os.PathLike) -> list[int]:
    """Sorted ``k`` of ``root/Domain{k}``; they must be 1..N without gaps."""
    root = Path(root)
    if not root.is_dir():
        raise DataValidationError(f"data root: {str(root)!r} is not a directory")
    found = sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _DOMAIN_RE.match(p.name)))
    if not found:
        raise DataValidationError(f"data root: {str(root)!r} has no Domain<k> folders")
    if found != list(range(1, len(found) + 1)):
        raise DataValidationError(f"data root: {str(root)!r} has Domain folders {found}, expected 1..{len(found)}")
    return found


def detect_layout(root: str | os.PathLike) -> str:
    """``h5`` if ``Domain1/train`` holds ``*.h5`` files, ``png`` if it holds an ``imgs`` folder."""
    train = Path(root) / "Domain1" / "train"
    if any(train.glob("*.h5")):
        return "h5"
    if (train / "imgs").is_dir():
        return "png"
    raise DataValidationError(f"layout: {str(train)!r} holds neither *.h5 files nor an imgs/ folder")


def list_cases(root: str | os.PathLike, domain: int, split: str, layout: str, sup_type: str) -> list[RawCase]:
    """List one split of one domain, checking that every file the split needs exists."""
    base = Path(root) / f"Domain{domain}" / split
    if not base.is_dir():
        raise DataValidationError(f"Domain{domain}/{split}: folder {str(base)!r} is missing")
    label_key = sup_type if split == "train" else "mask"
    if layout == "h5":
        files = sorted(base.glob("*.h5"))
        cases = [RawCase(domain, split, f.stem, f, f, f, label_key, "h5") for f in files]
    elif layout == "png":
        imgs = base / "imgs"
        if not imgs.is_dir():
            raise DataValidationError(f"Domain{domain}/{split}: folder {str(imgs)!r} is missing")
        label_dir = base / ("mask" if label_key == "mask" else PNG_SPARSE_DIRS[label_key])
        cases = []
        for f in sorted(imgs.glob("*.png")):
            case = RawCase(domain, split, f.stem, f, label_dir / f.name, base / "mask" / f.name, label_key, "png")
            for field, path in (("mask", case.mask), (label_key, case.label)):
                if not path.is_file():
                    raise DataValidationError(f"{field}: {str(path)!r} is missing (image {str(f)!r} has no {field})")
            cases.append(case)
    else:
        raise ValueError(f"layout must be 'h5' or 'png', got {layout!r}")
    if not cases:
        raise DataValidationError(f"Domain{domain}/{split}: {str(base)!r} holds no {layout} cases (empty site)")
    return cases


def _check_image(image: np.ndarray, spec: TaskSpec, path: Path) -> np.ndarray:
    """Return the image as float32 (C, H, W) after checking rank, dtype, finiteness and range."""
    if not np.issubdtype(image.dtype, np.floating):
        raise DataValidationError(f"image: {str(path)!r} has dtype {image.dtype}, expected float in [0, 1]")
    expected = 2 if spec.in_channels == 1 else 3
    if image.ndim != expected or (expected == 3 and image.shape[0] != spec.in_channels):
        want = "(H, W)" if expected == 2 else f"({spec.in_channels}, H, W)"
        raise DataValidationError(f"image: {str(path)!r} has shape {image.shape}, expected {want} for {spec.name}")
    if not np.all(np.isfinite(image)):
        raise DataValidationError(f"image: {str(path)!r} contains NaN or Inf values")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise DataValidationError(f"image: {str(path)!r} intensities span [{lo:.3g}, {hi:.3g}], expected [0, 1]")
    return (image[None] if expected == 2 else image).astype(np.float32)


def _check_label(label: np.ndarray, field: str, allowed: Sequence[int], hw: tuple[int, int], path: Path) -> np.ndarray:
    if np.issubdtype(label.dtype, np.floating):  # tolerated when every value is a whole number (0.0, 1.0, ...)
        if not (np.all(np.isfinite(label)) and np.array_equal(label, np.round(label))):
            raise DataValidationError(
                f"{field}: {str(path)!r} has dtype {label.dtype} with non-integer values, expected class indices"
            )
    elif not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
        raise DataValidationError(f"{field}: {str(path)!r} has dtype {label.dtype}, expected integer class indices")
    if label.shape != hw:
        raise DataValidationError(f"{field}: {str(path)!r} has shape {label.shape}, image is {hw}")
    try:
        check_label_values(label, allowed, path)
    except DataValidationError as e:
        raise DataValidationError(f"{field}: {e}") from e
    return label.astype(np.int64)


def read_raw_case(case: RawCase, task: str) -> dict[str, np.ndarray]:
    """Read and check one case: ``image`` float32 (C, H, W) in [0, 1], ``label`` and ``mask`` int64 (H, W).

    Raises :class:`DataValidationError` naming the file and the field for a missing dataset/file, a wrong
    dtype, rank or shape, NaN/Inf, intensities outside [0, 1], label values outside the set, or a sparse
    map without a single annotated pixel.
    """
    spec = TASKS[task]
    if case.layout == "h5":
        keys = ["image", "mask"] + ([case.label_key] if case.label_key != "mask" else [])
        raw = _read_h5(case.image, keys)
        image = _check_image(raw["image"], spec, case.image)
        raw_label = raw[case.label_key]
    else:
        pixels = _read_png(case.image, "image", ("L",) if spec.in_channels == 1 else ("RGB",))
        image = pixels.astype(np.float32) / 255.0
        image = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        raw = {"mask": _read_png(case.mask, "mask", ("L", "P"))}
        raw_label = raw["mask"] if case.label_key == "mask" else _read_png(case.label, case.label_key, ("L", "P"))
    hw = tuple(image.shape[1:])
    mask = _check_label(raw["mask"], "mask", range(spec.num_classes), hw, case.mask)
    if case.label_key == "mask":
        return {"image": image, "label": mask, "mask": mask}
    label = _check_label(raw_label, case.label_key, range(spec.num_classes + 1), hw, case.label)
    if np.all(label == spec.num_classes):
        raise DataValidationError(f"{case.label_key}: {str(case.label)!r} has no annotated pixel")
    return {"image": image, "label": label, "mask": mask}


def load_case(entry: dict, data_root: str | os.PathLike | None = None) -> dict:
    """Load one datalist entry into arrays (:func:`src.data.fedicra.load_item`)."""
    from src.data.fedicra import load_item

    return load_item(entry, data_root)
