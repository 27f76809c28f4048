"""The bounded admin login (deploy/admin.py): results and errors pass through, a hung login becomes an error in time.

The slow test reproduces the NVFlare hang it guards against: a real server paused (SIGSTOP) while the admin logs in.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import psutil
import pytest

from deploy.admin import AdminLoginTimeout, bounded_call, close_quietly, login


def test_result_and_error_pass_through():
    assert bounded_call(lambda: 42, 5, "answer") == 42
    with pytest.raises(KeyError, match="site-9"):
        bounded_call(lambda: {}["site-9"], 5, "lookup")


def test_a_call_that_never_returns_times_out_naming_what():
    never = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(AdminLoginTimeout, match="admin login as alice"):
        bounded_call(never.wait, 0.3, "admin login as alice")
    assert time.monotonic() - t0 < 2.0
    never.set()


def test_close_quietly_survives_a_hanging_or_failing_close():
    class Hangs:
        def close(self):
            threading.Event().wait(30)

    class Fails:
        def close(self):
            raise ConnectionError("gone")

    t0 = time.monotonic()
    close_quietly(Hangs(), seconds=0.3)
    close_quietly(Fails())
    close_quietly(None)
    assert time.monotonic() - t0 < 2.0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_login_to_a_paused_server_returns_and_the_next_login_works(tmp_path):
    """Without the bound, NVFlare's new_secure_session never returns here (it joins a thread stuck in a read)."""
    from deploy.poc import PocDeployment

    poc = PocDeployment(tmp_path / "ws", ["site-1"], verbose=False)
    paused: list[psutil.Process] = []
    try:
        poc.provision()
        poc.start_participant(poc.host)
        kit = str(poc.kit(poc.admin_name))
        login(poc.admin_name, kit, timeout=60).close()  # the server is up
        server = psutil.Process(poc.processes[poc.host].pid)
        paused += [p for p in [server, *server.children(recursive=True)] if "server_train" in " ".join(p.cmdline())]
        assert paused, "server_train process not found"
        for p in paused:
            os.kill(p.pid, signal.SIGSTOP)
        resume = threading.Timer(8, lambda: [os.kill(p.pid, signal.SIGCONT) for p in paused])
        resume.start()
        t0 = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - NVFlare's own error or ours, as long as it comes
            login(poc.admin_name, kit, timeout=3, grace=10).close()
        assert time.monotonic() - t0 < 3 + 10 + 2
        resume.join()
        session = login(poc.admin_name, kit, timeout=30)
        assert session.get_system_info().server_info is not None
        close_quietly(session)
    finally:
        for p in paused:
            with contextlib.suppress(psutil.Error):
                p.resume()
        poc.stop()
