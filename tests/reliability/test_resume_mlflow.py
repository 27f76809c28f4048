"""A --resume run's MLflow site runs continue the earlier run's curves (quick part, on a store built here; the
simulator end to end: tests/reliability/test_resume.py, slow)."""

from __future__ import annotations

import pytest

JOB = "mednist_fedavg"


def _site_run(client, experiment_id, site, launch, steps, job_id="abcdef123"):
    run = client.create_run(experiment_id, run_name=f"{site}-{job_id[:6]}-{JOB}-{launch}",
                            tags={"job": JOB, "launch": launch, "job_id": job_id})
    for step in steps:
        client.log_metric(run.info.run_id, "val_accuracy", 0.1 * step, step=step)
        client.log_metric(run.info.run_id, "train_loss", 1.0 - 0.1 * step, step=step)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture()
def store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(JOB)
    return uri, client, experiment


def test_each_site_run_of_the_resumed_launch_carries_every_round_once(store):
    from mlflow.entities import ViewType

    from src.reporting.mlflow_results import continue_site_runs

    uri, client, experiment = store
    old = {"site-1": _site_run(client, experiment, "site-1", "111", [0, 1, 2]),  # round 2 interrupted
           "site-2": _site_run(client, experiment, "site-2", "111", [0, 1])}
    new = {s: _site_run(client, experiment, s, "222", [2, 3], job_id="fedcba987") for s in old}
    other = _site_run(client, experiment, "site-1", "999", [0])  # another launch: untouched

    assert continue_site_runs(uri, JOB, "111", "222", start_round=2) == new
    for site, run_id in new.items():
        for key in ("val_accuracy", "train_loss"):
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            assert sorted(steps) == [0, 1, 2, 3], (site, key, steps)
        values = {m.step: m.value for m in client.get_metric_history(run_id, "val_accuracy")}
        assert values[2] == pytest.approx(0.2)  # the resumed run's own round 2, not the interrupted one's
        assert client.get_run(run_id).data.tags["resumed_from_run"] == old[site]
        assert client.get_run(old[site]).info.lifecycle_stage == "deleted"
    active = client.search_runs([experiment], run_view_type=ViewType.ACTIVE_ONLY)
    assert sorted(r.info.run_id for r in active) == sorted([*new.values(), other])
    assert [m.step for m in client.get_metric_history(other, "val_accuracy")] == [0]


def test_sites_without_an_earlier_run_are_left_alone(store):
    from src.reporting.mlflow_results import continue_site_runs

    uri, client, experiment = store
    new = _site_run(client, experiment, "site-3", "222", [2, 3])
    assert continue_site_runs(uri, JOB, "111", "222", start_round=2) == {}
    assert [m.step for m in client.get_metric_history(new, "val_accuracy")] == [2, 3]
