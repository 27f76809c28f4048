"""The one-command comparison on tiny data: every method appears in the JSON, markdown and plot."""

import json

import pytest


@pytest.mark.sim
def test_compare_writes_every_method(tmp_path):
    from benchmarks.iopfl_compare import main

    out = tmp_path / "cmp"
    assert main(["--out", str(out), "--data-root", str(tmp_path / "data" / "mp"), "--datalist-dir",
                 str(tmp_path / "lists"), "--rounds", "1", "--tta-passes", "1", "--features", "4", "8", "16",
                 "--n-cases", "3", "--size", "32"]) == 0
    result = json.loads((out / "iopfl_compare.json").read_text())
    inside = result["inside"]
    for method in ("FedAvg global (last)", "IOP-FL personalised (best)", "FedProx global (last)",
                   "FedBN site model (last)", "local (last)", "centralised (last)"):
        assert set(inside[method]) == set(result["meta"]["sites"]), method
    assert set(result["outside"]) == {"global", "uniform_average", "bn_adapt", "routing_first", "routing_last"}
    assert (out / "iopfl_compare.md").read_text().count("|") > 50 and (out / "iopfl_compare.png").stat().st_size
