"""Final model and result table reach MLflow; a real MLflow server serves the run back over its REST API."""

from __future__ import annotations

import sqlite3
import urllib.error

import pytest

from src.reporting.mlflow_results import publish_results, relocate_artifacts
from src.reporting.mlflow_server import rest, serve_mlflow


def test_relocate_points_artifacts_at_the_downloaded_folder(finished_job):
    sites, finished_job = finished_job.sites, finished_job.server
    assert relocate_artifacts(finished_job) == 1 + len(sites)
    with sqlite3.connect(finished_job / "mlflow.db") as con:
        uris = [u for (u,) in con.execute("SELECT artifact_uri FROM runs")]
    root = (finished_job / "artifacts").as_uri()
    assert len(uris) == len(sites) and all(u.startswith(root + "/") and u.endswith("/artifacts") for u in uris)
    assert relocate_artifacts(finished_job) == 0  # idempotent


def test_relocate_needs_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="mlflow.db"):
        relocate_artifacts(tmp_path)


def test_server_serves_site_metrics_params_and_result_artifacts(finished_job):
    sites, val_dice, finished_job = finished_job.sites, finished_job.val_dice, finished_job.server
    run_id = publish_results(finished_job, key_metric="val_dice")
    with serve_mlflow(finished_job) as base:
        exps = rest(base, "experiments/search", {"max_results": 10})["experiments"]
        exp = next(e for e in exps if e["name"] == "demo_job-experiment")
        runs = rest(base, "runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
        by_name = {r["info"]["run_name"]: r for r in runs}
        assert set(by_name) == {f"{s}-job123-demo_job" for s in sites} | {"demo_job-results"}
        for site in sites:
            run = by_name[f"{site}-job123-demo_job"]
            history = rest(base, f"metrics/get-history?run_id={run['info']['run_id']}&metric_key=val_dice")
            assert [m["value"] for m in sorted(history["metrics"], key=lambda m: m["step"])] == val_dice[site]
            assert {p["key"]: p["value"] for p in run["data"]["params"]}["lr"] == "0.001"
        results = by_name["demo_job-results"]
        assert results["info"]["run_id"] == run_id
        metrics = {m["key"]: m["value"] for m in results["data"]["metrics"]}
        assert metrics == pytest.approx({"test_dice_global_site-1": 0.5, "test_dice_global_site-2": 0.6})
        files = rest(base, f"artifacts/list?run_id={run_id}&path=model")["files"]
        assert [f["path"] for f in files] == ["model/FL_global_model.pt"] and int(files[0]["file_size"]) == 2048
        tables = {f["path"] for f in rest(base, f"artifacts/list?run_id={run_id}&path=results")["files"]}
        assert {"results/summary.md", "results/cross_val_results.json"} <= tables
    with pytest.raises(urllib.error.URLError):  # the server is gone
        rest(base, "experiments/search", {"max_results": 1}, timeout=3)


def test_publish_twice_keeps_one_results_run(finished_job):
    from mlflow.tracking import MlflowClient

    finished_job = finished_job.server
    publish_results(finished_job)
    second = publish_results(finished_job)
    client = MlflowClient(tracking_uri=f"sqlite:///{finished_job / 'mlflow.db'}")
    exp = client.get_experiment_by_name("demo_job-experiment")
    names = [r.info.run_name for r in client.search_runs([exp.experiment_id])]
    assert names.count("demo_job-results") == 1
    assert client.get_run(second).info.status == "FINISHED"
