"""Adaptive (FedALA-style) decoder mixing: hand-computed W step, persistence, first-call rule, guards."""

import pytest
import torch
import torch.nn as nn

from src.personalisation.adaptive_mixing import AdaptiveDecoderMixing

KEYS = ("decoder.bias", "decoder.weight")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.BatchNorm1d(2)
        self.decoder = nn.Linear(2, 1)
        self.personal = nn.Linear(1, 1)


def _states():
    model = Tiny()
    glob = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("personal")}
    glob["decoder.weight"] = torch.tensor([[0.1, 0.3]])
    glob["decoder.bias"] = torch.tensor([0.0])
    glob["encoder.running_mean"] = torch.tensor([5.0, 6.0])
    local = {k: v.clone() for k, v in model.state_dict().items()}
    local["decoder.weight"] = torch.tensor([[0.5, -1.0]])
    local["decoder.bias"] = torch.tensor([0.2])
    return model, glob, local


def _squared_output(model, batch):
    return (model.decoder(batch) ** 2).sum()


X = torch.tensor([[1.0, 2.0]])


def test_one_step_matches_hand_computation():
    model, glob, local = _states()
    mixer = AdaptiveDecoderMixing(KEYS, eta=0.1)
    mixer.load_state_dict({"weights": None, "first_call_done": True})  # later call: exactly one epoch
    info = mixer.personalise(model, glob, local, [X], _squared_output, local_iteration=100)
    # W = 1 -> theta_hat = theta_l; p = 0.5*1 - 1*2 + 0.2 = -1.3; dL/dw = 2p x = (-2.6, -5.2), dL/db = -2.6
    # W_w = clip(1 - 0.1 * (-2.6 * 0.4)) = 1, clip(1 - 0.1 * (-5.2 * -1.3)) = 0.324; W_b = clip(1 + 0.052) = 1
    assert info == {"mixed": True, "epochs": 1, "losses": [pytest.approx(1.69)], "capped": False}
    torch.testing.assert_close(mixer.weights["decoder.weight"], torch.tensor([[1.0, 0.324]]))
    torch.testing.assert_close(mixer.weights["decoder.bias"], torch.tensor([1.0]))
    torch.testing.assert_close(model.decoder.weight.data, torch.tensor([[0.5, 0.3 - 1.3 * 0.324]]))
    torch.testing.assert_close(model.decoder.bias.data, torch.tensor([0.2]))


def test_shared_keys_come_from_global_and_personal_keys_stay():
    model, glob, local = _states()
    personal_before = model.personal.weight.detach().clone()
    AdaptiveDecoderMixing(KEYS).personalise(model, glob, local, [X], _squared_output, local_iteration=100)
    torch.testing.assert_close(model.encoder.running_mean, torch.tensor([5.0, 6.0]))
    torch.testing.assert_close(model.personal.weight.data, personal_before)
    assert all(p.requires_grad for p in model.parameters()), "requires_grad flags must be restored"


def test_weights_persist_across_calls():
    model, glob, local = _states()
    mixer = AdaptiveDecoderMixing(KEYS, eta=0.1, max_first_call_epochs=1)
    mixer.personalise(model, glob, local, [X], _squared_output, local_iteration=100)
    w_after_first = {k: v.clone() for k, v in mixer.weights.items()}
    assert not torch.equal(w_after_first["decoder.weight"], torch.ones(1, 2))

    def zero_grad_loss(m, batch):
        return (m.decoder(batch) * 0.0).sum()

    model2, glob2, local2 = _states()
    mixer.personalise(model2, glob2, local2, [X], zero_grad_loss, local_iteration=110)
    for k in KEYS:
        torch.testing.assert_close(mixer.weights[k], w_after_first[k])
    expected = glob2["decoder.weight"] + (local2["decoder.weight"] - glob2["decoder.weight"]) * w_after_first[
        "decoder.weight"]
    torch.testing.assert_close(model2.decoder.weight.data, expected)


def test_first_call_runs_until_loss_window_is_flat_then_one_epoch():
    model, glob, local = _states()
    mixer = AdaptiveDecoderMixing(KEYS, loss_window=10, loss_std_threshold=0.1)

    def constant_loss(m, batch):
        return (m.decoder(batch) * 0.0).sum() + 1.0

    info = mixer.personalise(model, glob, local, [X, X], constant_loss, local_iteration=100)
    assert info["epochs"] == 11 and not info["capped"]
    info = mixer.personalise(model, glob, local, [X, X], constant_loss, local_iteration=110)
    assert info["epochs"] == 1


def test_first_call_is_capped_when_loss_never_settles():
    model, glob, local = _states()
    mixer = AdaptiveDecoderMixing(KEYS, max_first_call_epochs=15)
    calls = {"n": 0}

    def noisy_loss(m, batch):
        calls["n"] += 1
        return (m.decoder(batch) * 0.0).sum() + float(calls["n"] % 2) * 10.0

    info = mixer.personalise(model, glob, local, [X], noisy_loss, local_iteration=100)
    assert info["epochs"] == 15 and info["capped"]


