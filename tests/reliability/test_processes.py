"""deploy.processes.terminate_then_kill: the one SIGTERM -> grace -> SIGKILL loop of the job scripts and the POC."""

import subprocess
import sys
import time

import psutil

from deploy.processes import terminate_then_kill

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
                  "time.sleep(600)"


def test_polite_processes_end_on_sigterm_and_stubborn_ones_are_killed_after_the_grace():
    polite = subprocess.Popen(["sleep", "600"])
    stubborn = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE)
    try:
        assert stubborn.stdout.readline().strip() == b"ready"  # its SIGTERM handler is in place
        t0 = time.monotonic()
        killed = terminate_then_kill([psutil.Process(polite.pid), psutil.Process(stubborn.pid)], grace=1.0)
        took = time.monotonic() - t0
        assert [p.pid for p in killed] == [stubborn.pid]
        # (psutil reaped both, so Popen cannot see their exit status)
        assert not any(psutil.pid_exists(p.pid) and psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE
                       for p in (polite, stubborn))
        assert 1.0 <= took < 6.0
    finally:
        for p in (polite, stubborn):
            p.kill()
            p.wait()


def test_processes_already_gone_are_skipped():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    proc = psutil.Process(gone.pid)
    gone.wait()
    assert terminate_then_kill([proc], grace=0.5) == []
