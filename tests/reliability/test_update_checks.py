"""Poisoned updates: dropped on the server with the site named; NaN training on a site abandons its round.

The simulator test runs the real job with the reliability fault injection (``config.extra["fault_injection"]``):
site-2 sends NaN weights every round; the job ends rc 0, the server log names site-2, and no global model the
server saved holds a NaN.
"""

import math

import numpy as np
import pytest
import torch

from src.aggregators.fedavg import FedAvgAggregator
from src.protocol import NUM_STEPS_KEY, ROUND_ERROR_KEY


def _update(site, w, steps=10, **meta):
    from nvflare.app_common.abstract.fl_model import FLModel

    return FLModel(params={"w": np.asarray(w, np.float32)}, meta={"client_name": site, NUM_STEPS_KEY: steps, **meta})


def test_a_huge_claimed_weight_is_dropped_naming_the_site():
    agg = FedAvgAggregator()
    agg.accept_model(_update("site-1", [1.0], steps=10))
    agg.accept_model(_update("site-2", [100.0], steps=10**12))  # first claim, 1e11 x the other site's
    out = agg.aggregate_model()
    assert np.allclose(out.params["w"], [1.0]) and out.meta["aggregated_sites"] == ["site-1"]
    assert "site-2" in out.meta["dropped_sites"] and "claimed weight" in out.meta["dropped_sites"]["site-2"]
    # its first honest claim becomes its declared size; a later 20x claim is refused
    agg.accept_model(_update("site-1", [1.0], steps=10))
    agg.accept_model(_update("site-2", [3.0], steps=20))
    assert np.allclose(agg.aggregate_model().params["w"], [(10 + 60) / 30])
    agg.accept_model(_update("site-1", [1.0], steps=10))
    agg.accept_model(_update("site-2", [9.0], steps=400))
    out = agg.aggregate_model()
    assert np.allclose(out.params["w"], [1.0]) and "declared size 20" in out.meta["dropped_sites"]["site-2"]


def test_an_operator_declared_size_bounds_the_weight_and_bad_declarations_are_refused():
    agg = FedAvgAggregator(declared_weights={"site-1": 5})
    agg.accept_model(_update("site-1", [1.0], steps=51))
    agg.accept_model(_update("site-2", [2.0], steps=10))
    out = agg.aggregate_model()
    assert out.meta["aggregated_sites"] == ["site-2"] and "declared size 5" in out.meta["dropped_sites"]["site-1"]
    for bad in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match="declared_weights"):
            FedAvgAggregator(declared_weights={"site-1": bad})


def test_nan_weights_and_abandoned_rounds_are_dropped_and_min_updates_holds():
    agg = FedAvgAggregator(min_updates=2)
    agg.accept_model(_update("site-1", [1.0]))
    agg.accept_model(_update("site-2", [math.nan]))
    agg.accept_model(_update("site-3", [2.0], **{ROUND_ERROR_KEY: "loss is nan at epoch 1 (batch files: a.nii)"}))
    with pytest.raises(RuntimeError, match="only 1 usable") as info:
        agg.aggregate_model()
    assert "site-2: key 'w' holds 1 non-finite" in str(info.value) and "site-3: the site abandoned" in str(info.value)


@pytest.mark.parametrize("field,value", [("lr", math.nan), ("lr", math.inf), ("lr", -1.0), ("fedprox_mu", math.nan),
                                         ("fedprox_mu", -0.1)])
def test_config_values_must_be_finite_and_in_range(field, value):
    from src.config.base import LearnerConfig

    with pytest.raises(ValueError, match=field):
        LearnerConfig(**{field: value})


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -0.1, 1.0])
def test_iopfl_alpha_must_be_finite_and_in_range(alpha):
    from src.config.iopfl import IOPFLConfig

    with pytest.raises(ValueError, match="alpha"):
        IOPFLConfig(alpha=alpha)


def test_a_nan_loss_abandons_the_round_naming_the_batch_files_and_restores_the_model(mednist_data, tmp_path):
    from src.config.tutorial import MedNISTConfig
    from src.learners.base import NonFiniteLossError
    from src.learners.classification import ClassificationLearner

    config = MedNISTConfig(data_root=str(mednist_data["data_root"]), datalist_dir=str(mednist_data["datalist_dir"]),
                           batch_size=8, num_threads=1)
    learner = ClassificationLearner("site-1", config, output_dir=tmp_path)
    start = {k: v.clone() for k, v in learner.model.state_dict().items()}
    calls = {"n": 0}
    honest = learner.loss_function

    def poisoned(pred, label):  # the second batch's loss is NaN (as a corrupt image would make it)
        calls["n"] += 1
        loss = honest(pred, label)
        return loss * math.nan if calls["n"] == 2 else loss

    learner.loss_function = poisoned
    with pytest.raises(NonFiniteLossError, match=r"site-1: round 1: training loss is nan at epoch 1, iteration 2") \
            as info:
        learner.train_round(round_number=1)
    assert ".png" in str(info.value) or ".jpeg" in str(info.value) or str(mednist_data["data_root"]) in str(info.value)
    assert all(torch.equal(v, start[k]) for k, v in learner.model.state_dict().items())
    learner.loss_function = honest
    result = learner.train_round(round_number=1)  # the next round trains normally from the restored state
    assert math.isfinite(result.metrics["train_loss"])
    assert all(torch.isfinite(v).all() for v in result.params.values() if v.is_floating_point())


@pytest.mark.sim
def test_a_site_sending_nan_weights_is_dropped_end_to_end(mednist_data, tmp_path, monkeypatch):
    import jobs.mednist_fedavg as job
    from jobs.common import common_config, execute

    def poisoned_config(args):
        return {**common_config(args), "extra": {"fault_injection": {"site": "site-2", "kind": "nan_weights"}}}

    monkeypatch.setattr(job, "common_config", poisoned_config)
    args = job.parse_args(["--n-clients", "2", "--num-rounds", "2", "--batch-size", "8", "--tracking", "none",
                           "--data-root", str(mednist_data["data_root"]), "--datalist-dir",
                           str(mednist_data["datalist_dir"]), "--workspace", str(tmp_path / "ws")])
    result = execute(job.build_recipe(args), args)
    server_log = "".join(p.read_text() for p in result.rglob("server/log.txt"))
    assert server_log.count("dropping the update of site-2 for this round: key") == 2  # both rounds, key named
    assert "non-finite values" in server_log
    # the persistor's last/best global models and the copies cross-site evaluation sent out (not its metric files)
    models = [p for p in result.rglob("*.pt") if "global_model" in p.name and p.parent.name != "result_shareables"]
    assert models, "the server saved no global model"
    for path in models:
        arrays = [a for a in (np.asarray(v) for v in _load_global(path).values()) if np.issubdtype(a.dtype, np.inexact)]
        assert arrays and all(np.isfinite(a).all() for a in arrays), f"{path.name} holds a NaN"


def _load_global(path):
    """A saved global model's ``{key: array}`` (torch file of the persistor, or NVFlare FOBS of the controller)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        from nvflare.fuel.utils import fobs

        state = fobs.loadf(str(path))
    state = getattr(state, "params", state)  # an FLModel
    state = getattr(state, "data", state)  # a DXO
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return {k: v.numpy() if torch.is_tensor(v) else v for k, v in state.items()}
