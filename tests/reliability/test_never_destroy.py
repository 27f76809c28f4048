"""Job tools never delete what they did not create: export folders, run folders, staging folders."""

import argparse
import json
from pathlib import Path

import pytest

from jobs import common

ROOT = Path(__file__).resolve().parents[2]


class FakeRecipe:
    """Just enough of an NVFlare recipe: ``export(dir)`` writes ``dir/<name>/meta.json``."""

    name = "fake_job"

    def __init__(self, fail: bool = False):
        self.fail, self.client_files, self.server_files = fail, [], []

    def export(self, folder):
        (Path(folder) / self.name).mkdir()
        (Path(folder) / self.name / "meta.json").write_text("{}")

    def execute(self, env):
        if self.fail:
            raise RuntimeError("Simulation failed with return code 1.")
        raise AssertionError("not expected")

    def add_client_file(self, path):
        self.client_files.append(path)

    def add_server_file(self, path):
        self.server_files.append(path)


def _args(tmp_path, **kw):
    values = {"env": "export", "export_dir": None, "name": "fake_job", "workspace": str(tmp_path / "ws"),
              "run_id": None, "overwrite": False, "sites": ["site-1"], "n_clients": 1}
    values.update(kw)
    return argparse.Namespace(**values)


@pytest.mark.parametrize("target", ["root", "cwd", "parent_of_root"])
def test_export_never_replaces_the_checkout_or_the_working_directory(tmp_path, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    folder = {"root": ROOT, "cwd": Path("."), "parent_of_root": ROOT.parent}[target]
    with pytest.raises(SystemExit, match="refusing"):
        common.export_job(FakeRecipe(), _args(tmp_path, export_dir=str(folder)))
    assert (ROOT / "jobs" / "common.py").is_file()


def test_export_refuses_a_folder_it_did_not_write_and_keeps_its_files(tmp_path):
    mine = tmp_path / "precious"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="was not written by this tool"):
        common.export_job(FakeRecipe(), _args(tmp_path, export_dir=str(mine)))
    assert (mine / "notes.txt").read_text() == "keep me"
    plain_file = tmp_path / "file.txt"
    plain_file.write_text("x")
    with pytest.raises(SystemExit, match="not a folder"):
        common.export_job(FakeRecipe(), _args(tmp_path, export_dir=str(plain_file)))
    assert plain_file.read_text() == "x"


def test_export_replaces_only_its_own_earlier_export_and_leaves_no_temp(tmp_path):
    out = tmp_path / "job"
    sibling = tmp_path / "fake_job"  # NVFlare's own <dir>/<name>: must not be touched either
    sibling.mkdir()
    (sibling / "mine.txt").write_text("keep")
    assert common.export_job(FakeRecipe(), _args(tmp_path, export_dir=str(out))) == out.resolve()
    assert (out / common.EXPORT_MARKER).is_file() and (out / "meta.json").is_file()
    (out / "stale.txt").write_text("from the first export")
    common.export_job(FakeRecipe(), _args(tmp_path, export_dir=str(out)))  # marked: replaced
    assert not (out / "stale.txt").exists() and (out / "meta.json").is_file()
    assert (sibling / "mine.txt").read_text() == "keep"
    assert not list(tmp_path.glob(".export-*"))


def test_every_run_gets_its_own_folder_and_latest_points_at_it(tmp_path):
    args = _args(tmp_path, env="sim")
    first = common.run_folder(args)
    second = common.run_folder(args)
    assert first != second and first.parent == second.parent == tmp_path / "ws" / "fake_job" / "runs"
    latest = tmp_path / "ws" / "fake_job" / "latest"
    assert latest.is_symlink() and latest.resolve() == second
    assert json.loads((first / common.RUN_MARKER).read_text())["status"] == "running"


def test_a_named_run_is_replaced_only_with_overwrite_and_only_when_a_run_wrote_it(tmp_path):
    args = _args(tmp_path, env="sim", run_id="r1")
    folder = common.run_folder(args)
    (folder / "summary.json").write_text("{}")
    with pytest.raises(SystemExit, match="--overwrite"):
        common.run_folder(args)
    assert (folder / "summary.json").is_file()
    (folder / common.RUN_MARKER).unlink()  # not a run folder any more (someone's own files)
    with pytest.raises(SystemExit, match="was not written by this tool"):
        common.run_folder(_args(tmp_path, env="sim", run_id="r1", overwrite=True))
    assert (folder / "summary.json").is_file()


