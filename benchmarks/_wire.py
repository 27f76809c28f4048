"""Bytes per round for the in-process comparisons, measured by NVFlare's own serialisation of each message.

The comparisons run the jobs' learners and server rules in one process, without NVFlare's transport, so nothing
is sent; :class:`RoundBytes` keeps the latest round's messages of each method (the server's task to each site and
every site's result, each as the ``FLModel`` the job would hand NVFlare) and :meth:`RoundBytes.measure` serialises
them with :func:`src.comm.wire.model_message_bytes`, the same figure the jobs' ``WireBytes`` filter writes for a
real run (tests/comm checks the two agree on a simulator run). Unquantized messages have the same size every
round once a method's extras are in (fixed shapes), so the last round is the per-round figure.

The serialisation runs in a spawned interpreter: FOBS serialisation in a process leaves NVFlare state behind that
broke the FLARE API login of a POC run later in the same process (found in the test suite).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from src.comm.wire import as_numpy

__all__ = ["RoundBytes", "DIRECTIONS"]

#: the comparisons' names for the two directions (the jobs' ``task`` and ``result``)
DIRECTIONS = ("server_to_site", "site_to_server")


def _plain(params: Mapping | None) -> dict | None:
    """Detached numpy copies (what is pickled to the measuring process)."""
    return None if params is None else {k: as_numpy(v) for k, v in params.items()}


def _measure(messages: list[dict]) -> list[int]:
    from src.comm.wire import model_message_bytes

    return [model_message_bytes(**m) for m in messages]


class RoundBytes:
    """The latest round's messages per method; :meth:`measure` gives ``{method: {direction: mean bytes per site}}``."""

    def __init__(self):
        self._messages: dict[tuple[str, str], tuple[int, list[dict]]] = {}

    def task(self, method: str, round_number: int, params: Mapping, total_rounds: int | None = None) -> None:
        """The server's task to one site: the global model with any extras packed in (src.protocol)."""
        self._add(method, "server_to_site", round_number,
                  {"params": _plain(params), "current_round": round_number, "total_rounds": total_rounds})

    def result(self, method: str, round_number: int, message: Mapping) -> None:
        """One site's result: ``{"params", "metrics", "meta"}`` as the job's Client API loop sends it
        (:func:`src.learners.client_api.result_message`)."""
        self._add(method, "site_to_server", round_number,
                  {"params": _plain(message["params"]), "metrics": dict(message.get("metrics") or {}),
                   "meta": dict(message.get("meta") or {})})

    def _add(self, method: str, direction: str, round_number: int, message: dict) -> None:
        kept_round, kept = self._messages.get((method, direction), (None, []))
        if kept_round != round_number:
            kept_round, kept = round_number, []
        kept.append(message)
        self._messages[(method, direction)] = (kept_round, kept)

    def measure(self) -> dict[str, dict[str, float]]:
        """Serialise every kept message in a spawned interpreter; mean bytes per site and direction."""
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        keys = list(self._messages)
        flat = [m for k in keys for m in self._messages[k][1]]
        if not flat:
            return {}
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            sizes = pool.submit(_measure, flat).result()
        out: dict[str, dict[str, float]] = {}
        i = 0
        for method, direction in keys:
            n = len(self._messages[(method, direction)][1])
            out.setdefault(method, {d: 0.0 for d in DIRECTIONS})[direction] = float(np.mean(sizes[i:i + n]))
            i += n
        return out
