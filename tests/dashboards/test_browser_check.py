"""Headless Chromium renders the MLflow chart view of a finished job (skipped without a browser).

Install the browser with ``scripts/install_browser.sh``; run with ``pytest -m browser``. The test checks that a
non-blank page was rendered; whether the per-site curves are on it was checked by eye (docs/dashboards.md).
"""

from __future__ import annotations

import pytest

from scripts.browser_check import browser_check, find_browser

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
