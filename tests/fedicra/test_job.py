"""The FedICRA job: export-and-inspect, option rules, and two-round simulator runs of both tasks (tiny data).

The FAZ run goes through ``jobs/fedicra.py --env sim`` (``slow``: 1-3 min on a loaded 2-core machine); the ODOC run
exports the job and runs the plain ``nvflare simulator`` on it (``slow``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import load_job

FAST = ["--batch-size", "2", "--iterations-per-round", "3", "--rep-iterations", "1", "--mixing-warmup", "3",
        "--mixing-batches", "1", "--mixing-max-first-epochs", "2", "--threads", "1", "--tracking", "none"]


def _args(data, task, *extra):
    return ["--task", task, "--sites", "site-1", "site-2", "--data-root", str(data[task]["data"]),
            "--datalist-dir", str(data[task]["datalists"]), *FAST, *extra]


def test_export_wires_aggregator_filter_and_config(tiny_fedicra, tmp_path):
    from src.config.fedicra import FedICRAConfig
    from src.learners.fedicra import build_fedicra_model

    out = tmp_path / "job"
    assert load_job("fedicra").main(_args(tiny_fedicra, "odoc", "--env", "export", "--export-dir", str(out),
                                          "--label-form", "site-2:box")) == 0
    server = json.loads((out / "app" / "config" / "config_fed_server.json").read_text())
    aggregator = server["workflows"][0]["args"]["aggregator"]
    assert aggregator["path"] == "src.aggregators.fedavg.FedAvgAggregator"
    assert aggregator["args"].get("weight_key", "NUM_STEPS_CURRENT_ROUND") == "NUM_STEPS_CURRENT_ROUND"
    client = json.loads((out / "app" / "config" / "config_fed_client.json").read_text())
    excluded = [f["args"]["exclude_vars"] for chain in client.get("task_result_filters", [])
                for f in chain["filters"] if f["path"].endswith("ExcludeVars")]
    model = build_fedicra_model(FedICRAConfig(task="odoc", federation_sites=("site-1", "site-2")))
    expected = [k for k in model.state_dict() if k.startswith("channel_selection.")]
    assert expected and excluded == [expected]
    staged = json.loads((out / "app" / "custom" / "learner_config.json").read_text())
    assert staged["learner"] == "src.learners.fedicra.FedICRALearner"
    cfg = staged["config"]
    assert cfg["task"] == "odoc" and cfg["algorithm"] == "fedicra" and cfg["federation_sites"] == ["site-1", "site-2"]
    assert cfg["label_forms"] == {"site-2": "box"} and cfg["weight_decay"] == 0.01 and cfg["lr"] == 0.01
    assert (out / "app" / "custom" / "src" / "data" / "fedicra.py").is_file()


def test_job_option_rules(tiny_fedicra):
    job = load_job("fedicra")
    for bad in (["--label-form", "site-9:box"], ["--label-form", "site-1:circle"], ["--label-form", "site-1"]):
        with pytest.raises(SystemExit):
            job.parse_args(_args(tiny_fedicra, "faz", *bad))
    args = job.parse_args(_args(tiny_fedicra, "faz", "--algorithm", "centralised"))
    assert args.sites == ["pooled"] and args.federation_sites == ["site-1", "site-2"]


def test_bad_data_stops_the_job_before_training(tiny_fedicra, tmp_path):
    """site-2 trains on keypoints (the paper's table); an h5 without them stops the job, naming site and file."""
    import shutil

    import h5py

    from src.data.validation import DataValidationError

    data = tmp_path / "data"
    shutil.copytree(tiny_fedicra["faz"]["data"], data)
    entry = json.loads((tiny_fedicra["faz"]["datalists"] / "site-2.json").read_text())["training"][0]
    with h5py.File(data / entry["image"], "r+") as f:
        del f["keypoint"]
    job = load_job("fedicra")
    args = job.parse_args(_args(tiny_fedicra, "faz", "--data-root", str(data)))
    with pytest.raises(DataValidationError, match=r"site-2 training\[\d\]: keypoint: dataset missing in .*"
                                                  + Path(entry["image"]).name):
        job.build_recipe(args)


def _check_run(workspace: Path):
    server = next(workspace.rglob("app_server"))
    final = torch.load(server / "FL_global_model.pt", weights_only=False)["model"]
    initial = torch.load(next(server.rglob("*_initial.pt")), weights_only=True)
    cs = [k for k in initial if k.startswith("channel_selection.")]
    # no site ever sent its channel selection: the server's copy is still the initial one; the rest moved
    assert cs and all(torch.equal(torch.as_tensor(final[k]), initial[k]) for k in cs)
    assert not torch.equal(torch.as_tensor(final["decoder.out_conv.weight"]), initial["decoder.out_conv.weight"])
    for site in ("site-1", "site-2"):
        local = torch.load(next(workspace.rglob(f"{site}_last_model.pt")), weights_only=True)
        assert not torch.equal(local[cs[0]], initial[cs[0]]), f"{site} never trained its channel selection"
        state = torch.load(next(workspace.rglob(f"{site}_state.pt")), weights_only=True)["fedicra"]
        assert state["iteration"] == 2 * 3 and state["mixer"]["first_call_done"]


@pytest.mark.sim
@pytest.mark.slow  # 52-180 s; default-suite cover: exports of both tasks, option rules, bad data (above) and
# tests/fedicra/test_learner.py (channel selection never sent, state survives a round and a restart, in process)
def test_simulator_two_rounds_faz(tiny_fedicra, tmp_path):
    ws = tmp_path / "ws"
    assert load_job("fedicra").main(_args(tiny_fedicra, "faz", "--num-rounds", "2", "--workspace", str(ws),
                                          "--no-cross-site-eval")) == 0
    _check_run(ws)


@pytest.mark.sim
@pytest.mark.slow
def test_exported_odoc_job_runs_with_plain_nvflare_simulator(tiny_fedicra, tmp_path):
    out, ws = tmp_path / "job", tmp_path / "ws"
    assert load_job("fedicra").main(_args(tiny_fedicra, "odoc", "--num-rounds", "2", "--env", "export", "--export-dir",
                             str(out))) == 0
    nvflare = Path(sys.executable).with_name("nvflare")
    subprocess.run([str(nvflare), "simulator", str(out), "-n", "2", "-t", "2", "-w", str(ws)], check=True,
                   timeout=900, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _check_run(ws)
