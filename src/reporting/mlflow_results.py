"""Add a finished job's final model and result table to its MLflow store, beside the per-site runs.

NVFlare's MLflow receiver fills one run per site (metrics per round, the configuration as parameters) in the
experiment ``<job>-experiment`` of ``<server dir>/mlflow.db``. What it cannot log is what exists only after the job:
the final global model and the per-site / cross-site result table. :func:`publish_results` adds them as artifacts of
one more run, ``<job>-results``, with the cross-site scores of the global model as metrics.

The receiver stores artifact locations as absolute paths inside the server's job folder; after a POC or production
result is downloaded (or a workspace moved) they point nowhere. :func:`relocate_artifacts` re-points them at the
same relative place under the folder the database now lives in (MLflow has no API for moving an experiment, so this
rewrites the two URI columns of the SQLite store).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

__all__ = ["publish_results", "relocate_artifacts", "tracking_uri", "continue_site_runs", "RESULTS_RUN_SUFFIX"]

RESULTS_RUN_SUFFIX = "-results"
ARTIFACT_DIR = "artifacts"  # the receiver's default artifact_location, relative to the server's run folder
MODEL_FILES = ("FL_global_model.pt", "best_FL_global_model.pt")
TABLE_FILES = ("summary.md", "summary.json", "learning_curves.png", "cross_site.md", "cross_site.png",
               "cross_site_val/cross_val_results.json")


def tracking_uri(server_dir: str | Path) -> str:
    return f"sqlite:///{Path(server_dir).resolve() / 'mlflow.db'}"


def relocate_artifacts(server_dir: str | Path) -> int:
    """Point receiver-made experiments (location ``.../artifacts``) and their runs at ``server_dir/artifacts``.

    Returns the number of rows changed (0 when the store already lives where it was written).
    """
    server_dir = Path(server_dir).resolve()
    db = server_dir / "mlflow.db"
    if not db.exists():
        raise FileNotFoundError(f"no MLflow store at {str(db)!r}")
    new_root = (server_dir / ARTIFACT_DIR).as_uri()
    changed = 0
    with sqlite3.connect(db) as con:
        experiments = con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
        for experiment_id, old_root in experiments:
            if not (old_root or "").endswith(f"/{ARTIFACT_DIR}") or old_root == new_root:
                continue  # not made by the receiver (MLflow's Default experiment), or already in place
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                        (new_root, experiment_id))
            runs = con.execute("SELECT run_uuid, artifact_uri FROM runs WHERE experiment_id = ?", (experiment_id,))
            for run_id, uri in runs.fetchall():
                if uri and uri.startswith(old_root + "/"):
                    con.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?",
                                (new_root + uri[len(old_root):], run_id))
                    changed += 1
            changed += 1
    (server_dir / ARTIFACT_DIR).mkdir(exist_ok=True)
    return changed


def _job_experiment(client, job_name: str | None):
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    if job_name:
        experiments = [e for e in experiments if e.name.startswith(job_name)] or experiments
    if not experiments:
        raise LookupError("the MLflow store holds no experiment of an NVFlare job (was --tracking mlflow on?)")
    return experiments[0]


def _site_of(run, job: str, launch: str) -> str | None:
    """The site of a receiver-made run (``<site>-<job id[:6]>-<job>-<launch>``)."""
    name = run.data.tags.get("run_name") or run.info.run_name or ""
    suffix = f"-{run.data.tags.get('job_id', '')[:6]}-{job}-{launch}"
    return name[: -len(suffix)] if name.endswith(suffix) else None


def _site_runs(client, job: str, launch: str) -> dict:
    """``{site: run}`` of the receiver-made site runs of one launch of ``job`` (deleted ones included)."""
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name(job)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.launch = '{launch}'",
                              run_view_type=ViewType.ALL)
    out = {}
    for run in runs:
        if run.data.tags.get("role") == "results":
            continue
        site = run.data.tags.get("site") or _site_of(run, job, launch)
        if site:
            out[site] = run
    return out


def continue_site_runs(tracking_uri: str, job: str, old_launch: str, new_launch: str, start_round: int,
                       old_tracking_uri: str | None = None) -> dict[str, str]:
    """Make each site's run of a resumed launch carry the whole curve: copy the resumed-from launch's points of
    rounds ``< start_round`` into it, then delete (MLflow's soft delete, ``restore_run`` undoes it) the earlier run.

    Points of rounds ``>= start_round`` of the earlier run (a round it did not finish) are not copied: the resumed
    run ran those rounds again. Returns ``{site: run id}`` of the continued runs. The earlier run gets the tag
    ``continued_in``, the continued run ``resumed_from_run``.
    """
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    new_client = MlflowClient(tracking_uri=tracking_uri)
    old_client = MlflowClient(tracking_uri=old_tracking_uri or tracking_uri)
    new_runs = _site_runs(new_client, job, new_launch)
    old_runs = _site_runs(old_client, job, old_launch)
    continued = {}
    for site, new in sorted(new_runs.items()):
        old = old_runs.get(site)
        if old is None:
            continue
        points = []
        for key in old.data.metrics:
            points += [Metric(m.key, m.value, m.timestamp, m.step)
                       for m in old_client.get_metric_history(old.info.run_id, key) if m.step < start_round]
        for i in range(0, len(points), 1000):  # MLflow's log_batch limit
            new_client.log_batch(new.info.run_id, metrics=points[i:i + 1000])
        new_client.set_tag(new.info.run_id, "resumed_from_run", old.info.run_id)
        old_client.set_tag(old.info.run_id, "continued_in", new.info.run_id)
        if old.info.lifecycle_stage == "active":
            old_client.delete_run(old.info.run_id)
        continued[site] = new.info.run_id
    return continued


def _log_params(client, run_id: str, params: dict) -> None:
    existing = client.get_run(run_id).data.params
    for key, value in params.items():
        value = str(value)[:250]
        if key not in existing:
            client.log_param(run_id, key, value)


def publish_results(server_dir: str | Path, job_name: str | None = None, key_metric: str | None = None, *,
                    tracking_uri: str | None = None, launch: str | None = None, params: dict | None = None) -> str:
    """Log the final/best global models and the result table as artifacts of a results run.

    Args:
        server_dir: the job's server folder (holds ``app_server/``, ``summary.md``; ``mlflow.db`` when the job
            used NVFlare's per-job store).
        job_name: picks the experiment (``<job_name>`` in a project store, ``<job_name>-experiment`` in a per-job
            store); default: the only NVFlare experiment.
        key_metric: unused for selection; logged as a tag so the dashboard says which metric ranks models.
        tracking_uri: the project store the job's receiver wrote to (default: ``<server_dir>/mlflow.db``).
        launch: the ``launch`` tag of this run's site runs (see ``jobs.console.tracking_config``): they are renamed
            ``<job>/<site>`` and the results run is ``<job>/results``; without it the results run is
            ``<job>-results`` (one per per-job store).
        params: the run's settings and learner configuration, logged as parameters of every run of this launch.

    Returns:
        The id of the results run (an earlier results run of the same launch or per-job store is replaced).
    """
    from mlflow.tracking import MlflowClient

    server_dir = Path(server_dir).resolve()
    if tracking_uri is None:
        relocate_artifacts(server_dir)
        tracking_uri = f"sqlite:///{server_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(job_name) if job_name and launch else None
    experiment = experiment or _job_experiment(client, job_name)
    # MLflow 3's UI opens untyped experiments as GenAI (traces); ours are model training with metric curves
    client.set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind", "custom_model_development")
    job = job_name or experiment.name.removesuffix("-experiment")
    if launch:
        name = f"{job}/results"
        site_runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.launch = '{launch}'")
        old_results = [r for r in site_runs if r.data.tags.get("role") == "results"]
        site_runs = [r for r in site_runs if r.data.tags.get("role") != "results"]
        for run in site_runs:
            site = _site_of(run, job, launch)
            if site:
                client.set_tag(run.info.run_id, "mlflow.runName", f"{job}/{site}")
                client.set_tag(run.info.run_id, "site", site)
    else:
        name = experiment.name.removesuffix("-experiment") + RESULTS_RUN_SUFFIX
        old_results = client.search_runs([experiment.experiment_id],
                                          filter_string=f"tags.mlflow.runName = '{name}'")
        site_runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("role") != "results"]
    for old in old_results:
        client.delete_run(old.info.run_id)
    tags = {"mlflow.runName": name, "role": "results"}
    if launch:
        tags["launch"] = launch
    if site_runs and "job_id" in site_runs[0].data.tags:
        tags["job_id"] = site_runs[0].data.tags["job_id"]
    if key_metric:
        tags["key_metric"] = key_metric
    run = client.create_run(experiment.experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    if site_runs:  # the configuration is the same at every site
        _log_params(client, run_id, site_runs[0].data.params)
    if params:
        for target in [run_id] + [r.info.run_id for r in site_runs]:
            _log_params(client, target, params)
    for model in MODEL_FILES:
        path = server_dir / "app_server" / model
        if path.exists():
            client.log_artifact(run_id, str(path), artifact_path="model")
    for table in TABLE_FILES:
        path = server_dir / table
        if path.exists():
            client.log_artifact(run_id, str(path), artifact_path="results")
    cross = server_dir / "cross_site_val" / "cross_val_results.json"
    if cross.exists():
        for site, models in json.loads(cross.read_text()).items():
            for metric, value in models.get("SRV_FL_global_model.pt", {}).items():
                client.log_metric(run_id, f"{metric}_global_{site}", float(value))
    client.set_terminated(run_id)
    return run_id
