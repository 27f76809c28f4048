"""Shorter waits between a site's rounds: NVFlare 2.9's client side polls at fixed 0.5-s intervals.

Between a site's result and its next round three loops of NVFlare's sleep on constants, not on the server's
``task_request_interval`` (0.1 s in our jobs) and with no setting to change them:

* the in-process Client API's executor checks for the trainer's result every 0.5 s and the trainer's
  ``flare.receive()`` checks for a task every 0.5 s (``in_process_backend._RESULT_POLL_INTERVAL``: "the frozen
  surface deliberately drops the knob");
* the simulator's worker (``simulator_worker.ClientTaskWorker.do_one_task``) sleeps 0.5 s after every fetch that
  finds no task yet, and a site's first fetch after its result usually comes before the server has aggregated.

Measured in ``benchmarks/fedavg_overhead.py`` (2 sites, prostate 3-D UNet, quiet 2-core machine): about 2 s of
idle time per round on the slowest site, the bulk of the framework's cost against plain processes. Here the two
Client API loops poll every :data:`POLL_SECONDS`, and the simulator worker fetches every :data:`FETCH_SECONDS`
(the server's own ``task_request_interval``) for :data:`FAST_FETCH_WINDOW` seconds after each result, when the
next round's task is due, then at NVFlare's 0.5 s again, so sites waiting on a slow site do not flood the server
with requests. Each loop only sleeps and reads a field; nothing else of NVFlare changes. Nothing is changed
where an attribute is missing (another Client API mode, another NVFlare version, not the simulator): slower
rounds, never a failure.
"""

from __future__ import annotations

import sys
import time

__all__ = ["TaskPacing", "POLL_SECONDS", "FETCH_SECONDS", "FAST_FETCH_WINDOW"]

#: the in-process Client API's two polling loops (NVFlare 2.9: 0.5 s)
POLL_SECONDS = 0.02
#: the simulator worker's wait between task fetches just after a result (NVFlare 2.9: 0.5 s)
FETCH_SECONDS = 0.1
#: seconds after a result during which the simulator worker fetches every FETCH_SECONDS (at most 20 extra fetches
#: per site and round); measured with 16 sites on 2 cores (benchmarks/scale.py): 4.6 s per round with 2 s, 7.4 s
#: with 5 s (sites waiting on the others fetched all round long), so the window stays short
FAST_FETCH_WINDOW = 2.0
SIM_WORKER_MODULE = "nvflare.private.fed.app.simulator.simulator_worker"


class _PacedTime:
    """Stands in for the ``time`` module inside the simulator worker's module: ``sleep`` is capped at
    FETCH_SECONDS while a task is due; everything else is the real ``time``."""

    def __init__(self):
        self.fast_until = 0.0

    def sleep(self, seconds: float) -> None:
        if time.monotonic() < self.fast_until:
            seconds = min(seconds, FETCH_SECONDS)
        time.sleep(seconds)

    def __getattr__(self, name: str):
        return getattr(time, name)


def _simulator_worker_modules() -> list:
    """The simulator worker's module objects in this process (it runs as ``__main__`` under ``python -m``)."""
    found = []
    for module in (sys.modules.get("__main__"), sys.modules.get(SIM_WORKER_MODULE)):
        spec_name = getattr(getattr(module, "__spec__", None), "name", None)
        if module is not None and module not in found and SIM_WORKER_MODULE in (spec_name, module.__name__) \
                and hasattr(module, "ClientTaskWorker") and getattr(module, "time", None) is not None:
            found.append(module)
    return found


class TaskPacing:
    """Set up at ``flare.init()``; :meth:`result_sent` after each training result opens the fast-fetch window."""

    def __init__(self, context):
        from nvflare.app_common.executors.client_api import in_process_backend

        api = getattr(context, "api", None)
        if hasattr(api, "result_check_interval"):
            api.result_check_interval = POLL_SECONDS
        if hasattr(in_process_backend, "_RESULT_POLL_INTERVAL"):
            in_process_backend._RESULT_POLL_INTERVAL = POLL_SECONDS
        self.clock = _PacedTime()
        for module in _simulator_worker_modules():
            if isinstance(module.time, _PacedTime):
                self.clock = module.time
            else:
                module.time = self.clock

    def result_sent(self) -> None:
        self.clock.fast_until = time.monotonic() + FAST_FETCH_WINDOW
