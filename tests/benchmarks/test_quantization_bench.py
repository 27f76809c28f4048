"""benchmarks/quantization.py without the simulator: ratios against none, CSV shape, markdown, report plot."""

from __future__ import annotations

import pytest


def _runs():
    def site(dice, down, up):
        return {"val_dice": dice, "bytes_server_to_site_per_round": down, "bytes_site_to_server_per_round": up}

    return {"none": {0: {"sites": {"site-1": site(0.5, 1000, 1010), "site-2": site(0.7, 1000, 1010)}, "seconds": 9}},
            "float16": {0: {"sites": {"site-1": site(0.5, 510, 505), "site-2": site(0.6, 510, 505)}, "seconds": 8}}}


def test_ratios_are_against_none_of_the_same_run_and_rows_have_the_comparison_shape(tmp_path):
    from benchmarks.quantization import aggregate, csv_rows, markdown
    from benchmarks.report import build_report
    from benchmarks.stats import SCORE_COLUMNS, read_rows, write_comparison

    table = aggregate(_runs())
    assert table["none"]["ratio_site_to_server_vs_none"] == 1.0
    assert table["float16"]["ratio_site_to_server_vs_none"] == pytest.approx(505 / 1010)
    assert table["float16"]["ratio_server_to_site_vs_none"] == pytest.approx(0.51)
    assert table["float16"]["val_dice"] == pytest.approx(0.55)
    meta = {"sites": 2, "rounds": 1, "local_epochs": 1, "seeds": [0], "n_seeds": 1, "data": "d", "machine": {}}
    md = markdown(table, meta)
    assert "| float16 | 510 | 0.510 | 505 | 0.500 | 0.5500 | 8 |" in md
    paths = write_comparison(tmp_path, "quantization", csv_rows(_runs()),
                             {"algorithm": "fedavg", "title": "t", "synthetic": True, "settings": meta})
    rows = read_rows(paths["scores"])
    assert tuple(rows[0]) == SCORE_COLUMNS
    assert {r["metric"] for r in rows} == {"dice", "bytes_server_to_site", "bytes_site_to_server"}
    assert len(rows) == 2 * 2 * 3  # methods x sites x metrics, one seed
    report, _ = build_report(tmp_path)  # make report reads it like every other comparison
    assert "bytes_site_to_server" in report.read_text()
