"""Shared helpers for every converter: validation errors, atomic writes, datalists and splits.

Every converter validates *all* of its input before it writes anything, and writes through
:func:`atomic_dir` / :func:`atomic_write_json`, so a failure never leaves a half-written site folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "DataValidationError",
    "atomic_dir",
    "atomic_write_json",
    "check_inside_root",
    "load_nifti",
    "check_label_values",
    "split_by_fractions",
    "write_site_datalist",
    "site_names",
    "progress",
]


class DataValidationError(ValueError):
    """Raised when raw or converted data is unusable; the message names the file and the field."""


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; rename it into place only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


def atomic_write_json(path: str | os.PathLike, obj: object) -> Path:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def split_by_fractions(
    ids: Sequence[str], fractions: Sequence[float], seed: int, name: str = "cases"
) -> list[list[str]]:
    """Deterministically shuffle ``ids`` by ``seed`` and cut into consecutive parts of the given fractions.

    Each part with a positive fraction gets at least one id (raises when there are too few ids).
    """
    ids = sorted(ids)
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must sum to 1, got {list(fractions)}")
    wanted = sum(f > 0 for f in fractions)
    if len(ids) < wanted:
        raise DataValidationError(f"{name}: need at least {wanted} cases to split {list(fractions)}, got {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    counts = [int(round(f * len(ids))) if f > 0 else 0 for f in fractions]
    for i, f in enumerate(fractions):  # every non-empty split keeps at least one case
        if f > 0 and counts[i] == 0:
            counts[i] = 1
    while sum(counts) > len(ids):
        counts[int(np.argmax(counts))] -= 1
    counts[int(np.argmax(fractions))] += len(ids) - sum(counts)
    parts, start = [], 0
    for c in counts:
        parts.append(shuffled[start : start + c])
        start += c
    return parts


def write_site_datalist(
    path: str | os.PathLike,
    data_root: str | os.PathLike,
    splits: dict[str, list[dict]],
    description: str = "",
) -> Path:
    """Validate and write one site's decathlon-style datalist (``training``/``validation``/``testing``).

    Every string value that names a file must exist under ``data_root``; ``training`` must be non-empty.
    """
    for key in splits:
        if key not in ("training", "validation", "testing"):
            raise ValueError(f"unknown datalist split {key!r}")
    if not splits.get("training"):
        raise DataValidationError(f"datalist {str(path)!r}: site has no training cases")
    for split, items in splits.items():
        for i, item in enumerate(items):
            for field, value in item.items():
                if field in ("image", "label") or field.endswith("_path"):
                    full = check_inside_root(value, data_root, f"{split}[{i}].{field}")
                    if not full.exists():
                        raise DataValidationError(f"{split}[{i}].{field}: {str(full)!r} does not exist")
    payload = {"description": description, **{k: splits.get(k, []) for k in ("training", "validation", "testing")}}
    return atomic_write_json(path, payload)


def site_names(n: int) -> list[str]:
    """NVFlare's simulator names clients ``site-1 .. site-N``; datalists use the same names."""
    return [f"site-{i}" for i in range(1, n + 1)]


def progress(items, desc: str, every: int = 0):
    """Yield from ``items`` printing ``desc i/n`` lines (about ten per loop, or every ``every`` items)."""
    items = list(items)
    n = len(items)
    step = every or max(1, n // 10)
    for i, item in enumerate(items, 1):
        yield item
        if i % step == 0 or i == n:
            print(f"  {desc}: {i}/{n}", flush=True)
