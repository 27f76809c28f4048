"""Read one site's decathlon-style datalist, failing fast with the file named."""

from __future__ import annotations

import json
from pathlib import Path

from monai.data import load_decathlon_datalist

from src.data.validation import DataValidationError, check_inside_root

SPLITS = ("training", "validation", "testing")
FILE_KEYS = ("image", "label")


def load_site_datalist(
    datalist: str | Path, data_root: str | Path, require: tuple[str, ...] = ("training", "validation")
) -> dict[str, list[dict]]:
    """Return ``{split: items}`` with file paths made absolute under ``data_root``.

    Raises :class:`DataValidationError` if the datalist is missing or malformed, a required split is empty
    (every learner trains on ``training`` and scores on ``validation`` each round), an entry's path is not a
    string inside the data root (symlinks resolved) or does not exist, or one image is in two splits.
    """
    datalist, data_root = Path(datalist), Path(data_root)
    if not datalist.is_file():
        raise DataValidationError(f"datalist {str(datalist)!r} does not exist (run the data set's converter first)")
    if not data_root.is_dir():
        raise DataValidationError(f"data root {str(data_root)!r} is not a directory")
    try:
        raw = json.loads(datalist.read_text())
    except json.JSONDecodeError as e:
        raise DataValidationError(f"datalist {str(datalist)!r} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise DataValidationError(f"datalist {str(datalist)!r} must hold a JSON object, got {type(raw).__name__}")
    out = {}
    seen: dict[str, str] = {}
    for split in SPLITS:
        entries = raw.get(split) or []
        if not isinstance(entries, list):
            raise DataValidationError(f"{datalist.name}: split {split!r} must be a list, got {type(entries).__name__}")
        for i, item in enumerate(entries):
            _check_entry(item, data_root, f"{datalist.name}: {split}[{i}]")
            first = seen.setdefault(item["image"], split)
            if first != split:
                raise DataValidationError(
                    f"{datalist.name}: {split}[{i}].image: {item['image']!r} is also in split {first!r} (test leakage)"
                )
        # MONAI's own loader resolves the paths exactly as every MONAI app does
        is_segmentation = bool(entries) and isinstance(entries[0].get("label"), str)
        out[split] = load_decathlon_datalist(str(datalist), is_segmentation, split, str(data_root)) if entries else []
    for split in require:
        if not out[split]:
            raise DataValidationError(f"datalist {str(datalist)!r}: split {split!r} is empty (site has no cases)")
    return out


def _check_entry(item: object, data_root: Path, where: str) -> None:
    """An entry is an object whose ``image`` (and a file ``label``) is a string path inside the data root.

    Anything else (a list, a number, a path escaping the root through ``..`` or a symlink) is rejected: MONAI's
    loader would otherwise join each element of a list with the root and read files from anywhere.
    """
    if not isinstance(item, dict) or "image" not in item:
        raise DataValidationError(f"{where}: entry must be an object with an 'image' field, got {item!r}")
    for key in FILE_KEYS:
        if key not in item:
            continue
        value = item[key]
        if key == "label" and isinstance(value, int) and not isinstance(value, bool):
            continue  # a class index (MedNIST)
        path = check_inside_root(value, data_root, f"{where}.{key}")
        if not path.exists():
            raise DataValidationError(f"{where}.{key}: {str(path)!r} does not exist")
