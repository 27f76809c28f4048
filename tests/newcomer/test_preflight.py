"""Pre-flight data check and ``--help``: fast, before torch/NVFlare, with the cause and what to run (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.preflight import PreflightError, check_data

ROOT = Path(__file__).resolve().parents[2]
JOBS = ("prostate_fedavg", "mednist_fedavg", "iopfl", "cooptrain", "fedicra", "fedmri")
HEAVY = ("torch", "monai", "nvflare", "mlflow")


def _dataset(tmp_path, sites=("site-1", "site-2")):
    root, lists = tmp_path / "data", tmp_path / "datalists"
    (root / "img").mkdir(parents=True)
    lists.mkdir()
    for site in sites:
        (root / "img" / f"{site}.png").write_bytes(b"\x89PNG....")
        (lists / f"{site}.json").write_text(json.dumps({"training": [{"image": f"img/{site}.png", "label": 0}]}))
    return root, lists


def test_good_data_passes_and_counts_cases(tmp_path):
    root, lists = _dataset(tmp_path)
    assert check_data(root, lists, ["site-1", "site-2"]) == {"site-1": 1, "site-2": 1}


@pytest.mark.parametrize("breakage, message", [
    ("no_root", "data root"),
    ("no_lists", "datalist folder"),
    ("wrong_site", "datalists present: site-1, site-2"),
    ("bad_json", "not valid JSON"),
    ("no_training", "no training cases"),
    ("missing_file", "cannot be opened"),
    ("empty_file", "is empty"),
    ("no_sites", "no site datalists"),
])
def test_each_problem_is_named(tmp_path, breakage, message):
    root, lists = _dataset(tmp_path)
    sites = ["site-1", "site-2"]
    if breakage == "no_root":
        root = tmp_path / "nowhere"
    elif breakage == "no_lists":
        lists = tmp_path / "nolists"
    elif breakage == "wrong_site":
        sites = ["site-1", "site-9"]
    elif breakage == "bad_json":
        (lists / "site-2.json").write_text("{oops")
    elif breakage == "no_training":
        (lists / "site-2.json").write_text(json.dumps({"training": [], "validation": []}))
    elif breakage == "missing_file":
        (root / "img" / "site-2.png").unlink()
    elif breakage == "empty_file":
        (root / "img" / "site-2.png").write_bytes(b"")
    elif breakage == "no_sites":  # a job that takes its sites from the datalists present found none
        sites = []
    with pytest.raises(PreflightError, match=message):
        check_data(root, lists, sites)


def _run(*args, timeout=60):
    start = time.monotonic()
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return out, time.monotonic() - start


def _run_job(job, *argv):
    """Run ``jobs/<job>.py argv`` in a fresh interpreter; its output ends with the exit code and heavy modules."""
    code = (f"import sys, runpy; sys.argv = ['{job}.py', *{list(argv)!r}]\n"
            "code = 0\n"
            f"try:\n    runpy.run_path('jobs/{job}.py', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules], 'EXIT', code)")
    return _run("-c", code)


@pytest.mark.parametrize("job", JOBS)
def test_help_is_fast_and_imports_nothing_heavy(job):
    out, seconds = _run_job(job, "--help")
    assert "--num-rounds" in out.stdout and "--verbose" in out.stdout and "--tracking-uri" in out.stdout
    assert "HEAVY [] EXIT 0" in out.stdout, out.stdout[-300:]
    assert seconds < 5  # typically 0.5 s; a loaded shared machine gets slack, the import check above is exact


@pytest.mark.parametrize("job", JOBS)
def test_missing_data_fails_at_once_with_what_to_run(job, tmp_path):
    out, seconds = _run_job(job, "--data-root", str(tmp_path / "none"), "--workspace", str(tmp_path / "ws"))
    assert "HEAVY [] EXIT 2" in out.stdout, out.stdout[-300:] + out.stderr[-500:]
    assert seconds < 5
    assert "data root" in out.stderr and "to make the data, run:" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 2
    assert not (tmp_path / "ws").exists()  # nothing started


@pytest.mark.parametrize("job", JOBS)
def test_a_wrong_site_lists_the_sites_that_exist(job, tmp_path):
    root, lists = _dataset(tmp_path)
    out, seconds = _run_job(job, "--data-root", str(root), "--datalist-dir", str(lists),
                            "--sites", "site-1", "site-3", "--workspace", str(tmp_path / "ws"))
    assert "HEAVY [] EXIT 2" in out.stdout, out.stdout[-300:] + out.stderr[-500:]
    assert seconds < 5
    assert "site-3" in out.stderr and "datalists present: site-1, site-2" in out.stderr
    assert not (tmp_path / "ws").exists()


def test_a_job_that_finds_its_sites_says_when_there_are_none(tmp_path):
    """cooptrain takes its sites from the datalists present: an empty folder is named, not a bare usage error."""
    (tmp_path / "data").mkdir()
    (tmp_path / "lists").mkdir()
    out, seconds = _run_job("cooptrain", "--data-root", str(tmp_path / "data"), "--datalist-dir",
                            str(tmp_path / "lists"), "--workspace", str(tmp_path / "ws"))
    assert "HEAVY [] EXIT 2" in out.stdout and seconds < 5
    assert "no site datalists" in out.stderr and "data_prep.cooptrain" in out.stderr


def test_the_comparison_takes_the_jobs_option_names(capsys):
    # in process: the comparison module imports torch at the top, and a subprocess for its --help took 67-133 s on
    # the loaded machine (tests/iopfl/test_benchmark.py imports it in process too)
    from benchmarks.iopfl_compare import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--num-rounds" in out and "--ood-test" in out
    assert "--rounds " not in out and "--ood-site" not in out  # old names: hidden aliases
