"""benchmarks/fedicra_compare.py: the CSV/JSON/markdown/plot outputs of a tiny run (``--quick``)."""

import csv
import json

import pytest

from benchmarks import fedicra_compare


def _check(out, task, methods, seeds):
    stem = out / f"fedicra_compare_{task}"
    with open(f"{stem}.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["algorithm", "site", "method", "seed", "metric", "value"]
    structures = fedicra_compare.STRUCTURES[task]
    expected = {(s, m, str(seed), f"{k}_{st}") for s in ("site-1", "site-2") for m in methods for seed in seeds
                for st in structures for k in ("dice", "hd95")}
    assert {(r["site"], r["method"], r["seed"], r["metric"]) for r in rows} == expected
    for r in rows:
        value = float(r["value"])
        assert (0.0 <= value <= 1.0) if r["metric"].startswith("dice") else value >= 0.0
    result = json.loads((stem.with_suffix(".json")).read_text())
    assert result["meta"]["train_images"] and result["meta"]["seconds"] > 0
    per_image = result["per_image"][methods[0]][str(seeds[0])]["site-1"]
    assert len(per_image) == result["meta"]["test_images"]["site-1"], "one score per test image"
    assert (stem.with_suffix(".png")).stat().st_size > 0
    return result, (stem.with_suffix(".md")).read_text()


def test_quick_two_methods_faz(tmp_path):
    fedicra_compare.main(["--task", "faz", "--quick", "--seeds", "0", "--methods", "fedavg", "local",
                          "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data")])
    result, md = _check(tmp_path / "out", "faz", ["fedavg", "local"], [0])
    assert "not checked" in result["verdict"] and "dice_faz" in md


@pytest.mark.slow
def test_quick_every_method_odoc_two_seeds(tmp_path):
    fedicra_compare.main(["--task", "odoc", "--quick", "--seeds", "0", "1", "--out", str(tmp_path / "out"),
                          "--data-dir", str(tmp_path / "data")])
    result, md = _check(tmp_path / "out", "odoc", list(fedicra_compare.METHODS), [0, 1])
    assert result["verdict"].startswith("Paper's ordering") and "vs fedrep" in result["verdict"]
    assert "dice_cup" in md and "dice_disc" in md and "+/-" in md
