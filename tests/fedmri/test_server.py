"""FedMRI server: uniform encoder-only average, negatives through the extras channel, double opt-in relay."""

import logging

import numpy as np
import pytest
from nvflare.app_common.abstract.fl_model import FLModel

from src.aggregators.fedmri import EncoderAverageAggregator, FedMRIFedAvg, FedMRIRecipe
from src.protocol import FEDMRI_RELAY_META, NUM_STEPS_KEY, unpack_negatives


def _update(site, value, steps, consent=False, extra=None):
    params = {"encoder.w": np.full(3, value, dtype=np.float32)}
    params.update(extra or {})
    return FLModel(params=params, meta={"client_name": site, NUM_STEPS_KEY: steps, FEDMRI_RELAY_META: consent})


def _aggregate(aggregator, updates):
    aggregator.reset_stats()
    for u in updates:
        aggregator.accept_model(u)
    return aggregator.aggregate_model()


def test_average_is_uniform_and_encoder_only():
    agg = EncoderAverageAggregator()
    agg.set_reference({"encoder.w": np.zeros(3, dtype=np.float32)})
    # steps 1 vs 99 would give 0.99 under step-weighted FedAvg; FedMRI's rule is 1/N
    result = _aggregate(agg, [_update("site-1", 1.0, 1), _update("site-2", 0.0, 99),
                              _update("site-3", 5.0, 1, extra={"decoder.w": np.ones(2, dtype=np.float32)})])
    assert set(result.params) == {"encoder.w"}
    np.testing.assert_allclose(result.params["encoder.w"], 0.5)
    assert result.meta["weights"] == "uniform" and result.meta["aggregated_sites"] == ["site-1", "site-2"]
    assert "decoder.w" in result.meta["dropped_sites"]["site-3"]  # a decoder key gets the update dropped
    assert sorted(agg.previous_updates) == ["site-1", "site-2"]  # pre-average encoders kept for the next round


def _controller(**kw):
    c = FedMRIFedAvg(num_rounds=2, aggregator=EncoderAverageAggregator(), shared_keys=["encoder.w"], **kw)
    return c


def _after_round(controller, consents=(True, True)):
    agg = controller.aggregator
    agg.set_reference({"encoder.w": np.zeros(3, dtype=np.float32)})
    _aggregate(agg, [_update("site-1", 1.0, 4, consents[0]), _update("site-2", 3.0, 4, consents[1])])
    return FLModel(params={"encoder.w": np.full(3, 2.0, dtype=np.float32), "decoder.w": np.zeros(2)})


def test_round_one_sends_no_negatives():
    for negatives in ("exact", "linear"):
        c = _controller(negatives=negatives, relay_snapshots=True)
        assert c.round_extras(FLModel(params={"encoder.w": np.zeros(3)})) == {}


def test_linear_summary_needs_no_snapshot_and_is_int8():
    c = _controller(negatives="linear")
    extras = c.round_extras(_after_round(c, consents=(False, False)))
    mode, payload = unpack_negatives(extras)
    assert mode == "linear" and payload["num_negatives"] == 2
    assert payload["sign_sum"]["encoder.w"].dtype == np.int8
    np.testing.assert_array_equal(payload["sign_sum"]["encoder.w"], [0, 0, 0])  # 2 - 1 > 0, 2 - 3 < 0
    assert float(payload["distance"][0]) == pytest.approx(6.0)
    assert not any("snapshot" in k for k in extras)


@pytest.mark.parametrize("server,sites,relayed", [(False, (True, True), False), (True, (True, False), False),
                                                  (True, (False, False), False), (True, (True, True), True)])
def test_snapshots_reach_sites_only_with_both_opt_ins(server, sites, relayed, caplog):
    c = _controller(negatives="exact", relay_snapshots=server)
    with caplog.at_level(logging.WARNING):
        extras = c.round_extras(_after_round(c, consents=sites))
    if relayed:
        mode, snaps = unpack_negatives(extras)
        assert mode == "exact" and len(snaps) == 2
        np.testing.assert_allclose(snaps[0]["encoder.w"], 1.0)
        assert "relaying the pre-average encoder snapshots" in caplog.text
    else:
        assert extras == {} and "L_con off" in caplog.text


def test_only_shared_keys_are_sent_and_extras_stay_out_of_the_global_model():
    c = _controller(negatives="linear")
    sent = []
    from src.aggregators.controller import FederatedFedAvg

    original = FederatedFedAvg.__mro__[1].send_model  # NVFlare's FedAvg.send_model

    def capture(self, task_name="train", data=None, targets=None, min_responses=None, timeout=0, callback=None):
        sent.append(data)

    FederatedFedAvg.__mro__[1].send_model = capture
    try:
        c.sample_clients = lambda n=None: ["site-1", "site-2"]
        model = _after_round(c)
        c.send_model("train", model, ["site-1", "site-2"])
    finally:
        FederatedFedAvg.__mro__[1].send_model = original
    assert len(sent) == 1
    keys = set(sent[0].params)
    assert "decoder.w" not in keys and "encoder.w" in keys
    assert any(k.startswith("__extra__/fedmri_negatives/sign/") for k in keys)
    assert set(model.params) == {"encoder.w", "decoder.w"}  # the global model holds no extras


def test_recipe_rejects_unknown_negatives():
    import torch

    with pytest.raises(ValueError, match="negatives must be one of"):
        FedMRIRecipe(negatives="mean", name="x", model=torch.nn.Linear(1, 1), min_clients=1, num_rounds=1,
                     train_script="x.py")


def test_traffic_is_recorded_per_round():
    from src.aggregators.controller import FederatedFedAvg

    c = _controller(negatives="linear")
    original = FederatedFedAvg.__mro__[1].send_model
    FederatedFedAvg.__mro__[1].send_model = lambda self, *a, **k: None
    try:
        c.send_model("train", FLModel(params={"encoder.w": np.zeros(3, dtype=np.float32), "decoder.w": np.zeros(2)}),
                     ["site-1", "site-2"])
        c.send_model("train", _after_round(c), ["site-1", "site-2"])
    finally:
        FederatedFedAvg.__mro__[1].send_model = original
    assert c.model_bytes == [12, 12]  # the encoder only: 3 float32
    # round 1: no extras; round 2: 3 int8 signs + one float64 distance + the mode flag and N
    assert c.extras_bytes[0] == 0 and 3 + 8 <= c.extras_bytes[1] <= 3 + 8 + 16
    assert c.aggregator.received_keys == {"site-1": {"encoder.w"}, "site-2": {"encoder.w"}}
