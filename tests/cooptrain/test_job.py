"""The cooperative-training job: export-and-inspect per option (cheap) and a two-round simulator run (sim, slow)."""

import json
from pathlib import Path

import pytest

from tests.helpers import load_job


def _args(data, *extra):
    return ["--data-root", str(data["data"]), "--datalist-dir", str(data["datalists"]), "--tracking", "none",
            "--crop-size", "32", "--pad-size", "48", "--base-channels", "4", "--code-channels", "8", *extra]


def _export(data, tmp_path, *extra):
    out = tmp_path / "job"
    assert load_job("cooptrain").main(_args(data, "--env", "export", "--export-dir", str(out), *extra)) == 0
    server = json.loads((out / "app" / "config" / "config_fed_server.json").read_text())
    client = json.loads((out / "app" / "config" / "config_fed_client.json").read_text())
    staged = json.loads((out / "app" / "custom" / "learner_config.json").read_text())
    excluded = [f["args"]["exclude_vars"] for chain in client.get("task_result_filters", [])
                for f in chain["filters"] if f["path"].endswith("ExcludeVars")]
    return server, staged, excluded


def _model():
    from src.models.cooperative_net import CooperativeNet

    return CooperativeNet(base_channels=4, code_channels=8)


def test_fedavg_export_stages_the_learner_and_sends_everything(coop_data, tmp_path):
    server, staged, excluded = _export(coop_data, tmp_path)
    assert staged["learner"].endswith("CoopTrainLearner") and staged["config_class"].endswith("CoopTrainConfig")
    assert staged["config"]["latent_da"] is True and staged["config"]["hard_example_bn"] == "reference"
    assert staged["config"]["algorithm"] == "fedavg" and not excluded
    assert server["workflows"][0]["args"]["num_clients"] == 4  # acdc + three vendors


def test_fedbn_export_filters_every_norm_key(coop_data, tmp_path):
    from src.models.key_groups import norm_keys

    _, staged, excluded = _export(coop_data, tmp_path, "--algorithm", "fedbn", "--no-latent-da")
    assert staged["config"]["latent_da"] is False
    assert excluded and excluded[0] == norm_keys(_model())


def test_share_anatomy_export_filters_the_image_decoder(coop_data, tmp_path):
    _, _, excluded = _export(coop_data, tmp_path, "--algorithm", "share-anatomy")
    expected = [k for k in _model().state_dict() if k.startswith("image_decoder.")]
    assert excluded and excluded[0] == expected


def test_loso_trains_all_but_the_held_out_vendor(coop_data, tmp_path):
    server, _, _ = _export(coop_data, tmp_path, "--mode", "loso", "--held-out", "vendor-C")
    args = server["workflows"][0]["args"]
    assert args["train_sites"] == ["acdc", "vendor-A", "vendor-B"] and args["num_clients"] == 4


def test_centralised_pools_every_site_into_one_client(coop_data, tmp_path):
    server, staged, _ = _export(coop_data, tmp_path, "--mode", "centralised")
    assert server["workflows"][0]["args"]["num_clients"] == 1
    pooled = Path(staged["config"]["datalist_dir"]) / "central.json"
    payload = json.loads(pooled.read_text())
    assert {it["site"] for it in payload["training"]} == {"acdc", "vendor-A", "vendor-B", "vendor-C"}


def test_option_rules(coop_data):
    job = load_job("cooptrain")
    for bad in (["--mode", "loso"], ["--mode", "loso", "--held-out", "acdc"], ["--held-out", "vendor-C"]):
        with pytest.raises(SystemExit):
            job.parse_args(_args(coop_data, *bad))


@pytest.mark.sim
@pytest.mark.slow
def test_simulator_two_rounds_two_sites(coop_data, tmp_path):
    job = load_job("cooptrain")
    assert job.main(_args(coop_data, "--sites", "acdc", "vendor-A", "--num-rounds", "2", "--batch-size", "2",
                          "--slices-per-volume", "1", "--workspace", str(tmp_path / "ws"),
                          "--no-cross-site-eval")) == 0
    assert list((tmp_path / "ws").rglob("acdc_last_model.pt")) and list((tmp_path / "ws").rglob("vendor-A_state.pt"))
    assert list((tmp_path / "ws").rglob("FL_global_model.pt"))
