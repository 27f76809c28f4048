"""Dead sites and stopped job scripts (simulator): a site worker killed by PID mid-run, SIGTERM on the script.

Each test runs a MedNIST job script as a subprocess, finds the simulator's site worker among its descendants, and
checks how fast the job ends and that no process of ours is left (killed in ``finally`` whatever happens).
About 3 min each on a loaded 2-core machine: ``min_clients=2`` and SIGINT are marked ``slow`` (``-m slow``).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.sim


def _start(mednist_data, tmp_path, *extra):
    cmd = [sys.executable, str(ROOT / "jobs" / "mednist_fedavg.py"), "--n-clients", "2", "--batch-size", "8",
           "--tracking", "none", "--no-cross-site-eval", "--data-root", str(mednist_data["data_root"]),
           "--datalist-dir", str(mednist_data["datalist_dir"]), "--workspace", str(tmp_path / "ws"), *extra]
    log = open(tmp_path / "job.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)


def _worker(job: subprocess.Popen, site: str, timeout: float = 240) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in psutil.Process(job.pid).children(recursive=True):
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            if "nvflare.private.fed.app.simulator.simulator_worker" in cmd and site in cmd:
                return p
        assert job.poll() is None, f"the job ended (rc {job.returncode}) before {site}'s worker started"
        time.sleep(0.2)
    raise AssertionError(f"no simulator worker for {site} within {timeout} s")


def _rounds_done(tmp_path) -> int:
    files = list((tmp_path / "ws").rglob("round_metrics.jsonl"))
    return len(files[0].read_text().splitlines()) if files else 0


def _wait_rounds(job, tmp_path, n, timeout=300):
    deadline = time.monotonic() + timeout
    while _rounds_done(tmp_path) < n:
        assert job.poll() is None, f"the job ended (rc {job.returncode}) before round {n}"
        assert time.monotonic() < deadline, f"round {n} not done within {timeout} s"
        time.sleep(0.2)


def _cleanup(job, family):
    """Kill whatever is left (also when the test failed); return the pids that were still alive."""
    left = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    if job.poll() is None:
        os.killpg(job.pid, signal.SIGKILL)
    job.wait(10)
    return [p.pid for p in left]


def _family(job):
    try:
        return [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    except psutil.Error:
        return []


@pytest.mark.parametrize("min_clients", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_site_killed_mid_run_is_detected(mednist_data, tmp_path, min_clients):
    job = _start(mednist_data, tmp_path, "--num-rounds", "3", "--min-clients", str(min_clients),
                 "--round-timeout", "600")
    family = []
    try:
        victim = _worker(job, "site-2")
        _wait_rounds(job, tmp_path, 1)
        family = _family(job)
        victim.kill()
        killed = time.monotonic()
        rc = job.wait(120)
        elapsed = time.monotonic() - killed
    finally:
        left = _cleanup(job, family)
    log = (tmp_path / "job.log").read_text()
    assert left == [], f"processes left after the job ended: {left}"
    print(f"min_clients={min_clients}: job ended {elapsed:.1f} s after the kill, rc {rc}")
    assert elapsed < 60
    if min_clients == 1:
        assert rc == 0, log[-3000:]
        assert _rounds_done(tmp_path) == 3  # the other rounds completed with site-1 alone
        rounds = [json.loads(line) for line in
                  next((tmp_path / "ws").rglob("round_metrics.jsonl")).read_text().splitlines()]
        assert [s["name"] for s in rounds[-1]["sites"]] == ["site-1"]
        server_log = "".join(p.read_text() for p in (tmp_path / "ws").rglob("server/log.txt"))
        assert "site site-2 is dead" in server_log and "simulator worker process exited" in server_log
    else:
        assert rc != 0
        assert "site-2" in log and "min_clients" in log and "simulator worker process exited" in log, log[-3000:]
        status = json.loads(next((tmp_path / "ws").rglob("run.json")).read_text())
        assert status["status"] == "failed" and "site-2" in status["reason"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_stopping_the_job_script_stops_every_process_and_writes_the_summary(mednist_data, tmp_path, sig):
    job = _start(mednist_data, tmp_path, "--num-rounds", "6")
    family = []
    try:
        _worker(job, "site-2")
        _wait_rounds(job, tmp_path, 1)
        family = _family(job)
        assert len(family) >= 3  # script, simulator, workers
        job.send_signal(sig)
        sent = time.monotonic()
        rc = job.wait(60)
        elapsed = time.monotonic() - sent
        time.sleep(1)
    finally:
        left = _cleanup(job, family)
    print(f"{sig.name}: job script ended {elapsed:.1f} s after the signal, rc {rc}")
    assert left == [], f"processes left after the job script ended: {left}"
    assert elapsed < 30 and rc != 0
    summary = json.loads(next((tmp_path / "ws").rglob("summary.json")).read_text())
    assert all(len(v["val_accuracy"]) >= 1 for v in summary["rounds"].values())
    status = json.loads(next((tmp_path / "ws").rglob("run.json")).read_text())
    assert status["status"] == "stopped"
