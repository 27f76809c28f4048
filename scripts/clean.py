"""``make clean``: remove what the bundle's tools wrote under data/, datalists/, workspace/, results/ and
benchmarks/results/, and nothing else.

Removed (each is recognised by what its tool leaves in or beside it):

* a folder with a data-preparation owner marker (``.data_prep_output`` inside, or beside and still matching the
  folder: converters, generators, and the job tools' own folders such as ``workspace/initial_models``,
  ``workspace/mlruns``, ``workspace/poc-results``, ``workspace/.staging``, comparison output folders);
* a job's run folder (a ``run.json`` with ``options`` and ``status``) and the ``latest`` link beside ``runs/``;
* an export (``.fl_job_export``) and a POC workspace (``.fl_poc_workspace``);
* a ``.NAME.tmp-<pid>-*`` / ``.NAME.old-<pid>`` leftover of an interrupted write whose process no longer runs;
* a ``<job>_log_config.json`` byte-identical to the logging configuration the jobs write;
* folders that are empty once the above are gone.

Everything else is kept and listed (a file you put there, a download, the outputs of a benchmark that does not mark
them); files git tracks are never touched. ``--dry-run`` only lists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_prep.common import OWNER_MARKER, _pid_alive, read_owner  # noqa: E402
from deploy.poc import POC_MARKER  # noqa: E402

#: the folders ``make clean`` looks in, relative to the root
CLEAN_DIRS = ("data", "datalists", "workspace", "results", "benchmarks/results")
EXPORT_MARKER = ".fl_job_export"  # jobs.common.EXPORT_MARKER (not imported: jobs.common pulls in NVFlare)
RUN_MARKER = "run.json"
LEFTOVER = re.compile(r"^\..+\.(?:tmp-(\d+)-.+|old-(\d+))$")


def _log_configs() -> set[str]:
    from src.reporting.console import nvflare_log_config

    return {json.dumps(nvflare_log_config(v), indent=2) for v in (False, True)}


def why_ours(path: Path, log_configs: set[str]) -> str | None:
    """Which tool wrote ``path`` (a reason string), or None if nothing says it is ours."""
    m = LEFTOVER.match(path.name)
    if m and not path.name.endswith(OWNER_MARKER):
        return None if _pid_alive(int(m.group(1) or m.group(2))) else "leftover of an interrupted write"
    if path.is_symlink():
        target = os.readlink(path)
        if path.name == "latest" and Path(target).parts[:1] == ("runs",):
            return "link to the latest run"
        return None
    if path.is_dir():
        tool = read_owner(path)
        if tool:
            return f"written by {tool}"
        if (path / EXPORT_MARKER).is_file():
            return "job export"
        if (path / POC_MARKER).is_file():
            return "POC workspace"
        try:
            run = json.loads((path / RUN_MARKER).read_text())
            if isinstance(run, dict) and {"options", "status"} <= set(run):
                return "job run folder"
        except (OSError, ValueError):
            pass
        return None
    if path.name.endswith("_log_config.json"):
        try:
            return "job logging configuration" if path.read_text() in log_configs else None
        except OSError:
            return None
    return None


def _tracked(root: Path) -> set[Path]:
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return set()
    if out.returncode != 0:
        return set()
    return {(root / p).resolve() for p in out.stdout.decode().split("\0") if p}


def plan(root: Path) -> tuple[list[tuple[Path, str]], list[Path]]:
    """``(remove, keep)``: what is ours (with the reason) and the files that stay."""
    root = Path(root).resolve()
    configs, tracked = _log_configs(), _tracked(root)
    remove: list[tuple[Path, str]] = []
    keep: list[Path] = []

    def visit(path: Path) -> None:
        if path.resolve() in tracked:
            keep.append(path)
            return
        reason = why_ours(path, configs)
        if reason is None and LEFTOVER.match(path.name) and not path.name.endswith(OWNER_MARKER):
            keep.append(path)  # a write still running: not ours to touch
            return
        if reason:
            remove.append((path, reason))
            beside = path.with_name(f".{path.name}{OWNER_MARKER}")
            if path.is_dir() and not path.is_symlink() and beside.is_file():
                remove.append((beside, "its owner marker"))
            return
        if path.is_dir() and not path.is_symlink():
            for child in sorted(path.iterdir()):
                visit(child)
        elif not (path.name.endswith(OWNER_MARKER) and path.name.startswith(".")):
            keep.append(path)

    for name in CLEAN_DIRS:
        top = root / name
        if top.is_dir() and not top.is_symlink():
            for child in sorted(top.iterdir()):
                visit(child)
    removed = {p for p, _ in remove}
    keep = [p for p in keep if p not in removed]
    return remove, keep


def clean(root: Path, dry_run: bool = False) -> tuple[list[tuple[Path, str]], list[Path]]:
    root = Path(root).resolve()
    remove, keep = plan(root)
    if dry_run:
        return remove, keep
    for path, _ in remove:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for name in CLEAN_DIRS:  # folders left empty, deepest first
        top = root / name
        if not top.is_dir() or top.is_symlink():
            continue
        folders = (p for p in top.rglob("*") if p.is_dir() and not p.is_symlink()
                   and not any(LEFTOVER.match(part) for part in p.relative_to(top).parts))
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        if not any(top.iterdir()):
            top.rmdir()
    return remove, keep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/clean.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT), help="the checkout to clean (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed and kept")
    a = p.parse_args(argv)
    remove, keep = clean(Path(a.root), dry_run=a.dry_run)
    verb = "would remove" if a.dry_run else "removed"
    root = Path(a.root).resolve()
    for path, reason in remove:
        print(f"{verb} {path.relative_to(root)}  ({reason})")
    if keep:
        print(f"kept {len(keep)} file(s) no tool of the bundle marked as its own (remove them yourself):")
        for path in keep[:50]:
            print(f"  {path.relative_to(root)}")
        if len(keep) > 50:
            print(f"  ... and {len(keep) - 50} more")
    if not remove:
        print("nothing of the bundle's to remove")
    return 0


if __name__ == "__main__":
    sys.exit(main())
