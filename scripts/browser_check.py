"""Load a finished job's MLflow UI in headless Chromium and save screenshots, as a user would see them.

    python scripts/browser_check.py <server dir with mlflow.db> [--out results/browser_check]
    python scripts/browser_check.py workspace/mlruns --compare RUN_ID RUN_ID [--metric val_dice]

Writes ``experiment_charts.png``: the experiment's chart view, one curve per site run for every metric (the
single-run page is not shot: its charts are still loading when headless Chromium's virtual time runs out).
With ``--compare`` (two or more runs of one project store, e.g. the same site in two launches of a job):
``compare_chart.png``, MLflow's chart of ``--metric`` over steps with one curve per run (``compare_chart.html`` is
the rendered page, for checks), and ``compare_runs.png``, the compare-runs page (run details side by side).
Install the browser first: ``scripts/install_browser.sh``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from src.reporting.mlflow_server import rest, serve_mlflow  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(browser: str, url: str, out: Path, wait_ms: int = 45000, size: str = "1600,1000") -> Path:
    """Render ``url`` after ``wait_ms`` of virtual time (the UI fetches its data by JavaScript) into ``out``."""
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", f"--window-size={size}", f"--virtual-time-budget={wait_ms}",
           f"--screenshot={out}", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"{browser} failed (rc={proc.returncode}) on {url}:\n{proc.stderr[-2000:]}")
    return out


def dump_dom(browser: str, url: str, wait_ms: int = 45000, size: str = "1600,1000") -> str:
    """The page's DOM after ``wait_ms`` of virtual time (what the JavaScript rendered), as HTML text."""
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--window-size={size}", f"--virtual-time-budget={wait_ms}", "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"{browser} --dump-dom failed (rc={proc.returncode}) on {url}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def metric_chart_url(base: str, run_ids: list[str], experiment_ids: list[str], metric: str) -> str:
    """MLflow's metric page: ``metric`` over steps, one curve per run (the UI's "Plot chart" link)."""
    q = {"runs": run_ids, "metric": metric, "experiments": experiment_ids, "plot_metric_keys": [metric],
         "plot_layout": {}, "x_axis": "step", "y_axis_scale": "linear", "line_smoothness": 1, "show_point": True,
         "deselected_curves": [], "last_linear_y_axis_range": []}
    plain = ("x_axis", "y_axis_scale")  # the UI writes these two unquoted
    query = "&".join(f"{k}={v if k in plain else _js(v)}" for k, v in q.items())
    return f"{base}/#/metric?{query}"


def _js(value) -> str:
    return urllib.parse.quote(json.dumps(value, separators=(",", ":")), safe="")


def compare_runs_check(store_dir: str | Path, run_ids: list[str], out_dir: str | Path,
                       metric: str = "val_dice") -> dict[str, Path]:
    """Serve the store and shoot ``run_ids`` side by side: their ``metric`` curves on one chart
    (``compare_chart.png`` + its rendered DOM ``compare_chart.html``) and the compare-runs page."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError(f"none of {BROWSERS} is installed; run scripts/install_browser.sh")
    if len(run_ids) < 2:
        raise ValueError(f"--compare needs two or more run ids, got {run_ids}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with serve_mlflow(store_dir) as base:
        experiments = sorted({rest(base, f"runs/get?run_id={rid}")["run"]["info"]["experiment_id"] for rid in run_ids})
        chart = metric_chart_url(base, list(run_ids), experiments, metric)
        shots = {"compare_chart": screenshot(browser, chart, out_dir / "compare_chart.png")}
        dom = out_dir / "compare_chart.html"
        dom.write_text(dump_dom(browser, chart))
        shots["compare_chart_dom"] = dom
        compare = f"{base}/#/compare-runs?runs={_js(list(run_ids))}&experiments={_js(experiments)}"
        shots["compare_runs"] = screenshot(browser, compare, out_dir / "compare_runs.png")
    return shots


def browser_check(server_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Serve the job's MLflow store and screenshot the experiment's per-site metric charts; return the files."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError(f"none of {BROWSERS} is installed; run scripts/install_browser.sh")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = {}
    with serve_mlflow(server_dir) as base:
        exps = [e for e in rest(base, "experiments/search", {"max_results": 50})["experiments"]
                if e["name"] != "Default"]
        if not exps:
            raise LookupError(f"no NVFlare experiment in {server_dir}/mlflow.db")
        exp_id = exps[0]["experiment_id"]
        shots["experiment_charts"] = screenshot(
            browser, f"{base}/#/experiments/{exp_id}/runs?compareRunsMode=CHART", out_dir / "experiment_charts.png")
    return shots


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("server_dir", help="a job's server folder or the project store folder (holds mlflow.db)")
    p.add_argument("--out", default=str(ROOT / "results" / "browser_check"))
    p.add_argument("--compare", nargs="+", metavar="RUN_ID", help="two or more runs to chart side by side")
    p.add_argument("--metric", default="val_dice", help="--compare: the metric charted over steps")
    a = p.parse_args(argv)
    shots = (compare_runs_check(a.server_dir, a.compare, a.out, a.metric) if a.compare
             else browser_check(a.server_dir, a.out))
    for key, path in shots.items():
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
