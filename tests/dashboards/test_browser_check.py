"""Headless Chromium renders the MLflow chart view of a finished job (skipped without a browser).

Install the browser with ``scripts/install_browser.sh``; run with ``pytest -m browser``. The first test checks that a
non-blank page was rendered; whether the per-site curves are on it was checked by eye (docs/dashboards.md). The
second puts two launches of the same job in one project store and checks, in the page the browser rendered, that
one chart of ``val_dice`` over steps holds both runs (both names in its legend, both run ids, each run's own last
and first value in the table under the chart).
"""

from __future__ import annotations

import pytest

from scripts.browser_check import browser_check, compare_runs_check, find_browser
from tests.dashboards.conftest import LAUNCH_CURVES

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(find_browser() is None, reason="no chromium; run scripts/install_browser.sh"),
]


def test_mlflow_chart_view_renders(finished_job, tmp_path):
    from PIL import Image

    from src.reporting.mlflow_results import publish_results

    publish_results(finished_job.server)
    shots = browser_check(finished_job.server, tmp_path / "shots")
    image = Image.open(shots["experiment_charts"]).convert("RGB")
    assert image.size == (1600, 1000)
    colours = image.getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 200  # a rendered UI with charts, not a blank or error page


def test_two_runs_of_one_job_on_one_chart(two_launches, tmp_path):
    from PIL import Image

    ids = [two_launches.runs[launch]["demo/site-1"] for launch in LAUNCH_CURVES]
    shots = compare_runs_check(two_launches.store, ids, tmp_path / "shots", metric="val_dice")
    dom = shots["compare_chart_dom"].read_text()
    assert dom.count("demo/site-1 (val_dice)") == 2  # the chart's legend: one curve per run, both named
    for run_id, curve in zip(ids, LAUNCH_CURVES.values()):
        assert run_id in dom  # each run is linked from the page
        assert f"{curve[-1]:g} (step={len(curve) - 1})" in dom and f"{curve[0]:g} (step=0)" in dom  # its own values
    for key in ("compare_chart", "compare_runs"):
        image = Image.open(shots[key]).convert("RGB")
        assert image.size == (1600, 1000)
        colours = image.getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 200, key  # rendered, not blank
