"""The FedMRI job: export-and-inspect, bad input before training, and a two-round simulator run (sim)."""

import json
import re

import h5py
import pytest

from tests.helpers import load_job


def _args(data, *extra):
    return ["--sites", "site-1", "site-2", "--data-root", str(data["data"]), "--datalist-dir",
            str(data["datalists"]), "--channels", "4", "--num-pools", "2", "--batch-size", "2", "--tracking", "none",
            *extra]


def test_export_wires_server_aggregator_filter_and_config(tiny_mri, tmp_path):
    from src.config.fedmri import FedMRIConfig
    from src.learners.fedmri import build_fedmri_model
    from src.models.fastmri_unet import encoder_decoder_keys

    out = tmp_path / "job"
    assert load_job("fedmri").main(_args(tiny_mri, "--env", "export", "--export-dir", str(out), "--negatives", "exact",
                                         "--relay-snapshots")) == 0
    server = json.loads((out / "app" / "config" / "config_fed_server.json").read_text())
    controller = server["workflows"][0]
    assert controller["path"].endswith("FedMRIFedAvg")
    args = controller["args"]
    encoder, decoder = encoder_decoder_keys(build_fedmri_model(FedMRIConfig(channels=4, num_pools=2)))
    assert args["negatives"] == "exact" and args["relay_snapshots"] is True and args["shared_keys"] == encoder
    assert args["aggregator"]["path"].endswith("EncoderAverageAggregator")
    client = json.loads((out / "app" / "config" / "config_fed_client.json").read_text())
    filters = [f for chain in client.get("task_result_filters", []) for f in chain["filters"]
               if f["path"].endswith("ExcludeVars")]
    assert filters and filters[0]["args"]["exclude_vars"] == decoder
    staged = json.loads((out / "app" / "custom" / "learner_config.json").read_text())
    assert staged["learner"].endswith("FedMRILearner") and staged["config"]["relay_snapshot"] is True
    assert staged["config"]["masks"]["site-3"]["mask_type"] == "radial"
    assert (out / "app" / "custom" / "src" / "aggregators" / "fedmri.py").is_file()


def test_baselines_export_their_own_key_split(tiny_mri, tmp_path):
    out = tmp_path / "job"
    assert load_job("fedmri").main(_args(tiny_mri, "--env", "export", "--export-dir", str(out),
                                         "--algorithm", "fedavg")) == 0
    server = json.loads((out / "app" / "config" / "config_fed_server.json").read_text())
    assert server["workflows"][0]["args"]["negatives"] == "none"
    client = json.loads((out / "app" / "config" / "config_fed_client.json").read_text())
    assert not [f for chain in client.get("task_result_filters", []) for f in chain["filters"]
                if f["path"].endswith("ExcludeVars")]


def test_bad_input_fails_before_training_naming_the_file(tiny_mri, tmp_path, capsys):
    job = load_job("fedmri")
    path = tiny_mri["data"] / "site-2" / "site-2_vol1.h5"
    with h5py.File(path, "r+") as f:
        del f["kspace"]
    # exit 2 with the cause on one line (no traceback), nothing started
    assert job.main(_args(tiny_mri, "--num-rounds", "1", "--workspace", str(tmp_path / "ws"))) == 2
    assert re.search(r"site-2_vol1.h5.*no 'kspace'", capsys.readouterr().err)
    assert not (tmp_path / "ws").exists()
    with pytest.raises(SystemExit):
        job.parse_args(_args(tiny_mri, "--mask", "site-1=spiral:4:0.08:1"))


@pytest.mark.slow
@pytest.mark.sim
def test_two_round_simulator_run_sends_no_decoder_key(tiny_mri, tmp_path):
    from src.config.fedmri import FedMRIConfig
    from src.learners.fedmri import build_fedmri_model
    from src.models.fastmri_unet import encoder_decoder_keys

    assert load_job("fedmri").main(_args(tiny_mri, "--num-rounds", "2", "--workspace", str(tmp_path / "ws"),
                                         "--no-cross-site-eval", "--threads", "1")) == 0
    traffic = list((tmp_path / "ws").rglob("fedmri_traffic.json"))
    assert traffic, "the server wrote no traffic record"
    record = json.loads(traffic[0].read_text())
    encoder, decoder = encoder_decoder_keys(build_fedmri_model(FedMRIConfig(channels=4, num_pools=2)))
    assert sorted(record["received_keys"]) == ["site-1", "site-2"]
    for keys in record["received_keys"].values():
        assert set(keys) == set(encoder) and not set(keys) & set(decoder)
    assert len(record["model_bytes_per_round"]) == 2
    assert record["extras_bytes_per_round"][0] == 0 and record["extras_bytes_per_round"][1] > 0  # L_con from round 2
    # the sites kept their personalised model and state locally
    assert list((tmp_path / "ws").rglob("site-1_personalised_best_model.pt"))
    assert list((tmp_path / "ws").rglob("site-2_state.pt"))
