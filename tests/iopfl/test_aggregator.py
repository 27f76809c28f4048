import numpy as np
import pytest
import torch

from src.aggregators.fedavg import WeightedFedAvgAggregator, weighted_average
from src.protocol import TRAIN_SAMPLES_KEY


def test_weighted_average_hand_computed():
    a = {"w": torch.tensor([0.0, 10.0]), "n": torch.tensor(2)}
    b = {"w": np.array([4.0, 20.0], np.float32), "n": torch.tensor(6)}
    out = weighted_average([a, b], [1.0, 3.0])
    assert np.allclose(out["w"], [3.0, 17.5]) and out["w"].dtype == np.float32
    assert out["n"] == 5 and np.issubdtype(out["n"].dtype, np.integer)


def test_weighted_average_rules():
    with pytest.raises(KeyError, match="differing"):
        weighted_average([{"a": np.zeros(1)}, {"b": np.zeros(1)}], [1, 1])
    with pytest.raises(ValueError, match="weights must be > 0"):
        weighted_average([{"a": np.zeros(1)}], [0])


def test_model_aggregator_weights_by_training_samples():
    from nvflare.app_common.abstract.fl_model import FLModel

    agg = WeightedFedAvgAggregator()
    agg.accept_model(FLModel(params={"w": np.array([1.0])}, meta={TRAIN_SAMPLES_KEY: 10}))
    agg.accept_model(FLModel(params={"w": np.array([4.0])}, meta={TRAIN_SAMPLES_KEY: 20}))
    out = agg.aggregate_model()
    assert np.allclose(out.params["w"], [3.0]) and out.meta["nr_aggregated"] == 2
    # a result without its weight is dropped for the round with the reason (it used to raise and end the job)
    agg.accept_model(FLModel(params={"w": np.array([1.0])}, meta={}))
    assert len(agg.dropped) == 1 and TRAIN_SAMPLES_KEY in agg.dropped[0][1]
    with pytest.raises(RuntimeError, match="no site results"):
        agg.aggregate_model()
