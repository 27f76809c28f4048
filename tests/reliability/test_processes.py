"""deploy.processes.terminate_then_kill: the one SIGTERM -> grace -> SIGKILL loop of the job scripts and the POC."""

import subprocess
import sys
import time

import psutil
import pytest

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


def test_poc_follow_logs_in_again_when_the_admin_connection_drops(tmp_path):
    from deploy.poc import MAX_ADMIN_RECONNECTS, PocDeployment

    class NoConnection(Exception):  # what NVFlare's FLARE API raises (matched by name)
        pass

    class Session:
        def __init__(self, fail: int):
            self.fail = fail

        def get_job_meta(self, job_id):
            if self.fail:
                self.fail -= 1
                raise NoConnection("cannot connect to server: ERROR_SERVER_CONNECTION")
            return {"status": "FINISHED:COMPLETED"}

        def close(self):
            pass

    class Fake(PocDeployment):
        logins = 0

        @property
        def session(self):
            if self._session is None:
                Fake.logins += 1
                self._session = Session(fail=1 if Fake.logins < 3 else 0)
            return self._session

    poc = Fake(tmp_path, ["site-1"], verbose=False)
    poc.prod_dir = tmp_path
    assert poc.follow("job", timeout=30, poll=0.01)["status"] == "FINISHED:COMPLETED"
    assert Fake.logins == 3
    Fake.logins = -100  # every session fails: gives up after MAX_ADMIN_RECONNECTS
    poc._session = None
    with pytest.raises(NoConnection):
        poc.follow("job", timeout=30, poll=0.01)
    assert Fake.logins == -100 + MAX_ADMIN_RECONNECTS + 1
