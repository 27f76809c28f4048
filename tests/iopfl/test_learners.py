"""Payload contracts of the learners: FedBN keeps BatchNorm local, IOP-FL never sends its personalised model."""

import pytest
import torch

from src.config.iopfl import IOPFLConfig
from src.learners.iopfl import IOPFLLearner
from src.learners.prostate2d import Prostate2DLearner
from src.models.unet2d import norm_keys
from src.protocol import TRAIN_SAMPLES_KEY

FEATURES = (4, 8, 16)


def _config(data, algorithm, **kw):
    return IOPFLConfig(data_root=str(data["data"]), datalist_dir=str(data["datalists"]), algorithm=algorithm,
                       features=FEATURES, num_threads=1, tracking=(), **kw)


def test_fedbn_keeps_norm_keys_local(tiny_prostate, tmp_path):
    learner = Prostate2DLearner("HK", _config(tiny_prostate, "fedbn"), output_dir=tmp_path)
    bn = set(norm_keys(learner.model))
    assert bn  # FedBN on a model without BatchNorm would silently be FedAvg
    incoming = {k: v + 5.0 if v.is_floating_point() else v for k, v in learner.model.state_dict().items()}
    before = {k: learner.model.state_dict()[k].clone() for k in bn}
    result = learner.train_round(incoming, 1)
    payloads = [result.params, learner.best_local_state()]
    learner.update_best(learner.evaluate())
    payloads.append(learner.best_local_state())
    for payload in payloads:
        assert payload and not (set(payload) & bn)
    # the server's copies of the BatchNorm keys were ignored: running means moved from the local values only
    after = learner.model.state_dict()
    assert all(not torch.allclose(after[k].float(), incoming[k].float()) for k in bn if k.endswith("weight"))
    assert any(not torch.equal(after[k], before[k]) for k in bn)
    assert result.meta[TRAIN_SAMPLES_KEY] == len(learner.datalist["training"])


def test_iopfl_payload_is_the_trained_model_not_the_personalised_one(tiny_prostate, tmp_path):
    learner = IOPFLLearner("BIDMC", _config(tiny_prostate, "iopfl", alpha=0.5), output_dir=tmp_path)
    theta1 = learner.train_round(None, 1)
    global_state = {k: v.clone() for k, v in theta1.params.items()}
    theta2 = learner.train_round(global_state, 2)
    personal = learner.personal_state
    # update rule on the live learner: p2 = alpha * theta1 + (1 - alpha) * theta2
    k = "head.weight"
    assert torch.allclose(personal[k], 0.5 * theta1.params[k] + 0.5 * theta2.params[k], atol=1e-6)
    assert {f"{m}_personal" for m in ("val_dice", "val_hd95", "val_dice2d")} <= set(theta2.metrics)
    for payload in (theta2.params, learner.best_local_state()):
        assert not torch.allclose(payload[k], personal[k])
    assert torch.equal(theta2.params[k], learner.model.state_dict()[k].cpu())


def test_personalised_export_is_opt_in(tiny_prostate, tmp_path):
    learner = IOPFLLearner("BIDMC", _config(tiny_prostate, "iopfl"), output_dir=tmp_path)
    learner.train_round(None, 1)
    with pytest.raises(PermissionError, match="export_personalised=False"):
        learner.export_personalised()
    learner.config.export_personalised = True
    assert set(learner.export_personalised()) == set(learner.model.state_dict())


def test_fedprox_adds_the_proximal_term(tiny_prostate, tmp_path):
    learner = Prostate2DLearner("HK", _config(tiny_prostate, "fedprox", fedprox_mu=1.0), output_dir=tmp_path)
    learner.set_proximal_anchor()
    pred, label = torch.randn(2, 2, 32, 32), torch.ones(2, 1, 32, 32)
    base = learner.loss_function(pred, label)
    assert torch.allclose(learner._local_loss(pred, label), base)  # at the anchor the term is zero
    with torch.no_grad():
        learner.model.head.bias.add_(1.0)  # 2 entries moved by 1: mu/2 * 2 = 1
    assert learner._local_loss(pred, label).item() == pytest.approx(base.item() + 1.0, rel=1e-5)
    # the anchor is the model received at the start of a round
    learner.train_round(learner.shared_state(), 1)
    assert float(learner.penalty().detach()) > 0.0


def test_config_rules():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        IOPFLConfig(algorithm="fedsgd")
    with pytest.raises(ValueError, match="alpha must be in"):
        IOPFLConfig(alpha=1.0)
