"""The IOP-FL job: export-and-inspect (cheap) and one short simulator run of inside + outside (sim, slow)."""

import json

import pytest

from tests.helpers import load_job


def _args(data, *extra):
    return ["--sites", "BIDMC", "HK", "ISBI", "--data-root", str(data["data"]), "--datalist-dir",
            str(data["datalists"]), "--features", "4", "8", "16", "--tracking", "none", *extra]


def test_export_wires_controller_aggregator_and_held_out_site(tiny_prostate, tmp_path):
    job = load_job("iopfl")
    out = tmp_path / "job"
    assert job.main(_args(tiny_prostate, "--env", "export", "--export-dir", str(out), "--ood-test", "ISBI",
                          "--export-personalised")) == 0
    server = json.loads((out / "app" / "config" / "config_fed_server.json").read_text())
    controller = server["workflows"][0]
    assert controller["path"].endswith("IOPFLFedAvg")
    args = controller["args"]
    assert args["train_sites"] == ["BIDMC", "HK"] and args["ood_site"] == "ISBI" and args["export_personalised"]
    assert args["aggregator"]["path"].endswith("WeightedFedAvgAggregator")
    staged = json.loads((out / "app" / "custom" / "learner_config.json").read_text())
    assert staged["learner"].endswith("IOPFLLearner") and staged["config"]["export_personalised"] is True
    assert (out / "app" / "custom" / "src" / "models" / "routed_conv.py").is_file()


def test_fedbn_export_filters_norm_keys_out_of_every_result(tiny_prostate, tmp_path):
    from src.models.unet2d import UNet2D, norm_keys

    out = tmp_path / "job"
    assert load_job("iopfl").main(_args(tiny_prostate, "--env", "export", "--export-dir", str(out),
                                        "--algorithm", "fedbn")) == 0
    client = json.loads((out / "app" / "config" / "config_fed_client.json").read_text())
    filters = [f for chain in client.get("task_result_filters", []) for f in chain["filters"]
               if f["path"].endswith("ExcludeVars")]
    assert filters, "no outgoing ExcludeVars filter on the clients"
    expected = norm_keys(UNet2D(features=(4, 8, 16)))
    assert expected and filters[0]["args"]["exclude_vars"] == expected


def test_job_option_rules(tiny_prostate):
    job = load_job("iopfl")
    with pytest.raises(SystemExit):
        job.parse_args(_args(tiny_prostate, "--ood-test", "UCL"))  # not one of the sites
    with pytest.raises(SystemExit):
        job.parse_args(_args(tiny_prostate, "--ood-test", "ISBI", "--algorithm", "fedbn"))


@pytest.mark.sim
def test_simulator_inside_and_outside(tiny_prostate, tmp_path):
    job = load_job("iopfl")
    assert job.main(_args(tiny_prostate, "--num-rounds", "2", "--ood-test", "ISBI", "--export-personalised",
                          "--tta-passes", "1", "--workspace", str(tmp_path / "ws"), "--no-cross-site-eval")) == 0
    outside = list((tmp_path / "ws").rglob("iopfl_outside.json"))
    assert outside, "the server wrote no outside scores"
    result = json.loads(outside[0].read_text())
    assert result["experts_from"] == ["BIDMC", "HK"] and result["refused"] == []
    assert 0.0 <= result["metrics"]["routing_last_ood_dice"] <= 1.0
    # the personalised models stayed on their sites until the opt-in export: the sites wrote them locally
    assert list((tmp_path / "ws").rglob("BIDMC_personal_best_model.pt"))
