"""Smoke run of the FedICRA step benchmark (--quick): it runs end to end and writes consistent JSON."""

import importlib.util
import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quick_benchmark_writes_json(tmp_path):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fedicra_step.py"
    spec = importlib.util.spec_from_file_location("fedicra_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "fedicra_step.json"
    result = module.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["config"]["size"] == 64 and saved["config"]["batch"] == 2
    s = saved["seconds"]
    assert 0 < s["tree_energy_fwd_bwd"] < s["full_step"] and 0 < s["gated_crf_fwd_bwd"] < s["full_step"]
    assert saved["ratios"]["tree_vs_rest"] == pytest.approx(
        s["tree_energy_fwd_bwd"] / (s["full_step"] - s["tree_energy_fwd_bwd"]))
    assert result["ratios"] == saved["ratios"]
