"""Server/site protocol of the outside phase: expert packing, double opt-in, routing reply."""

import numpy as np
import pytest
import torch
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.fedavg import FedAvg

from src.aggregators.iopfl import IOPFLFedAvg, IOPFLRecipe
from src.config.iopfl import IOPFLConfig
from src.learners.iopfl import EXPORT_PHASE, ROUTE_PHASE, IOPFLLearner
from src.protocol import PHASE_KEY, pack_experts, unpack_experts


def test_pack_unpack_roundtrip_keeps_order():
    experts = [{"w": np.full(2, float(i))} for i in range(12)]  # 12 > 9: numeric, not lexical, order
    got, glob = unpack_experts(pack_experts(experts, {"w": np.zeros(2)}))
    assert [e["w"][0] for e in got] == list(range(12)) and glob["w"].tolist() == [0, 0]
    with pytest.raises(KeyError, match="unexpected packed expert key"):
        unpack_experts({"bogus/w": 1})
    with pytest.raises(KeyError, match="no 'global/"):
        unpack_experts({"expert0/w": 1})


def test_controller_trains_only_train_sites_and_rejects_overlap():
    c = IOPFLFedAvg(num_rounds=1, train_sites=["A", "B"], ood_site="C")
    assert c.sample_clients(3) == ["A", "B"]
    with pytest.raises(ValueError, match="must not be one of train_sites"):
        IOPFLFedAvg(num_rounds=1, train_sites=["A", "C"], ood_site="C")
    with pytest.raises(ValueError, match="must not be one of train_sites"):
        IOPFLRecipe(train_sites=["A"], ood_site="A", name="x", model=torch.nn.Linear(1, 1), min_clients=1,
                    num_rounds=1, train_script="x.py")


def _learner(data, tmp_path, site, **kw):
    cfg = IOPFLConfig(data_root=str(data["data"]), datalist_dir=str(data["datalists"]), features=(4, 8, 16),
                      num_threads=1, tracking=(), tta_passes=1, **kw)
    return IOPFLLearner(site, cfg, output_dir=tmp_path)


def test_site_refuses_export_without_its_own_opt_in(tiny_prostate, tmp_path):
    learner = _learner(tiny_prostate, tmp_path, "BIDMC")
    learner.train_round(None, 1)
    params, metrics = learner.run_phase(EXPORT_PHASE, {}, {})
    assert params == {} and metrics == {"export_refused": 1.0}
    with pytest.raises(ValueError, match="does not handle task phase 'nonsense'"):
        learner.run_phase("nonsense", {}, {})


def test_held_out_site_routes_over_received_experts(tiny_prostate, tmp_path):
    source = _learner(tiny_prostate, tmp_path, "BIDMC", export_personalised=True)
    source.train_round(None, 1)
    expert, _ = source.run_phase(EXPORT_PHASE, {}, {})
    target = _learner(tiny_prostate, tmp_path, "ISBI")
    _, metrics = target.run_phase(ROUTE_PHASE, pack_experts([expert], source.model.state_dict()), {})
    assert {"global_ood_dice", "routing_last_ood_dice", "bn_adapt_ood_hd95", "uniform_average_ood_dice2d"} <= set(
        metrics)
    assert (tmp_path / "ISBI_outside.json").is_file()


def test_outside_phase_relays_the_trained_global_model_not_the_initial_one(monkeypatch, tmp_path):
    c = IOPFLFedAvg(num_rounds=1, train_sites=["A", "B"], ood_site="C", export_personalised=True)
    initial, trained = {"w": np.zeros(2)}, {"w": np.full(2, 7.0)}
    # the persistor's load_model returns its initial weights even after save_model (nvflare 2.9)
    monkeypatch.setattr(c, "load_model", lambda: FLModel(params=initial))
    monkeypatch.setattr(FedAvg, "update_model", lambda self, model, aggr: FLModel(params=aggr.params))
    assert c.final_global_model().params is initial  # before any round
    c.update_model(FLModel(params=initial), FLModel(params=trained))
    sent = []

    def send_model_and_wait(task_name, targets, data):
        sent.append((targets, data))
        if targets == ["C"]:
            return [FLModel(params={}, metrics={"routing_last_ood_dice": 0.5})]
        return [FLModel(params={"w": np.ones(2)}, meta={"site": s}) for s in targets]

    monkeypatch.setattr(c, "send_model_and_wait", send_model_and_wait)
    monkeypatch.setattr(c, "_run_dir", lambda: tmp_path)
    c._route_on_held_out_site()
    targets, relayed = sent[-1]
    assert targets == ["C"] and relayed.meta[PHASE_KEY] == ROUTE_PHASE
    experts, global_params = unpack_experts(relayed.params)
    assert len(experts) == 2 and global_params["w"].tolist() == [7.0, 7.0]
    assert (tmp_path / "iopfl_outside.json").is_file()
