"""One MLflow store per project: two runs of a job land side by side, named ``<job>/<site>``, with their settings."""

from __future__ import annotations

from src.reporting.mlflow_results import publish_results
from src.reporting.summary import receiver_store
from tests.dashboards.conftest import SITES
from tests.dashboards.conftest import receiver_run as _receiver_run
from tests.dashboards.conftest import server_dir as _server_dir


def test_two_runs_share_one_store_and_are_both_visible(tmp_path):
    from mlflow.tracking import MlflowClient

    from jobs.console import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    ensure_experiment(uri, "demo")
    ensure_experiment(uri, "demo")  # idempotent
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("demo")
    assert exp.artifact_location == (tmp_path / "mlruns" / "artifacts" / "demo").as_uri()
    curves = {"100": [0.1, 0.3], "200": [0.2, 0.6]}
    for i, (launch, curve) in enumerate(curves.items()):
        for site in SITES:
            _receiver_run(client, exp.experiment_id, site, "demo", launch, f"17000{i}0000", curve)
        server = _server_dir(tmp_path, launch, uri)
        found = receiver_store(server)
        assert found == {"tracking_uri": uri, "experiment": "demo", "launch": launch}
        publish_results(server, job_name="demo", key_metric="val_dice", tracking_uri=found["tracking_uri"],
                        launch=launch, params={"num_rounds": 2, "sites": ",".join(SITES), "seed": i,
                                               "git_commit": "abc1234"})
    publish_results(_server_dir(tmp_path, "200", uri), job_name="demo", tracking_uri=uri, launch="200",
                    params={"num_rounds": 2})  # a second report of the same run keeps one results run

    runs = MlflowClient(tracking_uri=uri).search_runs([exp.experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted(["demo/site-1", "demo/site-2", "demo/results"] * 2)
    for launch, curve in curves.items():
        mine = [r for r in runs if r.data.tags.get("launch") == launch]
        assert len(mine) == 3
        for run in mine:
            assert run.data.params["num_rounds"] == "2" and run.data.params["git_commit"] == "abc1234"
            if run.info.run_name != "demo/results":
                history = client.get_metric_history(run.info.run_id, "val_dice")
                assert [m.value for m in sorted(history, key=lambda m: m.step)] == curve
        results = next(r for r in mine if r.info.run_name == "demo/results")
        files = {f.path for f in client.list_artifacts(results.info.run_id, "results")}
        assert {"results/summary.md", "results/cross_site.png"} <= files
    assert {r.data.params["seed"] for r in runs} == {"0", "1"}
