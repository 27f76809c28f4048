"""Job scripts: --help, export (inspect the generated config), and short simulator runs."""

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
JOBS = ("prostate_fedavg", "mednist_fedavg")
COMMON_OPTIONS = ("--env", "--export-dir", "--n-clients", "--sites", "--num-rounds", "--local-epochs", "--tracking",
                  "--data-root", "--workspace", "--seed")


@pytest.mark.parametrize("job", JOBS)
def test_help_lists_the_common_options(job):
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--help"], capture_output=True, text=True,
                         check=True).stdout
    for option in COMMON_OPTIONS:
        assert option in out


def _export(job, tmp_path, *extra):
    """Export through the job script's ``main`` in this process, from another working directory (a subprocess
    costs a fresh torch/MONAI/NVFlare import, 15-150 s on the loaded machine; the script as a script is covered by
    test_help_lists_the_common_options and tests/newcomer/test_preflight.py)."""
    import contextlib

    from tests.helpers import load_job

    out = tmp_path / "job"
    with contextlib.chdir(tmp_path):
        assert load_job(job).main(["--env", "export", "--export-dir", str(out), "--n-clients", "2", *extra]) == 0
    return out


@pytest.mark.parametrize("job", JOBS)
def test_export_is_self_contained_and_fully_equipped(job, tmp_path):
    out = _export(job, tmp_path)
    custom = out / "app" / "custom"
    assert (custom / "jobs" / "fl_client.py").is_file() and (custom / "src" / "learners" / "base.py").is_file()
    staged = json.loads((custom / "learner_config.json").read_text())
    assert staged["learner"].startswith("src.learners.") and staged["config"]["n_clients"] == 2
    client = json.loads((out / "app" / "config" / "config_fed_client.json").read_text())
    executor = client["executors"][0]["executor"]
    assert executor["args"]["task_script_path"] == "jobs/fl_client.py"  # relative: found in custom/, not the checkout
    server_text = (out / "app" / "config" / "config_fed_server.json").read_text()
    server = json.loads(server_text)
    assert server["server"]["task_request_interval"] == 0.1
    paths = [c.get("path", "") for c in server["components"]]
    assert any(p.endswith("TBAnalyticsReceiver") for p in paths)
    assert any(p.endswith("MLflowReceiver") for p in paths)
    assert "CrossSiteModelEval" in server_text
    assert "/work/" not in json.dumps(executor)  # no path into the developer's checkout


def test_the_initial_global_model_is_seeded_and_bundled(tmp_path):
    import hashlib

    from jobs.common import execute
    from jobs.prostate_fedavg import build_recipe, parse_args

    digests = []
    for i, seed in enumerate((0, 0, 1)):
        args = parse_args(["--env", "export", "--export-dir", str(tmp_path / f"job{i}"), "--seed", str(seed),
                           "--name", "seeded_job"])
        execute(build_recipe(args), args)
        server = json.loads((tmp_path / f"job{i}" / "app" / "config" / "config_fed_server.json").read_text())
        assert f"seeded_job_seed{seed}_initial.pt" in json.dumps(server)  # the server starts from the bundled file
        ckpt = tmp_path / f"job{i}" / "app" / "custom" / f"seeded_job_seed{seed}_initial.pt"
        digests.append(hashlib.sha256(ckpt.read_bytes()).hexdigest())
    assert digests[0] == digests[1] != digests[2]


def test_tracking_none_adds_no_receivers(tmp_path):
    server = (_export("prostate_fedavg", tmp_path, "--tracking", "none", "--no-cross-site-eval")
              / "app" / "config" / "config_fed_server.json").read_text()
    assert "Receiver" not in server and "CrossSiteModelEval" not in server


def _run_prostate(prostate_data, tmp_path, rounds, epochs, n_clients=2):
    from jobs.common import execute
    from jobs.prostate_fedavg import build_recipe, parse_args

    args = parse_args(["--n-clients", str(n_clients), "--num-rounds", str(rounds), "--local-epochs", str(epochs),
                       "--data-root", str(prostate_data["data_root"]),
                       "--datalist-dir", str(prostate_data["datalist_dir"]), "--workspace", str(tmp_path / "ws")])
    return execute(build_recipe(args), args)