def test_warmup_only_loads_global_model():
    model, glob, local = _states()
    mixer = AdaptiveDecoderMixing(KEYS, warmup_iterations=50)
    info = mixer.personalise(model, glob, local, [X], _squared_output, local_iteration=49)
    assert info["mixed"] is False and mixer.weights is None
    torch.testing.assert_close(model.decoder.weight.data, glob["decoder.weight"])


def test_sample_fraction_uses_a_subset_of_batches():
    model, glob, local = _states()
    mixer = AdaptiveDecoderMixing(KEYS, sample_fraction=0.5, max_first_call_epochs=1)
    seen = []

    def counting_loss(m, batch):
        seen.append(batch)
        return (m.decoder(X) * 0.0).sum()

    mixer.personalise(model, glob, local, list(range(10)), counting_loss, local_iteration=100)
    assert len(seen) == 5 and len(set(seen)) == 5


def test_refuses_to_run_during_evaluation_and_bad_inputs():
    model, glob, local = _states()
    mixer = AdaptiveDecoderMixing(KEYS)
    with torch.no_grad(), pytest.raises(RuntimeError, match="must not run during evaluation"):
        mixer.personalise(model, glob, local, [X], _squared_output, local_iteration=100)
    with pytest.raises(KeyError, match="adaptive keys missing"):
        mixer.personalise(model, {"encoder.running_mean": torch.zeros(2)}, local, [X], _squared_output, 100)
    with pytest.raises(KeyError, match="global_state has keys the model lacks: \\['bogus'\\]"):
        mixer.personalise(model, {**glob, "bogus": torch.zeros(1)}, local, [X], _squared_output, 100)
    with pytest.raises(ValueError, match="batches must not be empty"):
        mixer.personalise(model, glob, local, [], _squared_output, 100)
    bad = dict(local, **{"decoder.bias": torch.tensor([float("nan")])})
    with pytest.raises(ValueError, match=r"local_params\['decoder.bias'\] contains NaN"):
        mixer.personalise(model, glob, bad, [X], _squared_output, 100)
    with pytest.raises(ValueError, match="sample_fraction must be in \\(0, 1\\], got 0"):
        AdaptiveDecoderMixing(KEYS, sample_fraction=0)
    with pytest.raises(ValueError, match="adaptive_keys must not be empty"):
        AdaptiveDecoderMixing([])


def test_with_fedicra_model_and_key_groups():
    from src.losses.partial_ce import partial_cross_entropy
    from src.models.unet_multihead import UNetLCMultiHead, fedicra_key_groups

    torch.manual_seed(0)
    model = UNetLCMultiHead(1, 2, num_sites=3, site_index=0)
    groups = fedicra_key_groups(model)
    local = {k: v.clone() for k, v in model.state_dict().items()}
    glob = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items() if k in groups.sent}
    cs_before = {k: v.clone() for k, v in model.channel_selection.state_dict().items()}
    batch = (torch.rand(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32)))
    mixer = AdaptiveDecoderMixing(groups.adaptive, max_first_call_epochs=2)
    info = mixer.personalise(model, glob, local, [batch], lambda m, b: partial_cross_entropy(m(b[0]).logits, b[1]), 100)
    assert info["mixed"]
    state = model.state_dict()
    for k in groups.shared:
        torch.testing.assert_close(state[k], glob[k])
    for k, v in cs_before.items():
        torch.testing.assert_close(state[f"channel_selection.{k}"], v)
    moved = [k for k in groups.adaptive if not torch.equal(mixer.weights[k], torch.ones_like(mixer.weights[k]))]
    assert moved, "W must change for at least one decoder parameter"


def test_live_state_dict_as_local_state_is_not_overwritten_by_the_global_model():
    """The natural call passes model.state_dict() (live views): local must still be the pre-load local model."""
    model, glob, local = _states()
    model.load_state_dict(local)
    mixer = AdaptiveDecoderMixing(KEYS, eta=0.1)
    mixer.load_state_dict({"weights": None, "first_call_done": True})
    info = mixer.personalise(model, glob, model.state_dict(), [X], _squared_output, local_iteration=100)
    assert info["mixed"]
    # the same hand-computed W as with a cloned local state (test_one_step_matches_hand_computation)
    torch.testing.assert_close(mixer.weights["decoder.weight"], torch.tensor([[1.0, 0.324]]))
    torch.testing.assert_close(model.decoder.weight.data, torch.tensor([[0.5, 0.3 - 1.3 * 0.324]]))
    torch.testing.assert_close(model.decoder.bias.data, torch.tensor([0.2]))


def test_skips_mixing_when_local_equals_global():
    model, glob, _ = _states()
    mixer = AdaptiveDecoderMixing(KEYS)
    info = mixer.personalise(model, glob, dict(glob), [X], _squared_output, local_iteration=100)
    assert info["mixed"] is False and mixer.weights is None and not mixer.first_call_done
    torch.testing.assert_close(model.decoder.weight.data, glob["decoder.weight"])
