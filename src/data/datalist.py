"""Read one site's decathlon-style datalist, failing fast with the file named."""

from __future__ import annotations

import json
from pathlib import Path

from monai.data import load_decathlon_datalist

from src.data.validation import DataValidationError, check_inside_root

SPLITS = ("training", "validation", "testing")
FILE_KEYS = ("image", "label")


def load_site_datalist(
    datalist: str | Path, data_root: str | Path, require: tuple[str, ...] = ("training",)
) -> dict[str, list[dict]]:
    """Return ``{split: items}`` with file paths made absolute under ``data_root``.

    Raises :class:`DataValidationError` if the datalist is missing or malformed, a required split is empty,
    a path escapes the data root, or a listed file does not exist.
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
    out = {}
    for split in SPLITS:
        entries = raw.get(split) or []
        for i, item in enumerate(entries):
            for key in FILE_KEYS:
                if isinstance(item.get(key), str):
                    path = check_inside_root(item[key], data_root, f"{datalist.name}: {split}[{i}].{key}")
                    if not path.exists():
                        raise DataValidationError(f"{datalist.name}: {split}[{i}].{key}: {str(path)!r} does not exist")
        # MONAI's own loader resolves the paths exactly as every MONAI app does
        is_segmentation = bool(entries) and isinstance(entries[0].get("label"), str)
        out[split] = load_decathlon_datalist(str(datalist), is_segmentation, split, str(data_root)) if entries else []
    for split in require:
        if not out[split]:
            raise DataValidationError(f"datalist {str(datalist)!r}: split {split!r} is empty (site has no cases)")
    return out
