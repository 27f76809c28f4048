"""Server/site protocol of the outside phase: expert packing, double opt-in, routing reply."""

import numpy as np
import pytest
import torch

from src.config.iopfl import IOPFLConfig
from src.iopfl.controller import IOPFLFedAvg, IOPFLRecipe, pack_experts, unpack_experts
from src.learners.iopfl import EXPORT_PHASE, ROUTE_PHASE, IOPFLLearner


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
