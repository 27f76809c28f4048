"""The checked FedAvg aggregator: bad updates are dropped with a reason, the rest still aggregate."""

import numpy as np
import pytest
import torch
from nvflare.app_common.abstract.fl_model import FLModel

from src.aggregators.fedavg import FedAvgAggregator, check_update
from src.protocol import NUM_STEPS_KEY


def _update(site, w, steps=10, **meta):
    return FLModel(params={"w": w, "n": np.array(3)}, metrics={"val_dice": 0.5},
                   meta={"client_name": site, NUM_STEPS_KEY: steps, **meta})


def test_nan_and_shape_mismatched_updates_are_dropped_and_the_rest_aggregate(caplog):
    agg = FedAvgAggregator(min_updates=2)
    agg.set_reference({"w": torch.zeros(2), "n": torch.tensor(0)})
    agg.accept_model(_update("site-1", np.array([1.0, 2.0], np.float32), steps=10))
    agg.accept_model(_update("site-2", np.array([np.nan, 2.0], np.float32)))
    agg.accept_model(_update("site-3", np.zeros(3, np.float32)))
    agg.accept_model(_update("site-4", np.array([3.0, 6.0], np.float32), steps=30))
    dropped = dict(agg.dropped)
    assert set(dropped) == {"site-2", "site-3"}
    assert "'w'" in dropped["site-2"] and "non-finite" in dropped["site-2"]
    assert "shape (3,)" in dropped["site-3"]
    assert "dropping the update of site-2" in caplog.text
    out = agg.aggregate_model()
    assert np.allclose(out.params["w"], [2.5, 5.0]) and out.meta["aggregated_sites"] == ["site-1", "site-4"]
    assert out.metrics == {"val_dice": 0.5} and np.isfinite(out.params["w"]).all()
    assert set(out.meta["dropped_sites"]) == {"site-2", "site-3"}


@pytest.mark.parametrize("weight", [None, 0, -3, float("nan"), float("inf"), True, "10"])
def test_a_claimed_weight_must_be_a_positive_finite_number(weight):
    reason = check_update({"w": np.ones(1)}, {NUM_STEPS_KEY: weight}, NUM_STEPS_KEY)
    assert reason and NUM_STEPS_KEY in reason and repr(weight) in reason


def test_unknown_keys_and_minority_key_sets_are_dropped():
    reason = check_update({"w": np.ones(2), "extra": np.ones(1)}, {NUM_STEPS_KEY: 1}, NUM_STEPS_KEY,
                          reference={"w": (2,)})
    assert "not in the global model" in reason and "extra" in reason
    agg = FedAvgAggregator()
    for site in ("a", "b"):
        agg.accept_model(FLModel(params={"w": np.ones(2), "bn": np.ones(1)}, meta={"client_name": site,
                                                                                  NUM_STEPS_KEY: 1}))
    agg.accept_model(FLModel(params={"w": np.full(2, 9.0)}, meta={"client_name": "c", NUM_STEPS_KEY: 1}))
    out = agg.aggregate_model()
    assert np.allclose(out.params["w"], 1.0) and out.meta["dropped_sites"].keys() == {"c"}


def test_too_few_usable_updates_fail_the_round_with_the_reasons():
    agg = FedAvgAggregator(min_updates=2)
    agg.accept_model(_update("site-1", np.ones(2, np.float32)))
    agg.accept_model(_update("site-2", np.array([np.inf, 1.0], np.float32)))
    with pytest.raises(RuntimeError, match=r"only 1 usable.*2 needed.*site-2.*non-finite"):
        agg.aggregate_model()
    with pytest.raises(ValueError, match="min_updates must be >= 1"):
        FedAvgAggregator(min_updates=0)
