"""FedICRA items at a site: the sparse-label forms, reading one datalist entry, switching its label form, checks.

The learner runs inside an exported job whose ``custom/`` folder carries only ``src/``, so the reader lives here
and :mod:`data_prep.fedicra_layout` (the converter) imports the form tables and :func:`load_item` from this module.

A datalist entry (written by ``python -m data_prep.fedicra convert``) names an h5 file (``image`` and
``label_key`` datasets of the same file) or a PNG pair (``Domain{k}/train/imgs/<case>.png`` and the form's folder).
:func:`with_label_form` points a training entry at another sparse form of the same case (every train image of
the release has all five forms and the dense ``mask``), which is how ``--label-form SITE:FORM`` and the fully
supervised upper bound (``mask``) work without reconverting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from src.data.validation import DataValidationError

if TYPE_CHECKING:  # numpy is imported where it is used: a job's --help and pre-flight need none
    import numpy as np

__all__ = [
    "SPARSE_FORMS",
    "LABEL_FORMS",
    "PNG_SPARSE_DIRS",
    "PAPER_SUP_TYPES",
    "CODE_SUP_TYPES",
    "TASK_CLASSES",
    "TASK_CHANNELS",
    "load_item",
    "with_label_form",
    "check_item",
]

SPARSE_FORMS = ("scribble", "scribble_noisy", "keypoint", "block", "box")
#: forms a training entry may use: the five sparse maps or the dense mask (fully supervised upper bound)
LABEL_FORMS = SPARSE_FORMS + ("mask",)
PNG_SPARSE_DIRS = {"scribble": "scr", "scribble_noisy": "scr_n", "keypoint": "keypoint", "block": "block", "box": "box"}
# Which sparse form each site (Domain1..5) trains with. The paper's dataset table (repo image/dataset.png) and
# the reference code's configs disagree; the paper's table is the default, the code's is one value away.
PAPER_SUP_TYPES = {
    "faz": ("scribble", "keypoint", "block", "box", "scribble_noisy"),
    "odoc": ("scribble", "scribble_noisy", "box", "keypoint", "block"),
}
CODE_SUP_TYPES = {
    "faz": ("scribble_noisy", "keypoint", "block", "box", "scribble"),
    "odoc": ("scribble", "scribble_noisy", "scribble_noisy", "keypoint", "block"),
}
TASK_CLASSES = {"faz": 2, "odoc": 3}
TASK_CHANNELS = {"faz": 1, "odoc": 3}


def read_h5(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in keys if k not in f]
            if missing:
                raise DataValidationError(f"{missing[0]}: dataset missing in {str(path)!r} (has {sorted(f.keys())})")
            return {k: f[k][()] for k in keys}
    except OSError as e:
        raise DataValidationError(f"image: cannot read h5 file {str(path)!r}: {e}") from e


def read_png(path: Path, field: str, modes: Sequence[str]) -> np.ndarray:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as pic:
            pic.load()
            if pic.mode not in modes:
                raise DataValidationError(f"{field}: {str(path)!r} has PNG mode {pic.mode!r}, expected one of {modes}")
            return np.asarray(pic)
    except (OSError, UnidentifiedImageError) as e:
        raise DataValidationError(f"{field}: cannot read PNG {str(path)!r}: {e}") from e


def load_item(entry: Mapping, data_root: str | os.PathLike | None = None) -> dict:
    """Load one datalist entry into arrays: ``image`` float32 (C, H, W) in [0, 1], ``label`` int64 (H, W).

    ``entry`` has paths relative to ``data_root`` or already absolute (as ``load_decathlon_datalist`` returns
    them). Other keys pass through, so this can be the first callable of a MONAI ``Compose``.
    """
    import numpy as np

    fmt = entry.get("format")
    if fmt not in ("h5", "png"):
        raise DataValidationError(f"format: entry {entry.get('case_id')!r} has format {fmt!r}, expected h5 or png")
    root = Path(data_root) if data_root is not None else Path()
    image_path, label_path = root / entry["image"], root / entry["label"]
    key = entry.get("label_key", "mask")
    if fmt == "h5":
        raw = read_h5(image_path, ["image", key] if image_path == label_path else ["image"])
        image = raw["image"].astype(np.float32)
        label = raw[key] if key in raw else read_h5(label_path, [key])[key]
        image = image[None] if image.ndim == 2 else image
    else:
        pixels = read_png(image_path, "image", ("L", "RGB"))
        image = pixels.astype(np.float32) / 255.0
        image = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        label = read_png(label_path, key, ("L", "P"))
    return {**entry, "image": np.ascontiguousarray(image), "label": label.astype(np.int64)}


def with_label_form(entry: Mapping, form: str) -> dict:
    """The same case labelled with ``form`` (a sparse form or ``mask``): h5 -> another dataset of the same file,
    PNG -> the form's sibling folder (``scr``, ``scr_n``, ``keypoint``, ``block``, ``box``, ``mask``)."""
    if form not in LABEL_FORMS:
        raise ValueError(f"label form must be one of {LABEL_FORMS}, got {form!r}")
    out = dict(entry)
    if entry.get("label_key", "mask") == form:
        return out
    out["label_key"], out["sup_type"] = form, form
    if entry.get("format") == "png":
        label = Path(entry["label"])
        out["label"] = str(label.parent.parent / ("mask" if form == "mask" else PNG_SPARSE_DIRS[form]) / label.name)
    return out


def check_item(entry: Mapping, num_classes: int, in_channels: int, sparse: bool, where: str) -> None:
    """Fail before training on an unusable entry, naming the file: unreadable, missing label dataset/file, wrong
    channel count, image/label size mismatch, label values outside ``{0..C-1}`` (plus ``C`` = ignore if sparse),
    or a sparse map without one annotated pixel."""
    import numpy as np

    if entry.get("format") == "png" and not Path(entry["label"]).is_file():
        raise DataValidationError(f"{where}: label {entry.get('label_key')!r}: {str(entry['label'])!r} is missing")
    try:
        arrays = load_item(entry)
    except DataValidationError as e:
        raise DataValidationError(f"{where}: {e}") from e
    image, label = arrays["image"], arrays["label"]
    if image.shape[0] != in_channels:
        raise DataValidationError(f"{where}: image {str(entry['image'])!r} has {image.shape[0]} channel(s), "
                                  f"expected {in_channels}")
    if tuple(label.shape) != tuple(image.shape[1:]):
        raise DataValidationError(f"{where}: label {str(entry['label'])!r} ({entry.get('label_key')}) has shape "
                                  f"{tuple(label.shape)}, image {str(entry['image'])!r} is {tuple(image.shape[1:])}")
    allowed = set(range(num_classes)) | ({num_classes} if sparse else set())
    bad = sorted(set(np.unique(label).tolist()) - allowed)
    if bad:
        raise DataValidationError(f"{where}: label {str(entry['label'])!r} ({entry.get('label_key')}) has values "
                                  f"{bad[:5]} outside {sorted(allowed)} (classes" + (", ignore)" if sparse else ")"))
    if sparse and np.all(label == num_classes):
        raise DataValidationError(f"{where}: label {str(entry['label'])!r} ({entry.get('label_key')}) has no "
                                  "annotated pixel")
