"""Pre-flight check of a job's data, run before anything heavy is imported or started (well under a second).

It checks what every site will need: the data root is a folder, every site's ``<site>.json`` datalist exists,
is valid JSON and has training cases, and the files of each site's first item open and are not empty. On failure
it prints what is wrong, which site datalists exist (so a wrong ``--sites`` is visible), and one line saying
what to run; the job then exits with status 2 instead of failing inside the simulator minutes later.

Only ``json`` and ``pathlib``: no torch, MONAI or NVFlare import (the full per-case validation stays in the
learners' :func:`src.data.datalist.load_site_datalist`, which runs again on every site).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["PreflightError", "check_data", "preflight"]

FILE_KEYS = ("image", "label")
EXIT_CODE = 2


class PreflightError(RuntimeError):
    """A problem with the job's data found before the job starts."""


def _first_item_files(item: dict, data_root: Path, where: str) -> list[Path]:
    files = []
    for key in FILE_KEYS:
        value = item.get(key)
        if isinstance(value, str):
            path = Path(value) if Path(value).is_absolute() else data_root / value
            files.append((f"{where}.{key}", path))
    out = []
    for name, path in files:
        try:
            with open(path, "rb") as f:
                if not f.read(1):
                    raise PreflightError(f"{name}: {str(path)!r} is empty")
        except OSError as e:
            raise PreflightError(f"{name}: {str(path)!r} cannot be opened ({e.strerror or e})") from e
        out.append(path)
    return out


def check_data(data_root: str | Path, datalist_dir: str | Path, sites: list[str]) -> dict[str, int]:
    """Check the data of ``sites``; return ``{site: training cases}`` or raise :class:`PreflightError`."""
    data_root, datalist_dir = Path(data_root), Path(datalist_dir)
    if not data_root.is_dir():
        raise PreflightError(f"data root {str(data_root)!r} does not exist")
    if not datalist_dir.is_dir():
        raise PreflightError(f"datalist folder {str(datalist_dir)!r} does not exist")
    present = sorted(p.stem for p in datalist_dir.glob("*.json"))
    if not sites:
        raise PreflightError(f"no site datalists (<site>.json) in {str(datalist_dir)!r}")
    missing = [s for s in sites if s not in present]
    if missing:
        raise PreflightError(f"no datalist for site(s) {', '.join(missing)} in {str(datalist_dir)!r}; "
                             f"datalists present: {', '.join(present) or 'none'}")
    counts = {}
    for site in sites:
        path = datalist_dir / f"{site}.json"
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise PreflightError(f"datalist {str(path)!r} is not valid JSON: {e}") from e
        training = raw.get("training") if isinstance(raw, dict) else None
        if not training:
            raise PreflightError(f"datalist {str(path)!r} has no training cases")
        if not isinstance(training[0], dict):
            raise PreflightError(f"datalist {str(path)!r}: training[0] is not an object with 'image'")
        _first_item_files(training[0], data_root, f"{path.name}: training[0]")
        counts[site] = len(training)
    return counts


def preflight(args, prepare: str, sites: list[str] | None = None) -> dict[str, int] | None:
    """Run :func:`check_data` for a job's options; on failure print the reason and ``prepare``, exit 2.

    Skipped for ``--env export`` (the data lives on the sites) and for ``--env poc`` with ``--site-env`` (each
    site's data root is set there, not here).

    Args:
        args: the parsed job options (``data_root``, ``datalist_dir``, ``sites``/``n_clients``, ``env``).
        prepare: the command that makes the data, shown when the check fails.
        sites: the sites to check (default: ``--sites`` or ``site-1 .. site-N``); an empty list (a job that
            found no datalists to take its sites from) fails with "no site datalists".
    """
    if args.env == "export" or (args.env == "poc" and getattr(args, "site_env", None)):
        return None
    if sites is None:
        sites = args.sites or [f"site-{i}" for i in range(1, args.n_clients + 1)]
    try:
        return check_data(args.data_root, args.datalist_dir, sites)
    except PreflightError as e:
        print(f"error: {e}", file=sys.stderr)
        print(f"to make the data, run: {prepare}  (or pass --data-root / --datalist-dir / --sites)", file=sys.stderr)
        raise SystemExit(EXIT_CODE) from None
