"""In-process federated rounds (the job's learner and averaging), leave-one-site-out, and the benchmark's --quick."""

import csv
import json

import pytest
import torch

from benchmarks import cooptrain_compare as bench

from .conftest import tiny_config


def _init():
    from src.models.cooperative_net import CooperativeNet

    torch.manual_seed(0)
    return CooperativeNet(base_channels=4, code_channels=8).state_dict()


def test_two_round_federated_run_averages_the_sites(coop_data, tmp_path):
    init = _init()
    state, learners = bench.run_federated(["acdc", "vendor-A"], lambda s: tiny_config(coop_data), 2, init, tmp_path)
    assert all(lr.round == 2 for lr in learners.values())
    assert any(not torch.equal(init[k], state[k]) for k in init)
    # after the last average, each site's model differs from the global one (its own local round)
    local = learners["acdc"].model.state_dict()
    assert any(not torch.equal(local[k], state[k]) for k in state)


def test_leave_one_site_out_scores_only_the_held_out_vendor(coop_data, tmp_path):
    scores = bench.run_loso(["acdc", "vendor-A", "vendor-C"], "vendor-C", lambda s: tiny_config(coop_data), 1,
                            _init(), tmp_path)
    assert list(scores) == ["vendor-C"]
    assert {"test_dice", "test_dice_lv", "test_dice_myo", "test_dice_rv", "test_hd95"} <= scores["vendor-C"].keys()
    assert (tmp_path / "acdc_last_model.pt").is_file() and (tmp_path / "vendor-A_last_model.pt").is_file()
    assert not list(tmp_path.rglob("vendor-C_last_model.pt"))  # the held-out vendor never trained


def test_summary_and_verdicts_on_known_rows(tmp_path):
    rows = []
    for seed, (ours, base) in enumerate([(0.8, 0.6), (0.7, 0.6), (0.9, 0.6)]):
        for method, value in (("cooperative+latent-DA", ours), ("cooperative", base), ("standard", ours)):
            for site in ("acdc", "acdc-C/spike", "vendor-C"):
                rows += [{"algorithm": "cooptrain", "site": site, "method": f"federated/{method}", "seed": seed,
                          "metric": m, "value": value} for m in bench.METRICS]
    summary = bench.write_outputs(tmp_path, rows, {"test": True})
    cell = summary["federated/cooperative+latent-DA"]["acdc"]["dice"]
    assert cell["n"] == 3 and abs(cell["mean"] - 0.8) < 1e-9 and abs(cell["std"] - 0.1) < 1e-9
    lines = bench.verdicts(rows)
    assert any("federated, held-out: latent DA - cooperative = +0.200" in ln and ln.endswith(": held") for ln in lines)
    assert any("federated, clean: latent DA - standard = +0.000" in ln and "within noise" in ln for ln in lines)
    assert (tmp_path / "cooptrain_compare.png").is_file() and (tmp_path / "cooptrain_compare.md").is_file()


@pytest.mark.slow
def test_quick_benchmark_writes_csv_json_markdown_and_plot(tmp_path):
    """About 40 s on an idle 2-core machine, 95 s under load: slow."""
    out = tmp_path / "out"
    assert bench.main(["--quick", "--seeds", "0", "--settings", "federated", "--out", str(out)]) == 0
    with open(out / "cooptrain_compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["algorithm", "site", "method", "seed", "metric", "value"]
    sets = {r["site"] for r in rows}
    assert {"acdc", "vendor-C", "acdc-C/bias_field", "acdc-C/spike", "acdc-C/ghosting", "acdc-C/motion"} <= sets
    assert {r["method"] for r in rows} == {f"federated/{m}" for m in bench.METHODS}
    assert {r["metric"] for r in rows} == set(bench.METRICS)
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows if r["metric"].startswith("dice"))
    summary = json.loads((out / "cooptrain_compare.json").read_text())
    assert summary["summary"]["federated/standard"]["acdc"]["dice"]["n"] == 1
    assert "latent DA" in (out / "cooptrain_compare.md").read_text()
    assert (out / "cooptrain_compare.png").stat().st_size > 1000
