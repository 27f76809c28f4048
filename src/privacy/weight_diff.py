"""Run a weight-difference privacy filter (PercentilePrivacy, SVTPrivacy) on a site that sends full weights.

NVFlare's Percentile and SVT filters threshold, clip and noise ``delta_w``; on full weights they would destroy the
model. Instead of switching the whole job to weight differences (which needs every server aggregator to apply them),
the site remembers the global model it received (:class:`RememberGlobalModel`, a task-data filter) and
:class:`FilterWeightDiff` (a task-result filter) sends ``global + filter(local - global)``. The server knows the
global model, so what it learns is exactly the filtered difference; FedAvg of ``global + d_k`` is ``global + mean
d_k``, so every aggregator (ours, IOP-FL's) works unchanged.
"""

from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

__all__ = ["FilterWeightDiff", "RememberGlobalModel"]

#: (key, site) -> the global weights the site received with its current task (one client job process per site)
_RECEIVED: dict[tuple[str, str], dict[str, np.ndarray]] = {}


def _numpy(v) -> np.ndarray:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def _site(fl_ctx: FLContext) -> str:
    return fl_ctx.get_identity_name() if fl_ctx is not None else ""


class RememberGlobalModel(DXOFilter):
    """Task-data filter: keep a copy of the global weights a site receives (changes nothing)."""

    def __init__(self, key: str = "privacy"):
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])
        self.key = key

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        _RECEIVED[(self.key, _site(fl_ctx))] = {k: _numpy(v).copy() for k, v in (dxo.data or {}).items()}
        return None


class FilterWeightDiff(DXOFilter):
    """Task-result filter: full weights out, with ``inner`` applied to their difference from the received model.

    Args:
        inner: an NVFlare ``DXOFilter`` for ``WEIGHT_DIFF`` data (PercentilePrivacy, SVTPrivacy).
        key: the :class:`RememberGlobalModel` whose copy to use.
    """

    def __init__(self, inner: DXOFilter, key: str = "privacy"):
        super().__init__(supported_data_kinds=[DataKind.WEIGHTS], data_kinds_to_filter=[DataKind.WEIGHTS])
        if not isinstance(inner, DXOFilter):
            raise TypeError(f"inner must be an NVFlare DXOFilter, got {type(inner).__name__!r}")
        self.inner, self.key = inner, key

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        super().handle_event(event_type, fl_ctx)
        self.inner.handle_event(event_type, fl_ctx)  # e.g. SVT's privacy accountant resets at START_RUN

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        received = _RECEIVED.get((self.key, _site(fl_ctx)))
        if received is None:
            raise RuntimeError(f"{type(self).__name__}: no global model remembered for site {_site(fl_ctx)!r}; "
                               f"RememberGlobalModel(key={self.key!r}) must filter the same task's data")
        local = {k: _numpy(v) for k, v in dxo.data.items()}
        unknown = sorted(set(local) - set(received))
        if unknown:
            raise KeyError(f"result keys not in the received global model (cannot form differences): {unknown[:5]}")
        diff = {k: v.astype(np.float64) - received[k].astype(np.float64) for k, v in local.items()}
        steps = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND, 1)
        filtered = self.inner.process_dxo(DXO(DataKind.WEIGHT_DIFF, diff, {MetaKey.NUM_STEPS_CURRENT_ROUND: steps}),
                                          shareable, fl_ctx)
        diff = filtered.data if filtered is not None else diff
        out = {}
        for k, v in local.items():
            if k not in diff:  # the inner filter withheld it: send the received value (no information)
                out[k] = received[k]
                continue
            value = received[k].astype(np.float64) + np.asarray(diff[k], np.float64)
            out[k] = (np.rint(value) if np.issubdtype(v.dtype, np.integer) else value).astype(v.dtype)
        dxo.data = out
        return dxo
