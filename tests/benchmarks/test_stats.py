"""benchmarks.stats against hand-computed values, and the CSV shape every comparison writes."""

import csv
import json
import math

import pytest

from benchmarks.stats import (
    SCORE_COLUMNS,
    VOLUME_COLUMNS,
    Claim,
    compare_paired,
    csv_paths,
    paired_bootstrap,
    read_rows,
    sign_test,
    summarise,
    write_comparison,
)


def test_summarise():
    s = summarise([1.0, 2.0, 3.0, 4.0])
    assert (s.mean, s.n) == (2.5, 4) and s.std == pytest.approx(math.sqrt(5 / 3))  # sample std, ddof=1
    assert summarise([0.7]).std == 0.0 and summarise([]).n == 0


def test_sign_test_exact_binomial():
    # 3 wins, 1 loss, 1 tie: n = 4, P(X <= 1) = (1 + 4) / 16, two-sided 10/16
    assert sign_test([0.2, 0.1, 0.3, -0.1, 0.0]) == (3, 1, 1, pytest.approx(10 / 16))
    assert sign_test([1.0] * 5)[3] == pytest.approx(2 / 32)  # 5 of 5: 2 * (1/2)^5
    assert sign_test([0.0, 0.0]) == (0, 0, 2, 1.0)


def test_paired_bootstrap():
    assert paired_bootstrap([0.1] * 6) == pytest.approx((0.1, 0.1, 0.1))
    mean, low, high = paired_bootstrap([1.0, -1.0], n_boot=4000, seed=1)
    # resampling two values: the mean is -1 or 1 with probability 1/4 each, 0 with 1/2
    assert mean == 0.0 and low == -1.0 and high == 1.0
    mean, low, high = paired_bootstrap([0.1, 0.2, 0.3, 0.4], seed=0)
    assert mean == pytest.approx(0.25) and 0.1 <= low < 0.25 < high <= 0.4
    with pytest.raises(ValueError, match="at least one difference"):
        paired_bootstrap([])


def test_compare_paired_averages_seeds_per_volume_and_decides():
    better = {("A", "c1", 0): 0.9, ("A", "c1", 1): 0.7, ("A", "c2", 0): 0.5, ("A", "c2", 1): 0.5}
    worse = {k: 0.6 for k in better}
    p = compare_paired(better, worse)
    # per volume: c1 (0.3 + 0.1) / 2 = 0.2, c2 -0.1 -> n = 2 volumes, mean 0.05, one win one loss
    assert p.n == 2 and p.mean_diff == pytest.approx(0.05) and (p.wins, p.losses) == (1, 1)
    assert p.verdict == "within noise"
    clear = compare_paired({("A", f"c{i}", 0): 0.8 for i in range(6)}, {("A", f"c{i}", 0): 0.5 for i in range(6)})
    assert clear.verdict == "yes" and clear.p_sign == pytest.approx(2 / 64)
    # lower-is-better metrics flip the sign: a smaller HD95 is the better method
    cases = [f"c{i}" for i in range(6)]
    hd = compare_paired({("A", c, 0): 3.0 for c in cases}, {("A", c, 0): 5.0 for c in cases}, higher_is_better=False)
    assert hd.mean_diff == pytest.approx(2.0) and hd.verdict == "yes"
    assert compare_paired({("A", c, 0): 0.1 for c in cases}, {("A", c, 0): 0.9 for c in cases}).verdict == "no"
    # the interval alone is not enough: 2 of 2 volumes agree (interval clear of 0) but sign-test p = 0.5
    two = compare_paired({("A", "c", 0): 3.0, ("A", "d", 0): 2.0}, {("A", "c", 0): 5.0, ("A", "d", 0): 4.0})
    assert two.ci_high < 0 and two.p_sign == pytest.approx(0.5) and two.verdict == "within noise"
    # a mean pulled by a few volumes: interval clear of 0, 12 wins / 8 losses, p = 0.50 -> within noise
    skew = {("A", f"v{i}", 0): (0.3 if i < 12 else -0.05) for i in range(20)}
    pulled = compare_paired(skew, {k: 0.0 for k in skew})
    assert pulled.ci_low > 0 and pulled.p_sign == pytest.approx(0.5034, abs=1e-4) and pulled.verdict == "within noise"
    with pytest.raises(ValueError, match="no paired volumes"):
        compare_paired({("A", "c", 0): 1.0}, {("B", "c", 0): 1.0})


def _rows():
    rows = []
    for seed in (0, 1):
        for case, value in (("Case01", 0.8), ("Case02", 0.6)):
            rows.append({"algorithm": "demo", "setting": "inside", "site": "HK", "method": "FedAvg", "seed": seed,
                         "metric": "dice", "case": case, "value": value + 0.1 * seed})
            rows.append({"algorithm": "demo", "setting": "inside", "site": "HK", "method": "local", "seed": seed,
                         "metric": "dice", "case": case, "value": value - 0.2})
    return rows


def test_write_comparison_csv_shape(tmp_path):
    paths = write_comparison(tmp_path / "demo", "demo", _rows(),
                             {"algorithm": "demo", "title": "t", "synthetic": True, "settings": {"seeds": [0, 1]}},
                             [Claim("inside", "FedAvg", "local", "dice")])
    with paths["scores"].open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == SCORE_COLUMNS
        scores = list(reader)
    # one row per (site, method, seed, metric): 2 methods x 2 seeds; value = mean over the 2 volumes
    assert len(scores) == 4
    fedavg1 = next(r for r in scores if r["method"] == "FedAvg" and r["seed"] == "1")
    assert float(fedavg1["value"]) == pytest.approx(0.8) and fedavg1["n"] == "2"
    with paths["volumes"].open() as f:
        assert tuple(csv.DictReader(f).fieldnames) == VOLUME_COLUMNS
    assert len(read_rows(paths["volumes"])) == 8
    meta = json.loads(paths["meta"].read_text())
    assert meta["claims"][0]["better"] == "FedAvg" and meta["name"] == "demo"
    assert csv_paths(tmp_path) == [paths["scores"]]  # the volumes CSV is not a comparison of its own


def test_write_comparison_rejects_incomplete_input(tmp_path):
    with pytest.raises(ValueError, match="meta needs 'settings'"):
        write_comparison(tmp_path, "x", _rows(), {"algorithm": "a", "title": "t", "synthetic": True})
    bad = [{k: v for k, v in _rows()[0].items() if k != "case"}]
    with pytest.raises(ValueError, match="lacks columns \\['case'\\]"):
        write_comparison(tmp_path, "x", bad, {"algorithm": "a", "title": "t", "synthetic": True, "settings": {}})
