"""A job's default console as a newcomer sees it: progress lines, then the report; the engine logs in files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.sim
def test_default_console_is_progress_then_report(mednist_data, tmp_path):
    cmd = [sys.executable, "-u", str(ROOT / "jobs" / "mednist_fedavg.py"), "--n-clients", "2", "--num-rounds", "2",
           "--batch-size", "8", "--data-root", str(mednist_data["data_root"]),
           "--datalist-dir", str(mednist_data["datalist_dir"]), "--workspace", str(tmp_path / "ws")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    for r in (1, 2):
        for site in ("site-1", "site-2"):
            assert re.search(rf"^round {r}/2  {site}  loss \d\.\d{{3}}  val_accuracy .* (\d+ s|\d+:\d\d)$", text, re.M)
        assert re.search(rf"^round {r}/2  server  mean val_accuracy \d\.\d{{3}} \(global in, 2 sites\)", text, re.M)
    for noise in ("Engine run", "tx_id", "tag key", "INFO", "get_status returns None", "Traceback"):
        assert noise not in text, noise
    assert len(text.strip().splitlines()) < 80
    assert "Run settings" in text and "| num_rounds | 2 |" in text and "Cross-site evaluation" in text
    server = next((tmp_path / "ws").rglob("summary.md")).parent
    assert (server / "summary.md").read_text().startswith("Run settings")
    logs = "".join(p.read_text() for p in (tmp_path / "ws").rglob("site-1/log.txt"))
    assert "Engine run" in logs and "round 1/2  site-1" in logs  # the detail is in the site's log file
