"""A server folder whose MLflow store looks like one NVFlare's receiver wrote on another machine."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

SITES = ("site-1", "site-2")
VAL_DICE = {"site-1": [0.20, 0.45, 0.61], "site-2": [0.10, 0.38, 0.55]}


@pytest.fixture(scope="session")
def _finished_job_template(tmp_path_factory):
    """Built once: creating an MLflow SQLite store runs its migrations (~10 s on a loaded 2-core machine)."""
    return _build(tmp_path_factory.mktemp("mlflow_job"))


@pytest.fixture()
def finished_job(_finished_job_template, tmp_path):
    """A fresh copy of the finished job per test (tests modify the store)."""
    server = tmp_path / "result" / "workspace"
    shutil.copytree(_finished_job_template.server, server)
    return SimpleNamespace(server=server, sites=SITES, val_dice=VAL_DICE)


def _build(tmp_path):
    """``.server``: a folder with mlflow.db (per-site runs, stale artifact paths), app_server models, summary files;
    ``.sites`` and ``.val_dice`` (per site, per round) as logged."""
    from mlflow.tracking import MlflowClient

    server = tmp_path / "result" / "workspace"
    (server / "app_server").mkdir(parents=True)
    (server / "app_server" / "FL_global_model.pt").write_bytes(b"\0" * 2048)
    (server / "summary.md").write_text("| site | round 0 |\n|---|---|\n| site-1 | 0.61 |\n")
    (server / "cross_site_val").mkdir()
    (server / "cross_site_val" / "cross_val_results.json").write_text(json.dumps(
        {s: {"SRV_FL_global_model.pt": {"test_dice": 0.5 + i / 10}} for i, s in enumerate(SITES)}))
    client = MlflowClient(tracking_uri=f"sqlite:///{server / 'mlflow.db'}")
    # as the receiver does: artifacts under the server's run folder, which no longer exists here
    exp = client.create_experiment("demo_job-experiment", artifact_location="file:///gone/job123/artifacts")
    for site in SITES:
        run = client.create_run(exp, run_name=f"{site}-job123-demo_job", tags={"job_id": "job123"})
        client.log_param(run.info.run_id, "lr", "0.001")
        for step, value in enumerate(VAL_DICE[site]):
            client.log_metric(run.info.run_id, "val_dice", value, step=step)
        client.set_terminated(run.info.run_id)
    return SimpleNamespace(server=server, sites=SITES, val_dice=VAL_DICE)


# ---- a project store (one per project, jobs.console.tracking_config) as the receiver and publish_results fill it

def receiver_run(client, exp, site, job, launch, job_id, curve):
    """A site run as NVFlare's MLflow receiver creates it with jobs.console.tracking_config's kw_args."""
    name = f"{site}-{job_id[:6]}-{job}-{launch}"
    run = client.create_run(exp, run_name=name, tags={"job_id": job_id, "run_name": name, "job": job,
                                                       "launch": launch})
    for step, value in enumerate(curve):
        client.log_metric(run.info.run_id, "val_dice", value, step=step)
    client.set_terminated(run.info.run_id)


def server_dir(tmp_path, launch, uri):
    server = tmp_path / launch / "server" / "simulate_job"
    (server / "app_server" / "config").mkdir(parents=True, exist_ok=True)
    (server / "app_server" / "FL_global_model.pt").write_bytes(b"\0" * 16)
    (server / "summary.md").write_text("Run settings\n")
    (server / "cross_site.png").write_bytes(b"\x89PNG")
    (server / "app_server" / "config" / "config_fed_server.json").write_text(json.dumps({"components": [
        {"id": "receiver", "path": "nvflare.app_opt.tracking.mlflow.mlflow_receiver.MLflowReceiver",
         "args": {"tracking_uri": uri, "kw_args": {"experiment_name": "demo", "run_name": launch,
                                                   "run_tags": {"job": "demo", "launch": launch}}}}]}))
    return server


#: the val_dice curve of each launch (both sites) in :func:`two_launches`
LAUNCH_CURVES = {"100": [0.10, 0.30, 0.45], "200": [0.20, 0.60, 0.70]}


def build_two_launches(tmp_path):
    """Two launches (``100``, ``200``) of job ``demo`` in one project store ``<tmp_path>/mlruns/mlflow.db``,
    published as a finished run is (site runs renamed ``demo/<site>``, a ``demo/results`` run per launch).

    Returns ``.store`` (the folder holding mlflow.db), ``.uri``, ``.experiment_id`` and ``.runs``:
    ``{launch: {run name: run id}}``."""
    from mlflow.tracking import MlflowClient

    from jobs.console import ensure_experiment
    from src.reporting.mlflow_results import publish_results

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    ensure_experiment(uri, "demo")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("demo")
    for i, (launch, curve) in enumerate(LAUNCH_CURVES.items()):
        for site in SITES:
            receiver_run(client, exp.experiment_id, site, "demo", launch, f"17000{i}0000", curve)
        publish_results(server_dir(tmp_path, launch, uri), job_name="demo", key_metric="val_dice",
                        tracking_uri=uri, launch=launch, params={"num_rounds": 3, "seed": i})
    runs: dict[str, dict[str, str]] = {}
    for run in client.search_runs([exp.experiment_id]):
        runs.setdefault(run.data.tags["launch"], {})[run.info.run_name] = run.info.run_id
    return SimpleNamespace(store=tmp_path / "mlruns", uri=uri, experiment_id=exp.experiment_id, runs=runs)


@pytest.fixture()
def two_launches(tmp_path):
    return build_two_launches(tmp_path)
