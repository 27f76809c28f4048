"""Smoke run of the FedICRA step benchmark (--quick): it runs end to end and writes consistent JSON."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quick_benchmark_writes_json(tmp_path):
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "fedicra_step.py"
    out = tmp_path / "fedicra_step.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| tree / rest of step" in proc.stdout
    saved = json.loads(out.read_text())
    assert saved["config"]["size"] == 64 and saved["config"]["batch"] == 2
    s = saved["seconds"]
    assert 0 < s["tree_energy_fwd_bwd"] < s["full_step"] and 0 < s["gated_crf_fwd_bwd"] < s["full_step"]
    assert saved["ratios"]["tree_vs_rest"] == pytest.approx(
        s["tree_energy_fwd_bwd"] / (s["full_step"] - s["tree_energy_fwd_bwd"]))
