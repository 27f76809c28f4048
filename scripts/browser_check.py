"""Load a finished job's MLflow UI in headless Chromium and save screenshots, as a user would see them.

    python scripts/browser_check.py <server dir with mlflow.db> [--out results/browser_check]

Writes ``experiment_charts.png``: the experiment's chart view, one curve per site run for every metric (the
single-run page is not shot: its charts are still loading when headless Chromium's virtual time runs out).
Install the browser first: ``scripts/install_browser.sh``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
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
    p.add_argument("server_dir", help="a job's server folder (holds mlflow.db)")
    p.add_argument("--out", default=str(ROOT / "results" / "browser_check"))
    a = p.parse_args(argv)
    for key, path in browser_check(a.server_dir, a.out).items():
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
