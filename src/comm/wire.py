"""Bytes on the wire, measured where NVFlare hands a message to its transport: one JSON line per message.

:class:`WireBytes` is an NVFlare ``Filter`` the job puts on the **server** at both ends of its filter chains:

* ``direction="task"``: the *last* task-data filter of the ``train`` task (server -> site): the task exactly as
  the server runner passes it to the transport, after every other output filter (quantization included);
* ``direction="result"``: the *first* task-result filter of the ``train`` task (site -> server): the result as
  it arrived, after every filter of the site (ExcludeVars, privacy, quantization) and before any server filter
  (dequantization).

What is counted: ``bytes`` is the length of NVFlare's own FOBS serialisation of the whole ``Shareable`` (headers,
DXO meta such as the quantization state, and the arrays, encoded inline with NVFlare's native numpy/tensor
encoding); ``array_bytes`` is the sum of the arrays' ``nbytes`` in the DXO data and meta (the payload alone).
What is not: NVFlare's transport sends arrays over 2 MB through its download service (chunks, each with a small
cell-message header), adds cell headers and the framing of its driver, and TCP/TLS add theirs; none of those is
in the figure. The server is the one party that sees every message of every site, so both directions are
counted there (one file, no clock or path shared between processes); a site's result is counted as received,
which is what the site serialised after its output filters.

Rows go to ``<server run dir>/metrics/wire_bytes.jsonl`` beside NVFlare's ``round_metrics.jsonl``;
:mod:`src.comm.wire_report` turns them into the run summary's figures (without importing NVFlare).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from src.comm.wire_report import DIRECTIONS, WIRE_FILE

__all__ = ["WIRE_FILE", "DIRECTIONS", "WireBytes", "shareable_bytes", "model_message_bytes", "as_numpy"]

_LOCK = threading.Lock()


def _nbytes(value) -> int:
    if hasattr(value, "nbytes") and hasattr(value, "dtype"):
        try:
            return int(value.nbytes)
        except (TypeError, AttributeError):
            return 0
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def serialised(shareable: Shareable) -> bytes:
    """The Shareable as NVFlare's FOBS serialises it (numpy and NVFlare's app types registered first, as NVFlare's
    own processes do)."""
    from nvflare.app_common.decomposers import common_decomposers
    from nvflare.fuel.utils import fobs

    common_decomposers.register()
    return fobs.dumps(shareable)


def shareable_bytes(shareable: Shareable) -> tuple[int, int]:
    """``(FOBS bytes of the whole Shareable, array bytes of its DXO data and meta)``."""
    from nvflare.apis.dxo import from_shareable

    total = len(serialised(shareable))
    try:
        dxo = from_shareable(shareable)
        arrays = _nbytes(dxo.data) + _nbytes(dxo.meta)
    except Exception:  # no DXO in it (an error reply): only the serialised size
        arrays = 0
    return total, arrays


def as_numpy(v):
    """A torch tensor as a detached CPU numpy array, other arrays as numpy, anything else unchanged."""
    import numpy as np

    if hasattr(v, "detach"):
        return v.detach().cpu().numpy()
    return np.asarray(v) if hasattr(v, "dtype") else v


def model_message_bytes(params: dict | None, metrics: dict | None = None, meta: dict | None = None,
                        current_round: int | None = None, total_rounds: int | None = None) -> int:
    """FOBS bytes of the message NVFlare builds from an ``FLModel`` with these parts, as :class:`WireBytes`
    counts a real one: ``FLModelUtils.to_shareable`` (the Client API's and the controller's conversion), tensors
    as numpy arrays (the jobs' exchange format). For the in-process comparisons, which run the jobs' learners and
    server rules without NVFlare's transport; checked against a simulator run's count in tests/comm."""
    from nvflare.app_common.abstract.fl_model import FLModel
    from nvflare.app_common.utils.fl_model_utils import FLModelUtils

    model = FLModel(params={k: as_numpy(v) for k, v in params.items()} if params is not None else None,
                    metrics=dict(metrics) if metrics else None, meta=dict(meta or {}),
                    current_round=current_round, total_rounds=total_rounds)
    return len(serialised(FLModelUtils.to_shareable(model)))


class WireBytes(Filter):
    """Counts each message's bytes (see the module docstring) and appends one row to :data:`WIRE_FILE`.

    Args:
        direction: ``"task"`` (server -> site) or ``"result"`` (site -> server).
    """

    def __init__(self, direction: str = "task"):
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.direction = direction

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            self._record(shareable, fl_ctx)
        except Exception as e:  # counting must never break a round
            self.log_warning(fl_ctx, f"wire byte count failed: {type(e).__name__}: {e}")
        return shareable

    def row(self, shareable: Shareable, fl_ctx: FLContext) -> dict:
        """The JSON row of one message: direction, site, task, round, bytes, array_bytes."""
        from nvflare.apis.fl_constant import FLContextKey
        from nvflare.apis.shareable import ReservedHeaderKey
        from nvflare.app_common.app_constant import AppConstants

        total, arrays = shareable_bytes(shareable)
        peer = fl_ctx.get_peer_context()
        site = (peer.get_identity_name() or None) if peer is not None else None
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME) or shareable.get_header(ReservedHeaderKey.TASK_NAME)
        round_ = shareable.get_header(AppConstants.CURRENT_ROUND)
        return {"direction": self.direction, "site": site, "task": task,
                "round": int(round_) if round_ is not None else None, "bytes": total, "array_bytes": arrays}

    def _record(self, shareable: Shareable, fl_ctx: FLContext) -> None:
        row = self.row(shareable, fl_ctx)
        run_dir = Path(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id()))
        path = run_dir / WIRE_FILE
        with _LOCK:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
