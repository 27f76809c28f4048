"""Shared helpers for every converter: validation errors, safe atomic outputs, datalists and splits.

Every converter validates *all* of its input before it writes anything, and writes through
:func:`atomic_dir` / :func:`atomic_write_json`, so a failure never leaves a half-written site folder.

A folder written by :func:`atomic_dir` with an ``owner`` holds a small marker file (:data:`OWNER_MARKER`) naming
the tool that wrote it (synthetic raw layouts, which must look exactly like the release, get it beside them);
such a folder is only ever replaced by the same tool, so a mistyped ``--out`` or ``--datalist-dir`` cannot delete
an input, a shared folder or another tool's output. Datalists are written as one such folder per data set, so a
reconversion to fewer sites removes the stale ``site-N.json`` with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from src.data.validation import (
    DataValidationError,
    check_cases_disjoint,
    check_inside_root,
    check_label_values,
    check_same_grid,
    load_nifti,
)

__all__ = [
    "DataValidationError",
    "UnsafeOutputError",
    "OWNER_MARKER",
    "atomic_dir",
    "check_replaceable",
    "clean_leftovers",
    "read_owner",
    "own_folder",
    "write_owner",
    "atomic_write_json",
    "check_inside_root",
    "check_same_grid",
    "load_nifti",
    "check_label_values",
    "check_cases_disjoint",
    "check_splits_non_empty",
    "split_by_fractions",
    "write_site_datalist",
    "write_datalists",
    "site_names",
    "progress",
]

#: file a tool writes into every folder it owns; JSON ``{"tool": ...}`` (no ``.json`` suffix: validators glob those)
OWNER_MARKER = ".data_prep_output"


class UnsafeOutputError(DataValidationError):
    """An output folder may not be replaced (not written by this tool, or it holds an input).

    A :class:`DataValidationError` so that every converter command line reports it the same way (exit 2).
    """


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings of ``target`` left by a killed run; return them.

    Their names carry the writing process's id; a folder whose process still runs (a concurrent run) is kept.
    """
    target = Path(target)
    prefixes = (f".{target.name}.tmp-", f".{target.name}.old-")
    with_pid = re.compile(rf"^\.{re.escape(target.name)}\.(?:tmp-(\d+)-.+|old-(\d+))$")
    removed = []
    if not target.parent.is_dir():
        return removed
    for path in target.parent.iterdir():
        if not path.name.startswith(prefixes):
            continue
        m = with_pid.match(path.name)
        if m and _pid_alive(int(m.group(1) or m.group(2))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _beside_marker(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}{OWNER_MARKER}")


def _identity(folder: Path) -> list[int]:
    st = folder.stat()
    return [st.st_dev, st.st_ino, st.st_mtime_ns]


def write_owner(folder: str | os.PathLike, owner: str, beside: bool = False) -> Path:
    """Mark ``folder`` as written by ``owner``; return the marker file.

    Inside the folder by default. ``beside=True`` (for synthetic raw layouts, which must look exactly like the real
    release) writes ``.NAME.data_prep_output`` next to it, holding the folder's device, inode and mtime: a folder
    deleted and recreated, or whose top level was changed since, is no longer taken for the tool's own.
    """
    folder = Path(folder)
    if not beside:
        marker = folder / OWNER_MARKER
        marker.write_text(json.dumps({"tool": owner}) + "\n")
        return marker
    return atomic_write_json(_beside_marker(folder), {"tool": owner, "identity": _identity(folder)})


def own_folder(folder: str | os.PathLike, owner: str) -> Path:
    """Create ``folder`` (and its parents) marked as ``owner``'s if it does not exist; return it.

    An existing folder is left unmarked (it may be the user's): ``make clean`` (scripts/clean.py) removes only
    folders a tool marked.
    """
    folder = Path(folder)
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_owner(folder, owner)
    return folder


def read_owner(folder: str | os.PathLike) -> str | None:
    """The tool that wrote ``folder`` according to its marker (inside, or beside and still matching), or None."""
    folder = Path(folder)
    for marker in (folder / OWNER_MARKER, _beside_marker(folder)):
        try:
            meta = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict):
            continue
        if marker.parent == folder or meta.get("identity") == _identity(folder):
            return meta.get("tool")
    return None


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_replaceable(target: str | os.PathLike, owner: str, protect: Iterable[str | os.PathLike] = ()) -> None:
    """Raise :class:`UnsafeOutputError` unless ``owner`` may replace ``target`` as a whole.

    Allowed: a missing or empty folder, or one whose marker names ``owner``. Never allowed: a file, or a folder
    that is or contains one of the ``protect`` paths (the tool's inputs).
    """
    target = Path(target)
    resolved = target.resolve()
    for path in protect:
        if _is_within(Path(path).resolve(), resolved):
            raise UnsafeOutputError(
                f"output {str(target)!r}: refusing to replace it, it holds the input {str(path)!r}; "
                "choose another output folder"
            )
    if not target.exists() and not target.is_symlink():
        return
    if not target.is_dir() or target.is_symlink():
        raise UnsafeOutputError(f"output {str(target)!r} exists and is not a folder; refusing to replace it")
    if not any(target.iterdir()):
        return
    found = read_owner(target)
    if found != owner:
        who = f"was written by {found!r}" if found else f"has no {OWNER_MARKER} marker"
        raise UnsafeOutputError(
            f"output {str(target)!r} is not empty and {who}, not by {owner!r}; refusing to replace it "
            "(remove it yourself or choose another folder)"
        )


