"""Privacy filters (--privacy): options, the filter in the exported client config, and one short simulator run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from src.privacy.filters import PrivacySettings, build_filter


def _export(tmp_path, job="prostate_fedavg", *extra):
    import importlib

    from jobs.common import execute

    module = importlib.import_module(f"jobs.{job}")
    out = tmp_path / "job"
    args = module.parse_args(["--env", "export", "--export-dir", str(out), "--n-clients", "2", *extra])
    execute(module.build_recipe(args), args)
    client = json.loads((out / "app" / "config" / "config_fed_client.json").read_text())
    return client


def _output_filters(client: dict) -> list[dict]:
    return [f for chain in client.get("task_result_filters", []) for f in chain["filters"]]


def _transfer_type(client: dict) -> str:
    # NVFlare writes only non-default arguments: absent means its default, FULL
    return client["executors"][0]["executor"]["args"].get("params_transfer_type", "FULL")


def test_no_filter_by_default_and_full_weights(tmp_path):
    client = _export(tmp_path)
    assert _output_filters(client) == [] and _transfer_type(client) == "FULL"


@pytest.mark.parametrize("job", ["prostate_fedavg", "mednist_fedavg"])
def test_percentile_lands_on_the_train_task_on_weight_differences(tmp_path, job):
    client = _export(tmp_path, job, "--privacy", "percentile", "--privacy-percentile", "25", "--privacy-gamma", "0.5")
    [chain] = client["task_result_filters"]
    assert sorted(chain["tasks"]) == ["submit_model", "train"]  # every model a site sends
    [flt] = chain["filters"]
    assert flt["path"] == "src.privacy.weight_diff.FilterWeightDiff"  # staged in custom/src (BYOC)
    inner = flt["args"]["inner"]
    assert inner["path"].endswith("PercentilePrivacy")
    assert (inner["args"]["percentile"], inner["args"]["gamma"]) == (25.0, 0.5)
    assert inner["args"]["data_kinds"] == ["WEIGHT_DIFF"]  # never thresholds full weights
    [incoming] = client["task_data_filters"]
    assert incoming["tasks"] == ["train"] and incoming["filters"][0]["path"].endswith("RememberGlobalModel")
    assert _transfer_type(client) == "FULL"  # the site still sends global + filtered difference


def test_svt_and_exclude_land_with_their_parameters(tmp_path):
    svt = _output_filters(_export(tmp_path / "a", "prostate_fedavg", "--privacy", "svt", "--svt-fraction", "0.3",
                                  "--svt-epsilon", "2"))[0]["args"]["inner"]
    assert svt["path"].endswith("SVTPrivacy")
    assert (svt["args"]["fraction"], svt["args"]["epsilon"]) == (0.3, 2.0)
    client = _export(tmp_path / "b", "prostate_fedavg", "--privacy", "exclude", "--exclude-vars", r"^model\.0\.")
    [flt] = _output_filters(client)
    assert flt["path"].endswith("ExcludeVars")
    names = flt["args"]["exclude_vars"]  # resolved to names: a compiled regex would export as an empty re.Pattern
    assert names and all(n.startswith("model.0.") for n in names) and "model.0.conv.unit0.conv.weight" in names
    assert _transfer_type(client) == "FULL"  # removing keys works on full weights


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="'dp'"):
        PrivacySettings(kind="dp")
    with pytest.raises(ValueError, match="120"):
        PrivacySettings(kind="percentile", percentile=120)
    with pytest.raises(ValueError, match="exclude-vars"):
        PrivacySettings(kind="exclude")
    with pytest.raises(ValueError, match="'nomatch'"):
        build_filter(PrivacySettings(kind="exclude", exclude_vars="nomatch"), ["a.weight", "b.bias"])
    with pytest.raises(ValueError, match="svt_fraction"):
        PrivacySettings(kind="svt", svt_fraction=0.0)


def test_weight_diff_filter_sends_global_plus_filtered_difference():
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable

    from src.privacy.weight_diff import FilterWeightDiff, RememberGlobalModel

    ctx = FLContext()
    received = {"w": np.full(9, 10.0, np.float32), "n": np.array(4, np.int64)}
    RememberGlobalModel(key="t").process_dxo(DXO(DataKind.WEIGHTS, dict(received)), Shareable(), ctx)
    local = {"w": received["w"] + np.array([-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0], np.float32),
             "n": np.array(4, np.int64)}  # unchanged: 0 joins the percentile computation
    inner = build_filter(PrivacySettings(kind="percentile", percentile=50, gamma=3.0))
    out = FilterWeightDiff(inner, key="t").process_dxo(DXO(DataKind.WEIGHTS, local), Shareable(), ctx).data
    np.testing.assert_array_equal(out["w"], 10.0 + np.array([-3.0, -3.0, -2.0, 0.0, 0.0, 0.0, 2.0, 3.0, 3.0]))
    assert out["w"].dtype == np.float32 and out["n"].dtype == np.int64
    with pytest.raises(KeyError, match="'extra'"):
        FilterWeightDiff(inner, key="t").process_dxo(DXO(DataKind.WEIGHTS, {**local, "extra": np.ones(2)}),
                                                     Shareable(), ctx)
    with pytest.raises(RuntimeError, match="no global model remembered"):
        FilterWeightDiff(inner, key="other").process_dxo(DXO(DataKind.WEIGHTS, local), Shareable(), ctx)


def _dxo(data: dict, steps: int = 1):
    from nvflare.apis.dxo import DXO, DataKind, MetaKey

    return DXO(data_kind=DataKind.WEIGHT_DIFF, data=data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps})


def test_percentile_filter_zeroes_small_differences_and_clips_large_ones():
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable

    diff = {"w": np.array([-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0])}
    out = build_filter(PrivacySettings(kind="percentile", percentile=50, gamma=3.0)).process_dxo(
        _dxo(diff), Shareable(), FLContext())
    # median |w| = 2: |w| < 2 is not shared, the rest is clipped to +-gamma
    np.testing.assert_array_equal(out.data["w"], [-3.0, -3.0, -2.0, 0.0, 0.0, 0.0, 2.0, 3.0, 3.0])


@pytest.mark.sim
def test_simulator_run_with_percentile_filter_completes_and_moves_the_global_model(prostate_data, tmp_path):
    from jobs.common import execute
    from jobs.prostate_fedavg import build_recipe, parse_args
    from src.reporting.summary import report

    args = parse_args(["--n-clients", "2", "--num-rounds", "2", "--local-epochs", "1", "--tracking", "none",
                       "--privacy", "percentile", "--privacy-percentile", "50",
                       "--data-root", str(prostate_data["data_root"]),
                       "--datalist-dir", str(prostate_data["datalist_dir"]), "--workspace", str(tmp_path / "ws")])
    result = execute(build_recipe(args), args)
    summary = report(result, "val_dice", quiet=True)
    for site in ("site-1", "site-2"):
        assert len(summary["rounds"][site]["val_dice"]) == 2
        # cross-site evaluation ran on the sites' filtered best local models (submit_model passes the filter too)
        assert {"site-1", "site-2"} <= set(summary["cross_site"][site])
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "ws").rglob("log.txt"))
    assert "cutoff" in logs  # PercentilePrivacy's own log line: the filter ran on the sites' updates
    import torch

    from jobs.common import INITIAL_MODELS, ROOT

    initial = torch.load(ROOT / INITIAL_MODELS / "prostate_fedavg_seed0_initial.pt", weights_only=True)
    final = torch.load(Path(summary["server_dir"]) / "app_server" / "FL_global_model.pt", weights_only=False)
    final = final.get("model", final)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in final.values())
    # global + mean of the filtered differences: the model moved, but by at most gamma per local step
    moved = [k for k, v in initial.items() if v.is_floating_point() and not torch.equal(torch.as_tensor(final[k]), v)]
    assert moved


def test_weight_diff_filters_work_beside_a_personalised_method(tmp_path):
    # full weights out, so a custom aggregator (IOP-FL's, FedBN's personal-key exclusion) is unaffected
    client = _export(tmp_path, "iopfl", "--algorithm", "fedbn", "--privacy", "svt")
    [chain] = client["task_result_filters"]  # one chain: NVFlare refuses overlapping task sets
    assert sorted(chain["tasks"]) == ["submit_model", "train"]
    names = [f["path"].rsplit(".", 1)[-1] for f in chain["filters"]]
    assert names == ["FilterWeightDiff", "ExcludeVars"]  # FedBN's norms still never leave
    assert _transfer_type(client) == "FULL"
