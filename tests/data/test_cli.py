"""The converters' shared command-line driver: same options and defaults as before, one error path, fast --help."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from data_prep.cli import Command, build_parser, run_cli
from data_prep.common import DataValidationError

# every option and default each converter had before the driver (read from the per-converter parsers it replaced)
EXPECTED = {
    "acdc": {
        "convert": {"--datalist-dir": "datalists", "--fewshot-subjects": 10, "--fold": 0, "--out": "data/acdc",
                    "--raw": "data/raw/acdc", "--seed": 0, "--spacing": 1.36719},
        "generate": {"--frames": 10, "--out": "data/raw/acdc", "--seed": 0, "--slices": 8, "--subjects": 20},
        "validate": {"--data-root": "data/acdc", "--datalist-dir": "datalists", "--spacing": 1.36719},
    },
    "fedicra": {
        "convert": {"--data-root": None, "--datalist-dir": None, "--layout": "auto", "--seed": 0,
                    "--sup-types": "paper", "--task": None, "--val-fraction": 0.2},
        "generate": {"--layout": "both", "--n-sites": 5, "--n-test": 4, "--n-train": 8, "--out": "data/fedicra",
                     "--seed": 0, "--size": 256, "--task": "both"},
        "validate": {"--data-root": None, "--datalist-dir": None, "--layout": "auto", "--sup-types": "paper",
                     "--task": None},
    },
    "fedmri": {
        "convert": {"--brats-slices": [40, 120], "--consistency-rtol": 0.05, "--crop": None,
                    "--datalist-dir": "datalists/fedmri", "--fractions": [0.7, 0.15, 0.15], "--max-slices": None,
                    "--min-foreground": 0.05, "--modality": None, "--out": "data/fedmri/converted",
                    "--raw-root": "data/fedmri/raw", "--seed": 0, "--site": None},
        # BraTS-layout files always have the real 155 slices: no --depth (issue 13)
        "generate": {"--brats-matrix": None, "--fastmri-matrix": None, "--out": "data/fedmri/raw",
                     "--seed": 0, "--sites": 4, "--slices": 3, "--volumes": 4},
        "validate": {"--crop": None, "--data-root": "data/fedmri/converted", "--datalist-dir": "datalists/fedmri",
                     "--modality": None, "--raw-root": None, "--site": None},
    },
    "mednist": {
        "generate": {"--out": "data/mednist", "--per-class": 60, "--seed": 0},
        "split": {"--alpha": None, "--data-root": "data/mednist", "--datalist-dir": "datalists/mednist",
                  "--n-sites": 3, "--seed": 0},
    },
    "mnms": {
        "convert": {"--datalist-dir": "datalists", "--fractions": (0.7, 0.1, 0.2), "--info-csv": None,
                    "--out": "data/mnms", "--raw": "data/raw/mnms", "--seed": 0, "--spacing": 1.36719,
                    "--vendors": None},
        "generate": {"--frames": 10, "--out": "data/raw/mnms", "--seed": 0, "--slices": 8,
                     "--subjects-per-vendor": 4, "--unlabeled": 1, "--vendors": "ABCD"},
        "validate": {"--data-root": "data/mnms", "--datalist-dir": "datalists", "--spacing": 1.36719},
    },
    "msd_prostate": {
        "convert": {"--datalist-dir": "datalists/msd_prostate", "--fractions": (0.5, 0.25, 0.25), "--n-sites": 3,
                    "--out": "data/prostate", "--seed": 0, "--split-mode": "contiguous",
                    "--task-dir": "data/raw/Task05_Prostate"},
        "generate": {"--n-scanners": 3, "--n-test": 2, "--n-train": 12, "--out": "data/raw", "--scale": 1.0,
                     "--seed": 0},
        "validate": {"--data-root": "data/prostate", "--datalist-dir": "datalists/msd_prostate"},
    },
    "multisite_prostate": {
        "convert": {"--datalist-dir": "datalists/multisite_prostate", "--keep-empty-slices": False,
                    "--out": "data/multisite_prostate", "--raw": "data/raw/multisite_prostate", "--seed": 0,
                    "--sites": ["BIDMC", "HK", "I2CVB", "ISBI", "ISBI_1.5", "UCL"], "--size": 64, "--n-test": None},
        "generate": {"--n-cases": 6, "--out": "data/raw/multisite_prostate", "--seed": 0, "--shift-strength": 1.0,
                     "--matrix": 384},
        "validate": {"--data-root": "data/multisite_prostate", "--datalist-dir": "datalists/multisite_prostate"},
    },
}


def _options(parser: argparse.ArgumentParser) -> dict[str, dict[str, object]]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {a.option_strings[-1]: a.default for a in p._actions if a.option_strings and a.dest != "help"}
            for name, p in sub.choices.items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_option_keeps_its_name_and_default(name):
    module = importlib.import_module(f"data_prep.{name}")
    assert _options(build_parser(f"python -m data_prep.{name}", module.__doc__, module.COMMANDS)) == EXPECTED[name]


def _raise(error: Exception):
    def run(_args):
        raise error
    return run


def _commands(run) -> tuple[Command, ...]:
    return (Command("convert", "test", lambda p: p.add_argument("--out", default="x"), run),)


def test_invalid_data_is_one_error_line_and_exit_2(capsys):
    error = DataValidationError("label: 'a/b.nii.gz' has values [7] outside the expected set [0, 1, 2]")
    assert run_cli("python -m t", "", _commands(_raise(error)), ["convert"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {error}\n" and "done" not in captured.out


def test_user_errors_are_opt_in_and_bugs_keep_their_traceback(capsys):
    assert run_cli("python -m t", "", _commands(_raise(ValueError("bad --val-fraction"))), ["convert"],
                   user_errors=(ValueError,)) == 2
    assert "error: bad --val-fraction" in capsys.readouterr().err
    with pytest.raises(ValueError, match="a bug"):
        run_cli("python -m t", "", _commands(_raise(ValueError("a bug"))), ["convert"])


def test_success_returns_the_commands_code_and_reports_time(capsys):
    seen = {}
    assert run_cli("python -m data_prep.t", "", _commands(lambda a: seen.update(out=a.out)),
                   ["convert", "--out", "y"]) == 0
    assert seen == {"out": "y"}
    assert "data_prep.t convert: done in" in capsys.readouterr().out
    assert run_cli("python -m t", "", _commands(lambda a: 3), ["convert"]) == 3
    with pytest.raises(SystemExit) as e:
        run_cli("python -m t", "", _commands(lambda a: 0), [])  # no subcommand: argparse's usage error
    assert e.value.code == 2


def test_help_imports_neither_torch_nor_monai():
    code = (
        "import contextlib, io, json, sys\n"
        f"for name in {sorted(EXPECTED)!r}:\n"
        "    module = __import__(f'data_prep.{name}', fromlist=['main'])\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            module.main(['--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(json.dumps(sorted(m for m in ('torch', 'monai', 'nvflare') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []
