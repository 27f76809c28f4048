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

from src.data.validation import DataValidationError, check_inside_root, check_label_values, load_nifti

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
    n = len(ids)
    counts = [int(np.floor(f * n)) for f in fractions]
    for i, f in enumerate(fractions):  # every split with a positive fraction keeps at least one case
        if f > 0 and counts[i] == 0:
            counts[i] = 1
    while sum(counts) > n:
        counts[int(np.argmax(counts))] -= 1
    remainders = sorted(range(len(fractions)), key=lambda i: -(fractions[i] * n - np.floor(fractions[i] * n)))
    for k in range(n - sum(counts)):  # largest-remainder rounding, ties to the earlier split
        counts[remainders[k % len(remainders)]] += 1
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
                if isinstance(value, str) and (field in ("image", "label") or field.endswith("_path")):
                    full = check_inside_root(value, data_root, f"{split}[{i}].{field}")
                    if not full.exists():
                        raise DataValidationError(f"{split}[{i}].{field}: {str(full)!r} does not exist")
    payload = {"description": description, **{k: splits.get(k, []) for k in ("training", "validation", "testing")}}
    return atomic_write_json(path, payload)


def site_names(n: int) -> list[str]:
    """NVFlare's simulator names clients ``site-1 .. site-N``; datalists use the same names."""
    return [f"site-{i}" for i in range(1, n + 1)]


def progress(items, desc: str, every: int = 0):
    """Yield from ``items`` printing ``desc i/n`` lines (about four per loop, or every ``every`` items)."""
    items = list(items)
    n = len(items)
    step = every or max(1, -(-n // 4))
    for i, item in enumerate(items, 1):
        yield item
        if i % step == 0 or i == n:
            print(f"  {desc}: {i}/{n}", flush=True)