@pytest.mark.sim
def test_prostate_simulator_run_fills_both_dashboards(prostate_data, tmp_path):
    from src.reporting.summary import report

    summary = report(_run_prostate(prostate_data, tmp_path, rounds=2, epochs=1), "val_dice", quiet=True)
    server_dir = Path(summary["server_dir"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for site in ("site-1", "site-2"):
        values = summary["rounds"][site]["val_dice"]
        assert len(values) == 2 and all(np.isfinite(values))
        events = EventAccumulator(str(server_dir / "tb_events" / site)).Reload()
        tags = events.Tags()["scalars"]
        assert {"train_loss", "val_dice", "val_dice_local"} <= {t.split("/")[-1] for t in tags}
        tb_val = [e.value for t in tags if t.endswith("val_dice") for e in events.Scalars(t)]
        assert np.allclose(sorted(tb_val), sorted(values), atol=1e-6)  # the same values NVFlare recorded
    assert set(summary["cross_site"]) == {"site-1", "site-2"}
    assert "SRV_best_FL_global_model.pt" in summary["cross_site"]["site-1"]
    # one MLflow store per project (the workspace's mlruns/), runs named <job>/<site>
    assert not (server_dir / "mlflow.db").exists()
    assert summary["tracking_uri"] == f"sqlite:///{(tmp_path / 'ws' / 'mlruns' / 'mlflow.db').resolve()}"
    with sqlite3.connect(tmp_path / "ws" / "mlruns" / "mlflow.db") as db:
        query = "select r.name, m.key, m.value from metrics m join runs r on m.run_uuid = r.run_uuid"
        rows = db.execute(query).fetchall()
        params = {k for (k,) in db.execute("select key from params")}
    for site in ("site-1", "site-2"):
        keys = {k for name, k, _ in rows if name == f"prostate_fedavg/{site}"}
        assert {"train_loss", "val_dice", "val_dice_local"} <= keys
    assert all(np.isfinite(v) for _, _, v in rows)
    assert {"lr", "local_epochs", "roi_size"} <= params
    assert (server_dir / "summary.md").is_file() and (server_dir / "learning_curves.png").is_file()
    assert (server_dir / "cross_site.png").is_file()
    for site in ("site-1", "site-2"):  # no configuration text cards ahead of the results table in TensorBoard
        assert EventAccumulator(str(server_dir / "tb_events" / site)).Reload().Tags()["tensors"] == []


@pytest.mark.sim
@pytest.mark.slow  # 74-241 s (4 rounds x 5 epochs, 3 sites); the default suite keeps the 2-site simulator runs above
def test_prostate_dice_rises_over_a_longer_run(tmp_path):
    from data_prep.msd_prostate import convert
    from data_prep.synthetic.msd_prostate import generate
    from src.reporting.summary import report

    task = generate(tmp_path / "raw", n_train=18, n_test=0, n_scanners=3, seed=5)
    convert(task, tmp_path / "data", n_sites=3, datalist_dir=tmp_path / "dl")  # 3/2/1 cases per site
    data = {"data_root": tmp_path / "data", "datalist_dir": tmp_path / "dl"}
    summary = report(_run_prostate(data, tmp_path, rounds=4, epochs=5, n_clients=3), "val_dice", quiet=True)
    final = [summary["rounds"][s]["val_dice"][-1] for s in ("site-1", "site-2", "site-3")]
    first = [summary["rounds"][s]["val_dice"][0] for s in ("site-1", "site-2", "site-3")]
    assert np.mean(final) > 0.5 and np.mean(final) > np.mean(first) + 0.2


@pytest.mark.sim
def test_a_failing_site_fails_the_job_instead_of_hanging(prostate_data, tmp_path):
    import shutil
    import time

    datalists = tmp_path / "datalists"
    datalists.mkdir()
    shutil.copy(prostate_data["datalist_dir"] / "site-1.json", datalists)  # site-2 has no datalist
    data = {"data_root": prostate_data["data_root"], "datalist_dir": datalists}
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="Simulation failed"):
        _run_prostate(data, tmp_path, rounds=2, epochs=1)
    assert time.monotonic() - start < 240
    logs = "".join(p.read_text() for p in (tmp_path / "ws").rglob("site-2/log.txt"))
    assert "site-2.json" in logs and "does not exist" in logs  # the reason is in the failing site's log


@pytest.mark.sim
def test_mednist_simulator_run(mednist_data, tmp_path):
    from jobs.common import execute
    from jobs.mednist_fedavg import build_recipe, parse_args
    from src.reporting.summary import report

    args = parse_args(["--n-clients", "2", "--num-rounds", "1", "--batch-size", "8", "--tracking", "tensorboard",
                       "--data-root", str(mednist_data["data_root"]),
                       "--datalist-dir", str(mednist_data["datalist_dir"]), "--workspace", str(tmp_path / "ws")])
    summary = report(execute(build_recipe(args), args), "val_accuracy", quiet=True)
    assert all(0 <= summary["rounds"][s]["val_accuracy"][0] <= 1 for s in ("site-1", "site-2"))
    assert "test_accuracy" in summary["cross_site"]["site-1"]["site-2"]
