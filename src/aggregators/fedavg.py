"""FedAvg on the server, with every site's update checked before it is used.

:func:`weighted_average` is the math (plain numpy, shared with the in-process benchmarks). :func:`check_update`
says why an update cannot be used: a claimed weight that is not a positive finite number, no parameters, keys the
global model does not have, a shape that differs from the global model's, or a NaN/Inf value. A single poisoned
update would otherwise turn the whole global model into NaN, silently.

:class:`FedAvgAggregator` is an NVFlare ``ModelAggregator``: it drops a bad update for the round with a logged
reason naming the site and the key, drops updates whose key set differs from the round's majority (every site of a
round must send the same keys; FedBN's sites all leave the same norms out), and aggregates the rest while at least
``min_updates`` are usable. A claimed weight far above the site's declared data size is dropped too: the declared
size is the operator's ``declared_weights[site]`` when given, else the site's own first accepted weight (a site's
data does not change during a job); a weight above ``max_weight_ratio`` times it is refused, and so is a first
claim above ``max_weight_ratio ** 2`` times the smallest other claim of that round (a site claiming 1e12 samples
would otherwise take over the average from round 0). Weights come from one meta key:
``NUM_STEPS_CURRENT_ROUND`` (NVFlare's stock FedAvg,
the tutorial jobs) or :data:`TRAIN_SAMPLES_KEY` (IOP-FL's reference weights n_k / sum n, which batch rounding makes
only roughly proportional to steps).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from src.protocol import NUM_STEPS_KEY, ROUND_ERROR_KEY, TRAIN_SAMPLES_KEY

__all__ = ["weighted_average", "check_update", "FedAvgAggregator", "WeightedFedAvgAggregator"]


def _as_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):  # torch tensors without importing torch on the server
        return v.detach().cpu().numpy()
    return np.asarray(v)


def weighted_average(states: Sequence[Mapping], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """``sum_k w_k * state_k / sum_k w_k`` key by key (integer tensors are rounded back to their dtype)."""
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state and at least one state, got {len(states)} states, "
                         f"{len(weights)} weights")
    if any(not _is_positive_finite(w) for w in weights):
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


def _is_positive_finite(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value) \
        and value > 0


def check_update(params: Mapping | None, meta: Mapping | None, weight_key: str,
                 reference: Mapping[str, tuple[int, ...]] | None = None) -> str | None:
    """Why this update cannot be aggregated (naming the key or field), or None when it can.

    Args:
        params: the site's parameters.
        meta: the site's FLModel meta; ``meta[weight_key]`` is its claimed weight.
        weight_key: the meta key of the weight.
        reference: ``{key: shape}`` of the global model the site was sent; None skips the key and shape checks.
    """
    if (meta or {}).get(ROUND_ERROR_KEY):
        return f"the site abandoned its round: {meta[ROUND_ERROR_KEY]}"
    weight = (meta or {}).get(weight_key)
    if not _is_positive_finite(weight):
        return f"meta[{weight_key!r}] = {weight!r} is not a positive finite number"
    if not params:
        return "no parameters"
    if reference is not None:
        unknown = sorted(set(params) - set(reference))
        if unknown:
            return f"keys not in the global model: {unknown[:5]}"
    for key, value in params.items():
        array = _as_numpy(value)
        if reference is not None and tuple(array.shape) != tuple(reference[key]):
            return f"key {key!r} has shape {tuple(array.shape)}, the global model's is {tuple(reference[key])}"
        if np.issubdtype(array.dtype, np.inexact):
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                return f"key {key!r} holds {bad} non-finite values (NaN/Inf)"
    return None


def _model_aggregator_base():
    try:
        from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
    except ImportError:  # plain-numpy use (benchmarks, tests) does not need NVFlare
        return object
    return ModelAggregator


class FedAvgAggregator(_model_aggregator_base()):
    """NVFlare ``ModelAggregator``: checked FedAvg weighted by ``meta[weight_key]`` (see the module docstring).

    Args:
        weight_key: FLModel meta key holding the site's weight.
        min_updates: fewest usable updates a round needs; fewer fails the round with the reasons.
    """

    def __init__(self, weight_key: str = NUM_STEPS_KEY, min_updates: int = 1, max_weight_ratio: float = 10.0,
                 declared_weights: Mapping[str, float] | None = None):
        super().__init__()
        if min_updates < 1:
            raise ValueError(f"min_updates must be >= 1, got {min_updates!r}")
        if not (_is_positive_finite(max_weight_ratio) and max_weight_ratio >= 1):
            raise ValueError(f"max_weight_ratio must be a finite number >= 1, got {max_weight_ratio!r}")
        for site, w in (declared_weights or {}).items():
            if not _is_positive_finite(w):
                raise ValueError(f"declared_weights[{site!r}] = {w!r} is not a positive finite number")
        self.weight_key, self.min_updates, self.max_weight_ratio = weight_key, min_updates, float(max_weight_ratio)
        self.declared: dict[str, float] = {k: float(v) for k, v in (declared_weights or {}).items()}
        self._reference: dict[str, tuple[int, ...]] | None = None
        self.reset_stats()

    def set_reference(self, params: Mapping) -> None:
        """The global model sent this round: updates must use its keys and shapes."""
        self._reference = {k: tuple(_as_numpy(v).shape) for k, v in params.items()}

    def accept_model(self, model) -> None:
        site = (model.meta or {}).get("client_name", "unknown site")
        reason = check_update(model.params, model.meta, self.weight_key, self._reference)
        if reason is not None:
            self._drop(site, reason)
            return
        self._updates.append((site, model.params, float(model.meta[self.weight_key]), model.metrics or {}))

    def _weight_checked(self, updates):
        """Drop claimed weights far above the site's declared size (see the module docstring)."""
        kept = []
        for update in updates:
            site, weight = update[0], update[2]
            others = [w for s, _, w, _ in updates if s != site]
            reason = None
            if site in self.declared and weight > self.max_weight_ratio * self.declared[site]:
                reason = (f"claimed weight {weight:g} is more than {self.max_weight_ratio:g} x its declared size "
                          f"{self.declared[site]:g}")
            elif site not in self.declared and others and weight > self.max_weight_ratio ** 2 * min(others):
                reason = (f"claimed weight {weight:g} is more than {self.max_weight_ratio ** 2:g} x the smallest "
                          f"other site's ({min(others):g}) and the site has no declared size yet")
            if reason:
                self._drop(site, reason)
            else:
                kept.append(update)
        for site, _, weight, _ in kept:
            self.declared.setdefault(site, weight)
        return kept

    def aggregate_model(self):
        from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
        from nvflare.app_common.app_constant import AppConstants

        updates = self._weight_checked(self._majority_key_set())
        if not updates:
            raise RuntimeError(f"no site results to aggregate this round{self._dropped_text()}")
        if len(updates) < self.min_updates:
            raise RuntimeError(f"only {len(updates)} usable site results this round, {self.min_updates} "
                               f"needed{self._dropped_text()}")
        weights = [w for _, _, w, _ in updates]
        params = weighted_average([p for _, p, _, _ in updates], weights)
        metrics = _weighted_metrics([m for *_, m in updates], weights)
        meta = {"nr_aggregated": len(updates), "aggregated_sites": [s for s, *_ in updates],
                "dropped_sites": dict(self._dropped),
                # NVFlare's round_metrics.jsonl then keeps each site's reported metrics, as with its own FedAvg
                AppConstants.METRICS_AGGREGATION_INFO: {
                    "metric_source": "client_reported_flmodel_metrics", "use_contribution_sites": True,
                    "aggregation": {"method": "weighted_average", "weight_key": self.weight_key},
                }}
        self.reset_stats()
        return FLModel(params=params, params_type=ParamsType.FULL, metrics=metrics or None, meta=meta)

    def reset_stats(self) -> None:
        self._updates: list[tuple[str, Mapping, float, Mapping]] = []
        self._dropped: list[tuple[str, str]] = []

    @property
    def dropped(self) -> list[tuple[str, str]]:
        """``(site, reason)`` of every update dropped since the last aggregation."""
        return list(self._dropped)

    def _drop(self, site: str, reason: str) -> None:
        self._dropped.append((site, reason))
        message = f"dropping the update of {site} for this round: {reason}"
        if getattr(self, "fl_ctx", None) is not None:
            self.warning(message)
        else:
            import logging

            logging.getLogger(__name__).warning(message)

    def _majority_key_set(self) -> list[tuple[str, Mapping, float, Mapping]]:
        if not self._updates:
            return []
        counts = Counter(frozenset(p) for _, p, _, _ in self._updates)
        majority = max(counts, key=lambda keys: (counts[keys], len(keys)))
        kept = []
        for update in self._updates:
            keys = frozenset(update[1])
            if keys == majority:
                kept.append(update)
            else:
                missing, extra = sorted(majority - keys), sorted(keys - majority)
                self._drop(update[0], f"key set differs from the other sites' (missing {missing[:3]}, extra "
                                      f"{extra[:3]})")
        return kept

    def _dropped_text(self) -> str:
        return "; dropped: " + "; ".join(f"{s}: {r}" for s, r in self._dropped) if self._dropped else ""


def _weighted_metrics(metrics: list[Mapping], weights: list[float]) -> dict[str, float]:
    """Weighted mean of the numeric metrics every site reported (the sites' score of the received model)."""
    common = set.intersection(*(set(m) for m in metrics)) if metrics else set()
    out = {}
    for key in sorted(common):
        values = [m[key] for m in metrics]
        if all(_is_number(v) for v in values):
            out[key] = float(sum(w * v for w, v in zip(weights, values)) / sum(weights))
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)


class WeightedFedAvgAggregator(FedAvgAggregator):
    """:class:`FedAvgAggregator` weighted by each site's training samples (IOP-FL's server rule)."""

    def __init__(self, weight_key: str = TRAIN_SAMPLES_KEY, min_updates: int = 1, max_weight_ratio: float = 10.0,
                 declared_weights: Mapping[str, float] | None = None):
        super().__init__(weight_key=weight_key, min_updates=min_updates, max_weight_ratio=max_weight_ratio,
                         declared_weights=declared_weights)
