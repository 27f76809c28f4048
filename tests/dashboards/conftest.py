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