def test_a_rerun_that_fails_at_once_keeps_the_previous_runs_results(tmp_path, monkeypatch):
    pytest.importorskip("nvflare")
    args = _args(tmp_path, env="sim")
    previous = common.run_folder(args)
    for name in ("summary.json", "mlflow.db"):
        (previous / name).write_text("previous run")
    (previous / "tb_events").mkdir()
    monkeypatch.setattr(common, "summarise_partial", lambda folder, key: None)
    with pytest.raises(RuntimeError, match="Simulation failed"):
        common._simulate(FakeRecipe(fail=True), args)
    assert all((previous / n).read_text() == "previous run" for n in ("summary.json", "mlflow.db"))
    assert (previous / "tb_events").is_dir()
    runs = sorted((tmp_path / "ws" / "fake_job" / "runs").iterdir())
    assert len(runs) == 2
    failed = next(r for r in runs if r != previous)
    assert json.loads((failed / common.RUN_MARKER).read_text())["status"] == "failed"


def test_staging_folders_are_removed_after_the_run_and_stale_ones_by_the_next(tmp_path):
    from src.config.base import LearnerConfig
    from src.learners.base import FederatedLearner

    root = tmp_path / "ws" / common.STAGING
    stale = root / "fl-job-999999999-abc"  # a pid that does not run: left by a killed run
    stale.mkdir(parents=True)
    live = root / "fl-job-1-abc"  # pid 1 runs: another job's, left alone
    live.mkdir()
    recipe = FakeRecipe(fail=True)
    staging = common.stage_project(recipe, FederatedLearner, LearnerConfig(), root)
    assert not stale.exists() and live.exists() and staging.parent == root and staging.is_dir()
    recipe.fl_staging = staging
    with pytest.raises(RuntimeError):
        common.execute(recipe, _args(tmp_path, env="sim"))
    assert not staging.exists()


def test_poc_provision_replaces_only_its_own_workspace(tmp_path, monkeypatch):
    from deploy.poc import POC_MARKER, PocError, check_own_workspace

    monkeypatch.chdir(tmp_path)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "data.txt").write_text("keep")
    with pytest.raises(PocError, match="not an earlier POC workspace"):
        check_own_workspace(theirs)
    for protected in (ROOT, tmp_path, ROOT.parent):
        with pytest.raises(PocError, match="refusing to use"):
            check_own_workspace(protected)
    ours = tmp_path / "poc"
    ours.mkdir()
    (ours / POC_MARKER).write_text("")
    check_own_workspace(ours)
    check_own_workspace(tmp_path / "new")
    assert (theirs / "data.txt").read_text() == "keep"


def test_resume_refuses_what_is_not_a_finished_round(tmp_path):
    with pytest.raises(SystemExit, match="not a run folder"):
        common.resume_point(tmp_path)
    (tmp_path / common.RUN_MARKER).write_text("{}")
    with pytest.raises(SystemExit, match="no NVFlare server results"):
        common.resume_point(tmp_path)


def test_job_options_for_dead_sites_are_checked():
    from jobs.mednist_fedavg import parse_args

    for bad in (["--min-clients", "4"], ["--min-clients", "-1"], ["--round-timeout", "-5"], ["--run-id", "../x"],
                ["--run-id", "latest"]):
        with pytest.raises(SystemExit):
            parse_args(["--n-clients", "3", *bad])


def test_poc_stores_live_in_the_workspace_owner_only(tmp_path):
    import stat

    from deploy.poc import PocDeployment

    poc = PocDeployment(tmp_path / "poc", ["site-1"])
    prod = poc.provision()
    texts = [p.read_text() for p in prod.glob("*/local/resources.json*")]
    assert texts and not any("/tmp/nvflare" in t for t in texts)
    assert any(str(tmp_path / "poc" / "store" / "jobs-storage") in t for t in texts)
    for folder in (tmp_path / "poc", tmp_path / "poc" / "store"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
