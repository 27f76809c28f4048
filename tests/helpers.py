"""Helpers shared by several test folders (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_job(name: str) -> ModuleType:
    """A fresh copy of the job script ``jobs/<name>.py`` as a module (scripts are not a package: loaded by path)."""
    spec = importlib.util.spec_from_file_location(f"{name}_job", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
