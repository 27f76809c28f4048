"""Stopping processes in bounded time: SIGTERM, a grace period, then SIGKILL (shared by the job scripts'
``jobs.common.stop_descendants`` and the POC's ``deploy.poc.PocDeployment.stop``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

__all__ = ["terminate_then_kill"]


def terminate_then_kill(procs: Iterable, grace: float, kill_wait: float = 5.0) -> list:
    """SIGTERM every ``psutil.Process`` in ``procs``, SIGKILL those still alive after ``grace`` s, wait up to
    ``kill_wait`` s for them; return the ones that had to be killed. Processes already gone are skipped."""
    import psutil

    procs = list(procs)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=kill_wait)
    return alive
