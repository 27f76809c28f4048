"""Layout rules that keep the bundle readable: server code never imports client code; wire keys live in one place."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_MODULES = sorted(p for p in (ROOT / "src" / "aggregators").glob("*.py"))
#: modules the server's job config instantiates besides the aggregators (wire counting, dequantization)
SERVER_SIDE_COMPONENTS = sorted(p for p in (ROOT / "src" / "comm").glob("*.py"))
CLIENT_PACKAGES = ("src.learners", "src.personalisation", "src.inference")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):  # also imports inside functions (lazy imports)
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", SERVER_MODULES + SERVER_SIDE_COMPONENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_server_modules_do_not_import_client_code(path):
    bad = sorted(m for m in _imported_modules(path) if m.startswith(CLIENT_PACKAGES))
    assert not bad, f"{path.relative_to(ROOT)} imports client-side modules {bad}"


def test_importing_the_server_side_loads_no_learner():
    modules = [f"src.aggregators.{p.stem}" for p in SERVER_MODULES if p.stem != "__init__"]
    code = (f"import sys, importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.startswith({CLIENT_PACKAGES!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"server modules pulled in client code: {out.stdout}"


def test_wire_keys_are_defined_only_in_the_protocol_module():
    keys = ("NUM_TRAIN_SAMPLES", "NUM_STEPS_CURRENT_ROUND", "TASK_PHASE", "__extra__")
    offenders = []
    for path in (ROOT / "src").rglob("*.py"):
        if path.name == "protocol.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(ROOT)}: {k}" for k in keys if f'"{k}' in text]
    assert not offenders, offenders
