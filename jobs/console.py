"""A job's console, dashboards and final report: the options and steps every job script shares.

- ``--verbose``: NVFlare's, ignite's and MLflow's INFO logs on the console too (default: only one line per site
  per round, one server line per round, errors, then the report; everything else is in the run's log files).
- ``--tracking-uri``: the MLflow store every run of the project writes to (default: ``<workspace>/mlruns``,
  one SQLite store); each job is an experiment, each site's run is named ``<job>/<site>``.
- :func:`run_settings`: the run's settings (rounds, epochs, algorithm, sites, seed, data root, git commit) that
  head ``summary.md`` and become MLflow parameters.

Nothing here imports torch or NVFlare at module level (``--help`` stays fast).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["add_console_options", "sim_log_config", "tracking_uri_of", "tracking_config", "run_settings", "finish"]


def add_console_options(p) -> None:
    """``--verbose`` and ``--tracking-uri`` on a job's parser."""
    p.add_argument("--verbose", action="store_true",
                   help="show NVFlare's, ignite's and MLflow's log lines on the console (always in the log files)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store shared by the project's runs (default: sqlite store in <workspace>/mlruns)")


def quiet_mlflow() -> None:
    """MLflow's own console handler prints INFO lines ("Creating initial MLflow database tables..."): warnings
    only, in this process (also when MLflow is already imported) and in the simulator's processes."""
    import logging

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def uses_project_store(args) -> bool:
    """Simulator runs log to the project's MLflow store; a POC, a production deployment or an exported job keep
    NVFlare's per-job store on the server (downloaded with the result), unless ``--tracking-uri`` names one: a
    path on this machine means nothing on a deployment's server."""
    return args.env == "sim" or bool(getattr(args, "tracking_uri", None))


def tracking_uri_of(args) -> str:
    if getattr(args, "tracking_uri", None):
        return args.tracking_uri
    store = Path(args.workspace).resolve() / "mlruns"
    return f"sqlite:///{store / 'mlflow.db'}"


def sim_log_config(args) -> str | None:
    """The simulator's logging configuration file for this run (None with ``--verbose``: NVFlare's default)."""
    if getattr(args, "verbose", False):
        return None
    from src.reporting.console import write_log_config

    quiet_mlflow()
    path = Path(args.workspace).resolve() / f"{args.name}_log_config.json"
    return str(write_log_config(path))


def tracking_config(args) -> dict:
    """The MLflow receiver's settings: the project store, the job's experiment and this launch's tag.

    ``launch`` tags the runs of this launch so the report can name them ``<job>/<site>`` afterwards (NVFlare's
    receiver names them ``<site>-<id>-<job>-<name>``) and add the run's settings to them.
    """
    args.launch = getattr(args, "launch", None) or f"{int(time.time() * 1000)}"
    if not getattr(args, "verbose", False):
        quiet_mlflow()
    config = {
        "kw_args": {
            "experiment_name": args.name,
            "run_name": args.launch,
            "experiment_tags": {"job": args.name},
            "run_tags": {"job": args.name, "launch": args.launch},
        },
    }
    if uses_project_store(args):
        config["tracking_uri"] = tracking_uri_of(args)
        ensure_experiment(config["tracking_uri"], args.name)
    return config


def ensure_experiment(uri: str, name: str) -> None:
    """Create the job's experiment in a local SQLite store with its artifacts beside the store (the receiver would
    put them in the first run's workspace folder, which the next run of the same job overwrites)."""
    if not uri.startswith("sqlite:///"):
        return
    from mlflow.tracking import MlflowClient

    db = Path(uri.removeprefix("sqlite:///"))
    from data_prep.common import own_folder

    own_folder(db.parent, "jobs MLflow project store")
    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=(db.parent / "artifacts" / name).as_uri(),
                                 tags={"job": name, "mlflow.experimentKind": "custom_model_development"})


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_settings(args, **extra) -> dict:
    """The settings a reader needs to know what a run was (also the MLflow parameters of its runs)."""
    sites = args.sites or [f"site-{i}" for i in range(1, args.n_clients + 1)]
    settings = {
        "job": args.name,
        "algorithm": getattr(args, "algorithm", None) or "fedavg",
        "num_rounds": args.num_rounds,
        "local_epochs": args.local_epochs,
        "sites": ",".join(sites),
        "n_sites": len(sites),
        "seed": args.seed,
        "data_root": str(Path(args.data_root).resolve()),
        "datalist_dir": str(Path(args.datalist_dir).resolve()),
        "env": args.env,
        "git_commit": _git_commit(),
    }
    for key in ("lr", "batch_size", "ood_test", "alpha", "fedprox_mu", "quantize", "privacy"):
        if getattr(args, key, None) not in (None, ""):
            settings[key] = getattr(args, key)
    if hasattr(args, "sim_workers"):
        from jobs.common import parallelism

        settings.update({k: v for k, v in parallelism(args).items() if k != "n_sites"})
    settings.update(extra)
    return settings


def finish(result, args, key_metric: str, **settings) -> dict | None:
    """The report every job prints at the end: settings, round table, cross-site table, paths."""
    if result is None:
        return None
    from src.reporting.summary import report

    if not getattr(args, "verbose", False):
        quiet_mlflow()
    project_store = "mlflow" in _tracking(args) and uses_project_store(args)
    return report(result, key_metric=key_metric, settings=run_settings(args, **settings),
                  tracking_uri=tracking_uri_of(args) if project_store else None,
                  launch=getattr(args, "launch", None))


def _tracking(args) -> tuple:
    return {"tensorboard": ("tensorboard",), "mlflow": ("mlflow",), "both": ("tensorboard", "mlflow"),
            "none": ()}[args.tracking]