@contextlib.contextmanager
def atomic_dir(
    target: str | os.PathLike,
    overwrite: bool = True,
    owner: str | None = None,
    protect: Iterable[str | os.PathLike] = (),
    marker_beside: bool = False,
) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; rename it into place only if the block succeeds.

    Leftover temporary folders of a killed earlier run are removed first. With ``owner`` (a tool name such as
    ``"data_prep.msd_prostate convert"``), an existing ``target`` is replaced only if it is empty or was written
    by the same owner (see :func:`check_replaceable`), and the new folder gets the owner's marker file (beside
    it with ``marker_beside``, see :func:`write_owner`).
    """
    target = Path(target)
    if owner is not None:
        check_replaceable(target, owner, protect)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        if owner is not None and not marker_beside:
            write_owner(tmp, owner)
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
    if owner is not None and marker_beside:
        write_owner(target, owner, beside=True)


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

    Every value that names a file (``image``, a string ``label``, ``*_path``) must be a string naming an existing
    file under ``data_root``; ``training`` must be non-empty.
    """
    for key in splits:
        if key not in ("training", "validation", "testing"):
            raise ValueError(f"unknown datalist split {key!r}")
    if not splits.get("training"):
        raise DataValidationError(f"datalist {str(path)!r}: site has no training cases")
    for split, items in splits.items():
        for i, item in enumerate(items):
            for field, value in item.items():
                if not is_file_field(field, value):
                    continue
                full = check_inside_root(value, data_root, f"{split}[{i}].{field}")
                if not full.exists():
                    raise DataValidationError(f"{split}[{i}].{field}: {str(full)!r} does not exist")
    payload = {"description": description, **{k: splits.get(k, []) for k in ("training", "validation", "testing")}}
    return atomic_write_json(path, payload)


def is_file_field(field: str, value: object) -> bool:
    """Whether a datalist field names a file: ``image``, ``*_path``, and ``label`` unless it is a class index."""
    if field == "label":
        return not isinstance(value, (int, np.integer)) or isinstance(value, bool)
    return field == "image" or field.endswith("_path")


def check_splits_non_empty(
    site_splits: Mapping[str, Mapping[str, Sequence]], require: Sequence[str], source: str | os.PathLike
) -> None:
    """Raise naming the site file and the split when a split that a job uses (``require``) is empty."""
    for site, splits in site_splits.items():
        for split in require:
            if not splits.get(split):
                raise DataValidationError(
                    f"datalist {str(Path(source) / f'{site}.json')!r}: split {split!r} is empty "
                    f"(the job uses it; give the site more cases or change the split fractions)"
                )


def write_datalists(
    folder: str | os.PathLike,
    data_root: str | os.PathLike,
    site_splits: Mapping[str, dict[str, list[dict]]],
    owner: str,
    descriptions: Mapping[str, str],
    case_key: Callable[[dict], str] = lambda item: item["image"],
    require: Sequence[str] = ("training",),
) -> dict[str, Path]:
    """Write ``folder/<site>.json`` for every site as one owned folder; return ``{site: path}``.

    The folder is replaced as a whole (so a previous conversion's extra sites disappear with it), only if it was
    written by ``owner`` (see :func:`atomic_dir`). Checks first: every ``require`` split non-empty, and no case
    (``case_key(item)``) in two splits or two sites.
    """
    folder = Path(folder)
    check_splits_non_empty(site_splits, require, folder)
    check_cases_disjoint(
        {f"{site}.json": splits for site, splits in site_splits.items()}, case_key, str(folder)
    )
    with atomic_dir(folder, owner=owner, protect=[data_root]) as tmp:
        for site, splits in site_splits.items():
            write_site_datalist(tmp / f"{site}.json", data_root, splits, descriptions.get(site, ""))
    return {site: folder / f"{site}.json" for site in site_splits}


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
