import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cooptrain_step.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("cooptrain_step_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_writes_json_and_table(tmp_path, capsys):
    bench = _load_benchmark()
    out = tmp_path / "cooptrain_step.json"
    result = bench.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["setting"]["quick"] is True and saved["setting"]["threads"] == 1
    assert len(saved["seconds_per_step"]["standard"]) == len(saved["seconds_per_step"]["cooperative"]) == 2
    med = saved["median_seconds"]
    assert saved["ratio_cooperative_to_standard"] == pytest.approx(med["cooperative"] / med["standard"])
    assert saved["ratio_cooperative_to_standard"] > 1.0  # the cooperative step does strictly more work
    assert len(saved["cooperative_phase_seconds"]) == 5
    assert result["meets_goal"] == (result["ratio_cooperative_to_standard"] <= 3.0)
    assert "| cooperative |" in capsys.readouterr().out


def test_benchmark_rejects_bad_size():
    bench = _load_benchmark()
    with pytest.raises(SystemExit):
        bench._parse_args(["--size", "100"])
