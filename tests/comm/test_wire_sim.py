"""Bytes on the wire in real simulator runs: the summary carries them both ways, and --quantize float16 halves
them against an unquantized run measured in the same test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _run(prostate_data, workspace: Path, quantize: str) -> dict:
    from jobs.common import execute
    from jobs.prostate_fedavg import build_recipe, parse_args
    from src.reporting.summary import report

    args = parse_args(["--n-clients", "2", "--num-rounds", "1", "--local-epochs", "1", "--tracking", "none",
                       "--no-cross-site-eval", "--quantize", quantize, "--seed", "0",
                       "--data-root", str(prostate_data["data_root"]),
                       "--datalist-dir", str(prostate_data["datalist_dir"]), "--workspace", str(workspace)])
    return report(execute(build_recipe(args), args), "val_dice", quiet=True, publish=False)


def _model_bytes() -> int:

    from src.config.tutorial import ProstateConfig
    from src.models.networks import ProstateUNet

    return sum(v.numel() * v.element_size() for v in ProstateUNet(channels=ProstateConfig().channels)
               .state_dict().values())


def _check_summary(summary: dict) -> dict:
    wire = summary["wire_bytes"]
    assert set(wire) == {"site-1", "site-2"}
    for site, dirs in wire.items():
        assert len(dirs["task"]) == 1 and len(dirs["result"]) == 1, (site, dirs)
        assert dirs["task"][0] > 0 and dirs["result"][0] > 0, (site, dirs)
    # the same figures in the files the run leaves: summary.json and summary.md
    server = Path(summary["server_dir"])
    assert json.loads((server / "summary.json").read_text())["wire_bytes"] == wire
    assert "Bytes on the wire per round" in (server / "summary.md").read_text()
    assert len(summary["rounds"]["site-1"]["val_dice"]) == 1  # the round trained and scored after dequantization
    return wire


@pytest.mark.sim
def test_float16_run_sends_about_half_the_model_both_ways(prostate_data, tmp_path):
    wire = _check_summary(_run(prostate_data, tmp_path / "ws", "float16"))
    full = _model_bytes()  # float32 weights + int64 buffers, what an unquantized message carries at least
    for site, dirs in wire.items():
        for d in ("task", "result"):
            assert 0.45 < dirs[d][0] / full < 0.6, (site, d, dirs[d][0], full)


@pytest.mark.sim
@pytest.mark.slow
def test_float16_halves_the_site_to_server_bytes_against_none_in_the_same_test(prostate_data, tmp_path):
    none = _check_summary(_run(prostate_data, tmp_path / "none", "none"))
    half = _check_summary(_run(prostate_data, tmp_path / "half", "float16"))
    full = _model_bytes()
    for site in ("site-1", "site-2"):
        assert 1.0 <= none[site]["result"][0] / full < 1.1, none[site]  # the whole model plus NVFlare's encoding
        assert none[site]["task"][0] >= full
        ratio = half[site]["result"][0] / none[site]["result"][0]
        assert 0.45 < ratio < 0.6, (site, ratio)
        assert 0.45 < half[site]["task"][0] / none[site]["task"][0] < 0.6, site
    # the in-process comparisons' figure (benchmarks/_wire.py: NVFlare's serialisation of the FLModel the job
    # sends, without its transport) agrees with what this run's server counted, headers aside
    in_process = _in_process_bytes()
    for site in ("site-1", "site-2"):
        for direction, measured in (("task", "server_to_site"), ("result", "site_to_server")):
            sent = none[site][direction][-1]
            assert abs(in_process[measured] - sent) < 0.002 * sent, (site, direction, in_process[measured], sent)


def _in_process_bytes() -> dict:
    from benchmarks._wire import RoundBytes
    from src.config.tutorial import ProstateConfig
    from src.models.networks import ProstateUNet
    from src.protocol import NUM_STEPS_KEY, TRAIN_SAMPLES_KEY

    state = ProstateUNet(channels=ProstateConfig().channels).state_dict()
    meter = RoundBytes()
    meter.task("fedavg", 0, state, 1)
    meter.result("fedavg", 0, {"params": state, "meta": {NUM_STEPS_KEY: 3, TRAIN_SAMPLES_KEY: 3},
                               "metrics": {"val_dice": 0.1, "val_dice_local": 0.2, "train_loss": 0.3,
                                           "train_seconds": 1.0}})
    return meter.measure()["fedavg"]


@pytest.mark.sim
@pytest.mark.slow
def test_fedbn_with_adaquant_completes_and_the_norms_stay_home(tmp_path):
    """IOP-FL's job with FedBN and ADAQUANT: ExcludeVars, then the quantizer, on every site's result; the run
    completes (the server dequantizes and aggregates updates without the norm keys) and each site's result is
    smaller than the task it received: its norm keys stay home. (On this 31 KB model ADAQUANT's per-key state makes
    the server's task larger than the raw model: measured 34,120 bytes; see docs/communication.md.)"""
    import importlib.util

    from data_prep.multisite_prostate import convert
    from data_prep.synthetic.multisite_prostate import generate
    from src.reporting.summary import report

    root = Path(__file__).resolve().parents[2]
    sites = ["BIDMC", "HK"]
    generate(tmp_path / "raw", n_cases=3, seed=0, sites=sites, matrix=96)
    convert(tmp_path / "raw", tmp_path / "data", tmp_path / "lists", sites=sites, size=32)
    spec = importlib.util.spec_from_file_location("iopfl_job", root / "jobs" / "iopfl.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--sites", *sites, "--data-root", str(tmp_path / "data"), "--datalist-dir",
                     str(tmp_path / "lists"), "--features", "4", "8", "16", "--tracking", "none", "--num-rounds", "1",
                     "--local-epochs", "1", "--no-cross-site-eval", "--algorithm", "fedbn", "--quantize", "adaquant",
                     "--workspace", str(tmp_path / "ws")]) == 0
    summary = report(next((tmp_path / "ws").rglob("summary.json")).parent, "val_dice", quiet=True, publish=False)
    for site in sites:
        dirs = summary["wire_bytes"][site]
        assert 0 < dirs["result"][0] < dirs["task"][0], (site, dirs)
