"""benchmarks/fedicra_compare.py: the comparison shape of benchmarks.stats from a tiny run (``--quick``), read by the
report."""

import json

import pytest

from benchmarks import fedicra_compare
from benchmarks.report import build_report
from benchmarks.stats import SCORE_COLUMNS, VOLUME_COLUMNS, read_rows


def _check(out, task, methods, seeds):
    name = f"fedicra_compare_{task}"
    with open(out / f"{name}.csv") as f:
        assert f.readline().strip().split(",") == list(SCORE_COLUMNS)
    rows = read_rows(out / f"{name}.csv")
    structures = fedicra_compare.STRUCTURES[task]
    expected = {(task, s, m, seed, f"{k}_{st}") for s in ("site-1", "site-2") for m in methods for seed in seeds
                for st in structures for k in ("dice", "hd95")}
    assert {(r["setting"], r["site"], r["method"], r["seed"], r["metric"]) for r in rows} == expected
    for r in rows:
        assert (0.0 <= r["value"] <= 1.0) if r["metric"].startswith("dice") else r["value"] >= 0.0
    meta = json.loads((out / f"{name}_meta.json").read_text())
    assert meta["synthetic"] and "synthetic data" in meta["run_label"] and meta["settings"]["wall_seconds"] > 0
    assert meta["settings"]["train_images"] and meta["settings"]["seeds"] == seeds
    claimed = {(c["better"], c["worse"], c["metric"]) for c in meta["claims"]}
    assert {("fedicra", b, f"dice_{st}") for b in fedicra_compare.BASELINES for st in structures} <= claimed
    volumes = read_rows(out / f"{name}_volumes.csv")
    assert list(volumes[0]) == list(VOLUME_COLUMNS)
    n_test = meta["settings"]["test_images"]["site-1"]
    site1 = [v for v in volumes if v["site"] == "site-1" and v["method"] == methods[0] and v["seed"] == seeds[0]
             and v["metric"] == f"dice_{structures[0]}"]
    assert len({v["case"] for v in site1}) == len(site1) == n_test, "one score per test image"
    cell = next(r for r in rows if r["site"] == "site-1" and r["method"] == methods[0] and r["seed"] == seeds[0]
                and r["metric"] == f"dice_{structures[0]}")
    assert cell["n"] == n_test and abs(cell["value"] - sum(v["value"] for v in site1) / n_test) < 1e-9
    assert (out / f"{name}.png").stat().st_size > 0
    return meta, (out / f"{name}.md").read_text()


def test_quick_two_methods_faz(tmp_path):
    result = fedicra_compare.main(["--task", "faz", "--quick", "--seeds", "0", "--methods", "fedavg", "local",
                                   "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data")])
    meta, md = _check(tmp_path / "out", "faz", ["fedavg", "local"], [0])
    assert "dice_faz" in md and "quick smoke run" in md and result["markdown"] == md
    assert "not measured" in md  # FedICRA did not run: its orderings are said to be unmeasured, not dropped
    # bytes per round by NVFlare's serialisation: FedAvg sends its model both ways, local nothing
    wire = meta["bytes_per_round"]
    down, up = wire["fedavg"]["server_to_site"], wire["fedavg"]["site_to_server"]
    assert set(wire) == {"fedavg"} and down > 1e6 and abs(up - down) < 0.01 * down  # the whole model each way
    assert "Communication per site and round" in md
    report, _ = build_report(tmp_path / "out")
    text = report.read_text()
    assert "## fedicra: FedICRA, FAZ" in text and "| fedavg |" in text and "| local |" in text
    assert list((tmp_path / "out").glob("report_*.png"))


@pytest.mark.slow
def test_quick_every_method_odoc_two_seeds(tmp_path):
    fedicra_compare.main(["--task", "odoc", "--quick", "--seeds", "0", "1", "--out", str(tmp_path / "out"),
                          "--data-dir", str(tmp_path / "data")])
    meta, md = _check(tmp_path / "out", "odoc", list(fedicra_compare.METHODS), [0, 1])
    assert "odoc: fedicra > fedrep" in md and "odoc: fedicra < fedavg" in md  # hd95: lower is better
    assert "dice_cup" in md and "dice_disc" in md and " ± " in md
    assert md.count("| odoc: fedicra > ") == 2 * len(fedicra_compare.BASELINES) + 2
    assert "not measured" not in md  # every method ran: every ordering has a verdict
