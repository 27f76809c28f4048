"""In-process federated rounds (the job's learner and averaging), leave-one-site-out, and the benchmark's --quick."""

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


def _meta(settings=("federated",)):
    return {"algorithm": "cooptrain", "title": "t", "synthetic": True, "run_label": "known rows",
            "settings": {"num_rounds": 1, "seeds": [0, 1, 2], "settings_run": list(settings)}}


def test_known_rows_give_the_cells_and_the_paired_verdicts(tmp_path):
    """Per volume: latent DA beats cooperative by 0.2 on every corrupted and held-out volume of every seed (yes);
    standard equals latent DA (cooperative > standard: no); the clean set differs by +-0.05 alternating (noise)."""
    from benchmarks.report import load_comparison

    rows = []
    for seed, base in enumerate((0.6, 0.5, 0.7)):
        for site in ("acdc", "acdc-C/spike", "acdc-C/motion", "vendor-C"):
            for i in range(6):
                gap = (0.05 if (i + seed) % 2 else -0.05) if site == "acdc" else 0.2
                for method, value in (("cooperative+latent-DA", base + gap), ("cooperative", base),
                                      ("standard", base + gap)):
                    rows += [{"algorithm": "cooptrain", "setting": "federated", "site": site, "method": method,
                              "seed": seed, "metric": m, "case": f"p{i:02d}_ED", "value": value}
                             for m in ("dice", "hd95")]
    paths = bench.write_outputs(tmp_path, rows, _meta(), 1.0)
    cmp = load_comparison(paths["scores"])
    cell = [r for r in cmp["rows"]
            if r["method"] == "cooperative" and r["site"] == "vendor-C" and r["metric"] == "dice"]
    assert sorted(r["value"] for r in cell) == pytest.approx([0.5, 0.6, 0.7]) and {r["n"] for r in cell} == {6}
    md = paths["markdown"].read_text()
    assert "| cooperative | 0.600 ± 0.100 (3×6) |" in md  # clean acdc column first: mean ± std over 3 seeds, n
    line = next(ln for ln in md.splitlines() if ln.startswith("| federated [vendor-C]: cooperative+latent-DA > "
                                                                   "cooperative"))
    assert "+0.200" in line and "**yes**" in line and "| 6 |" in line
    line = next(ln for ln in md.splitlines() if ln.startswith("| federated [acdc-C/mean]: cooperative > st"))
    assert "**no**" in line and "| 6 |" in line  # the 6 subject volumes, each the mean of its 2 corrupted kinds
    assert "| cooperative | 0.600 ± 0.100 (3×6) | 0.600 ± 0.100 (3×6) |" in md  # acdc-C/mean: a column of its own
    line = next(ln for ln in md.splitlines() if ln.startswith("| federated [acdc]: cooperative+latent-DA > coop"))
    assert "**within noise**" in line
    assert (tmp_path / "cooptrain_compare.png").is_file() and "known rows" in md


def test_undefined_hd95_is_left_out_of_the_rows():
    scores = {"vendor-C": {"p1_ED": {"dice": 0.5, "hd95": float("nan")}, "p2_ED": {"dice": 0.7, "hd95": 3.0}}}
    rows = bench.volume_rows("federated", "standard", 0, scores)
    assert {(r["case"], r["metric"]) for r in rows} == {("p1_ED", "dice"), ("p2_ED", "dice"), ("p2_ED", "hd95")}


def test_quick_one_method_writes_the_full_shape_and_the_report_reads_it(tmp_path):
    """The default-suite subset of the slow test below: one setting, one method, one seed (under a minute)."""
    from benchmarks.report import build_report
    from benchmarks.stats import SCORE_COLUMNS, read_rows

    out = tmp_path / "out"
    assert bench.main(["--quick", "--seeds", "0", "--settings", "centralised", "--methods", "standard",
                       "--out", str(out)]) == 0
    with open(out / "cooptrain_compare.csv", newline="") as f:
        assert f.readline().strip().split(",") == list(SCORE_COLUMNS)
    rows = read_rows(out / "cooptrain_compare.csv")
    assert {(r["setting"], r["method"]) for r in rows} == {("centralised", "standard")}
    assert {"acdc", "vendor-C", "acdc-C/motion"} <= {r["site"] for r in rows}
    volumes = read_rows(out / "cooptrain_compare_volumes.csv")
    acdc = [v["value"] for v in volumes if v["site"] == "acdc" and v["metric"] == "dice"]
    cell = next(r for r in rows if r["site"] == "acdc" and r["metric"] == "dice")
    assert cell["n"] == len(acdc) >= 1 and abs(cell["value"] - sum(acdc) / len(acdc)) < 1e-9
    meta = json.loads((out / "cooptrain_compare_meta.json").read_text())
    assert meta["settings"]["methods"] == ["standard"] and meta["settings"]["complete"]
    text = build_report(out)[0].read_text()
    assert "## cooptrain:" in text and "not measured" in text  # its orderings need the other methods


@pytest.mark.slow
def test_quick_benchmark_writes_the_comparison_shape(tmp_path):
    """About 40 s on an idle 2-core machine, 95 s under load: slow."""
    from benchmarks.report import build_report
    from benchmarks.stats import SCORE_COLUMNS, read_rows

    out = tmp_path / "out"
    assert bench.main(["--quick", "--seeds", "0", "--settings", "federated", "--out", str(out)]) == 0
    with open(out / "cooptrain_compare.csv", newline="") as f:
        assert f.readline().strip().split(",") == list(SCORE_COLUMNS)
    rows = read_rows(out / "cooptrain_compare.csv")
    sets = {r["site"] for r in rows}
    assert {"acdc", "vendor-C", "acdc-C/bias_field", "acdc-C/spike", "acdc-C/ghosting", "acdc-C/motion"} <= sets
    assert {r["method"] for r in rows} == set(bench.METHODS) and {r["setting"] for r in rows} == {"federated"}
    assert {r["metric"] for r in rows} == set(bench.METRICS)
    assert all(0.0 <= r["value"] <= 1.0 for r in rows if r["metric"].startswith("dice"))
    volumes = read_rows(out / "cooptrain_compare_volumes.csv")
    clean = {v["case"] for v in volumes if v["site"] == "acdc" and v["method"] == "standard" and v["metric"] == "dice"}
    spiked = [v for v in volumes if v["site"] == "acdc-C/spike" and v["method"] == "standard" and v["metric"] == "dice"]
    assert clean and {v["case"] for v in spiked} == clean and len(spiked) == len(clean)  # realisations averaged
    meta = json.loads((out / "cooptrain_compare_meta.json").read_text())
    assert meta["settings"]["complete"] and meta["run_label"].startswith("quick")
    wire = meta["bytes_per_round"]  # every federated method's messages, by NVFlare's serialisation
    assert set(wire) == set(bench.METHODS) and all(b["site_to_server"] > 1000 for b in wire.values())
    md = (out / "cooptrain_compare.md").read_text()
    assert "cooperative+latent-DA > cooperative" in md and "not measured" not in md
    assert (out / "cooptrain_compare.png").stat().st_size > 1000
    assert "## cooptrain:" in build_report(out)[0].read_text()
