"""An admin (FLARE API) login that always returns.

NVFlare 2.9's ``new_secure_session(..., timeout=T)`` bounds only the connect. When the connection is up but the
login reply never comes (a server paused or overloaded at that moment), it closes the half-open session, and that
close joins a connector thread blocked in a socket read that has no timeout: the call never returns. Seen in CI (the
separate-hosts monitor logged one "Communication Error" and then nothing for 180 s) and reproduced here by pausing the
server with SIGSTOP during a login. So the login runs in a daemon thread that we stop waiting for after ``T`` plus a
grace period; the abandoned thread and its socket stay behind until the process exits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: seconds we wait beyond NVFlare's own connect timeout for its login reply and close
LOGIN_GRACE = 15.0

__all__ = ["AdminLoginTimeout", "LOGIN_GRACE", "bounded_call", "close_quietly", "login"]


class AdminLoginTimeout(TimeoutError):
    """The FLARE API login neither succeeded nor failed in time."""


def bounded_call(call: Callable[[], T], seconds: float, what: str) -> T:
    """``call()``'s result or exception, or :class:`AdminLoginTimeout` once ``seconds`` have passed."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as e:  # handed to the caller's thread below
            outcome["error"] = e

    worker = threading.Thread(target=run, name=f"bounded:{what}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise AdminLoginTimeout(f"{what}: no answer within {seconds:.0f} s (NVFlare's login hung; left behind)")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def login(username: str, kit: str, timeout: float, grace: float = LOGIN_GRACE):
    """A FLARE API session for ``username`` from the startup kit ``kit``, or an exception within ``timeout + grace``."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    return bounded_call(lambda: new_secure_session(username, kit, timeout=timeout), timeout + grace,
                        f"admin login as {username} with {kit}")


def close_quietly(session, seconds: float = LOGIN_GRACE) -> None:
    """Close a session whose server may be gone; its close can hang the same way, so it is bounded too."""
    if session is None:
        return
    try:
        bounded_call(session.close, seconds, "admin session close")
    except Exception:  # closing a broken session: nothing left to do with it
        pass
