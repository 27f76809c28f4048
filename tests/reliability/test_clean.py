"""``make clean`` removes what the tools wrote and nothing else: run against a temporary root (``CLEAN_ROOT``), never
the checkout. The outputs are written by the tools themselves (converter, run folder, MLflow store, POC provision,
comparison writer, job logging configuration); foreign files are put beside and between them."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    from benchmarks.stats import write_comparison
    from data_prep.msd_prostate import convert
    from data_prep.synthetic.msd_prostate import generate
    from deploy.poc import PocDeployment
    from jobs.common import run_folder
    from jobs.console import ensure_experiment
    from src.reporting.console import write_log_config

    root = tmp_path_factory.mktemp("checkout")
    task = generate(root / "data" / "raw", n_train=6, n_test=0, n_scanners=2, seed=0, scale=0.4)
    convert(task, root / "data" / "prostate", n_sites=2, datalist_dir=root / "datalists" / "prostate")
    ws = root / "workspace"
    args = argparse.Namespace(workspace=str(ws), name="mednist_fedavg", run_id=None, overwrite=False)
    run = run_folder(args)
    (run / "summary.md").write_text("a run's result\n")
    ensure_experiment(f"sqlite:///{ws / 'mlruns' / 'mlflow.db'}", "mednist_fedavg")
    write_log_config(ws / "mednist_fedavg_log_config.json")
    PocDeployment(ws / "poc", ["site-1"], verbose=False).provision()
    write_comparison(root / "results" / "cmp", "cmp", [], {"algorithm": "x", "title": "t", "synthetic": True,
                                                          "settings": {}})
    (ws / ".staging").mkdir()
    dead = ws / ".staging" / ".fl-job.tmp-999999999-x"  # pid that cannot run
    dead.mkdir()
    live = root / "data" / f".prostate.tmp-{os.getpid()}-y"  # a concurrent write (this process runs)
    live.mkdir()
    foreign = {
        "data/my_real_scans/case1.nii.gz": "patient data",
        "data/notes.txt": "mine",
        "datalists/my_set/site-1.json": "[]",
        "workspace/mednist_fedavg/notes.txt": "beside runs/",
        "workspace/other_log_config.json": "{\"version\": 1}",  # not ours: differs from the jobs' config
        "results/paper_table.csv": "a,b\n",
    }
    for rel, text in foreign.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    made = ["data/raw", "data/prostate", "datalists/prostate", f"workspace/mednist_fedavg/runs/{run.name}",
            "workspace/mednist_fedavg/latest", "workspace/mlruns", "workspace/mednist_fedavg_log_config.json",
            "workspace/poc", "results/cmp", str(dead.relative_to(root))]
    for rel in made:
        assert (root / rel).exists() or (root / rel).is_symlink(), rel
    dry = subprocess.run([sys.executable, str(ROOT / "scripts" / "clean.py"), "--root", str(root), "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    snapshot = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    proc = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "clean", f"CLEAN_ROOT={root}",
                           f"PY={sys.executable}"], cwd=tmp_path_factory.mktemp("elsewhere"),
                          capture_output=True, text=True, timeout=120)
    return {"root": root, "made": made, "foreign": foreign, "live": live, "proc": proc, "dry": dry,
            "before": snapshot}


def test_make_clean_removes_every_output_the_tools_wrote(populated):
    root, proc = populated["root"], populated["proc"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    left = [rel for rel in populated["made"] if (root / rel).exists() or (root / rel).is_symlink()]
    assert not left, proc.stdout
    assert not (root / ".raw.data_prep_output").exists() and not (root / "data" / ".raw.data_prep_output").exists()
    assert not (root / "workspace" / ".staging").exists()  # emptied, then removed as an empty folder
    assert "removed data/prostate" in proc.stdout


def test_make_clean_keeps_every_foreign_file_and_a_running_write(populated):
    root = populated["root"]
    for rel, text in populated["foreign"].items():
        assert (root / rel).read_text() == text, rel
        assert rel in populated["proc"].stdout  # listed as kept
    assert populated["live"].is_dir()


def test_dry_run_lists_the_same_and_deletes_nothing(populated):
    dry = populated["dry"]
    assert dry.returncode == 0, dry.stderr
    for rel in populated["made"]:
        assert f"would remove {rel}" in dry.stdout, (rel, dry.stdout)
    assert "would remove data/my_real_scans" not in dry.stdout


def test_make_clean_never_touches_tracked_files(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    tracked = tmp_path / "datalists" / "README.md"
    tracked.parent.mkdir()
    tracked.write_text("tracked")
    (tmp_path / "datalists" / "x").mkdir()
    (tmp_path / "datalists" / "x" / ".data_prep_output").write_text(json.dumps({"tool": "t"}))
    subprocess.run(["git", "-C", str(tmp_path), "add", "datalists/README.md"], check=True)
    from scripts.clean import clean

    removed, kept = clean(tmp_path)
    assert [p.name for p, _ in removed] == ["x"]
    assert tracked.read_text() == "tracked" and tracked in kept
