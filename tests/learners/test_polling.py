"""src/learners/polling.py: the site side's shorter waits between rounds (NVFlare 2.9 polls at fixed 0.5 s)."""

import sys
import types

import pytest


@pytest.fixture()
def worker_module(monkeypatch):
    """A stand-in for NVFlare's simulator worker module (registered under its name), recording its sleeps."""
    import time as real_time

    from src.learners import polling

    slept = []
    monkeypatch.setattr(real_time, "sleep", lambda s: slept.append(round(s, 3)))
    module = types.ModuleType(polling.SIM_WORKER_MODULE)
    module.ClientTaskWorker = object
    module.time = real_time
    monkeypatch.setitem(sys.modules, polling.SIM_WORKER_MODULE, module)
    return module, slept


@pytest.fixture()
def backend(monkeypatch):
    from nvflare.app_common.executors.client_api import in_process_backend

    monkeypatch.setattr(in_process_backend, "_RESULT_POLL_INTERVAL", 0.5)  # restored after the test
    return in_process_backend


def test_client_api_loops_poll_faster_and_fetches_are_quick_only_after_a_result(worker_module, backend):
    from src.learners.polling import FETCH_SECONDS, POLL_SECONDS, TaskPacing

    module, slept = worker_module
    context = types.SimpleNamespace(api=types.SimpleNamespace(result_check_interval=2.0))
    pacing = TaskPacing(context)
    assert context.api.result_check_interval == POLL_SECONDS and backend._RESULT_POLL_INTERVAL == POLL_SECONDS
    module.time.sleep(0.5)  # before any result: NVFlare's own wait
    pacing.result_sent()
    module.time.sleep(0.5)  # a task is due: the worker fetches again sooner
    module.time.sleep(0.05)  # shorter waits stay as they are
    pacing.clock.fast_until = 0.0  # the window has passed
    module.time.sleep(0.5)
    assert slept == [0.5, FETCH_SECONDS, 0.05, 0.5]
    assert module.time.monotonic() > 0  # the rest of the time module is the real one


def test_a_second_pacing_reuses_the_installed_clock_and_nothing_breaks_outside_the_simulator(worker_module, backend,
                                                                                             monkeypatch):
    from src.learners import polling

    module, _ = worker_module
    first = polling.TaskPacing(types.SimpleNamespace(api=None))
    second = polling.TaskPacing(object())  # no Client API object: nothing to change there
    assert module.time is first.clock is second.clock
    monkeypatch.delitem(sys.modules, polling.SIM_WORKER_MODULE)
    alone = polling.TaskPacing(types.SimpleNamespace())  # not in a simulator worker: only the Client API loops
    alone.result_sent()
    assert alone.clock is not first.clock
