"""Weighted FedAvg over whatever keys the sites send, weighted by their training samples.

IOP-FL's server (reference ``federated/fl_api.py``) averages the full state_dict with weights n_k / sum n, n_k
the site's training slices. NVFlare's stock aggregator weights by ``NUM_STEPS_CURRENT_ROUND`` (batches, which
rounding makes only roughly proportional to slices), so this one reads :data:`TRAIN_SAMPLES_KEY` instead and
refuses a result without it. Sites may send a subset of the keys (FedBN keeps BatchNorm local); every site of
a round must send the same subset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from src.learners.base import TRAIN_SAMPLES_KEY

__all__ = ["weighted_average", "WeightedFedAvgAggregator"]


def _as_numpy(v) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def weighted_average(states: Sequence[Mapping], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """``sum_k w_k * state_k / sum_k w_k`` key by key (integer tensors are rounded back to their dtype)."""
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state and at least one state, got {len(states)} states, "
                         f"{len(weights)} weights")
    if any(w <= 0 for w in weights):
        raise ValueError(f"weights must be > 0, got {list(weights)}")
    keys = set(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != keys:
            raise KeyError(f"state {i} has keys differing from state 0: {sorted(set(s) ^ keys)[:5]}")
    total = float(sum(weights))
    out = {}
    for k in states[0]:
        first = _as_numpy(states[0][k])
        acc = sum(w * _as_numpy(s[k]).astype(np.float64) for s, w in zip(states, weights)) / total
        out[k] = np.rint(acc).astype(first.dtype) if np.issubdtype(first.dtype, np.integer) else acc.astype(first.dtype)
    return out


def _model_aggregator_base():
    try:
        from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
    except ImportError:  # plain-torch use (benchmarks, tests) does not need NVFlare
        return object
    return ModelAggregator


class WeightedFedAvgAggregator(_model_aggregator_base()):
    """NVFlare ``ModelAggregator``: FedAvg weighted by each site's training samples.

    Args:
        weight_key: FLModel meta key holding the site's training sample count.
    """

    def __init__(self, weight_key: str = TRAIN_SAMPLES_KEY):
        super().__init__()
        self.weight_key = weight_key
        self._states: list[Mapping] = []
        self._weights: list[float] = []

    def accept_model(self, model) -> None:
        meta = model.meta or {}
        weight = meta.get(self.weight_key)
        if weight is None or weight <= 0:
            raise ValueError(f"site result needs a positive meta[{self.weight_key!r}], got {weight!r}")
        self._states.append(model.params)
        self._weights.append(float(weight))

    def aggregate_model(self):
        from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

        if not self._states:
            raise RuntimeError("no site results to aggregate this round")
        params = weighted_average(self._states, self._weights)
        n = len(self._states)
        self.reset_stats()
        return FLModel(params=params, params_type=ParamsType.FULL, meta={"nr_aggregated": n})

    def reset_stats(self) -> None:
        self._states, self._weights = [], []
