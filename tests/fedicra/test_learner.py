"""FedICRA learner: what leaves a site, state across rounds and restarts, no mixing on evaluation, FedRep split,
poly lr, fixed site index, bad input named before training. Tiny two-site data, 32x32 images."""

import h5py
import numpy as np
import pytest
import torch

from src.aggregators.fedavg import weighted_average
from src.data.validation import DataValidationError
from src.learners.fedicra import HEAD_PREFIX, FedICRALearner
from tests.fedicra.conftest import tiny_config


def _federate(learners, rounds, global_state=None):
    """In-process rounds: fit_round at every site, then FedAvg by the reported number of batches."""
    for r in range(1, rounds + 1):
        results = [lr.fit_round(global_state, r) for lr in learners]
        shared = weighted_average([res.params for res in results], [res.num_steps for res in results])
        global_state = {k: torch.as_tensor(v) for k, v in shared.items()}
    return global_state, results


@pytest.fixture
def two_sites(tiny_fedicra, tmp_path):
    cfg = tiny_config(tiny_fedicra, "faz")
    return cfg, [FedICRALearner(s, cfg, output_dir=tmp_path / s) for s in cfg.federation_sites]


def test_payload_has_no_channel_selection_and_state_survives_round_and_restart(two_sites, tmp_path):
    cfg, learners = two_sites
    global_state, results = _federate(learners, rounds=3)
    for res in results:
        assert res.params and not [k for k in res.params if k.startswith("channel_selection.")]
        assert any(k.startswith("decoder.") for k in res.params)
        assert res.num_steps == len(learners[0].train_loader)  # weight = number of training batches
    site = learners[0]
    assert site.iteration == 3 * cfg.iterations_per_round
    assert site.mixing_info["mixed"], "mixing must run once the warm-up is over and local != global"
    assert site.mixer.first_call_done and site.mixer.weights is not None
    moved = [k for k, w in site.mixer.weights.items() if not torch.equal(w, torch.ones_like(w))]
    assert moved, "W never moved"
    restarted = FedICRALearner("site-1", type(cfg).from_dict({**cfg.to_dict(), "resume": True}),
                               output_dir=tmp_path / "site-1")
    assert restarted.iteration == site.iteration and restarted.round == site.round
    assert restarted.mixer.first_call_done
    for k, w in site.mixer.weights.items():
        torch.testing.assert_close(restarted.mixer.weights[k], w)
    for k, v in site.previous_local.items():
        torch.testing.assert_close(restarted.previous_local[k], v)
    torch.testing.assert_close(restarted.current_lr(), site.current_lr())
    # the restarted site carries on: W keeps its values as the starting point, the count goes on
    restarted.fit_round(global_state, 4)
    assert restarted.iteration == 4 * cfg.iterations_per_round


def test_mixing_never_runs_on_evaluation(two_sites, monkeypatch):
    _, learners = two_sites
    global_state, _ = _federate(learners, rounds=2)
    site = learners[0]
    calls = []
    original = site.mixer.personalise
    monkeypatch.setattr(site.mixer, "personalise", lambda *a, **k: calls.append(1) or original(*a, **k))
    before = {k: v.clone() for k, v in site.model.state_dict().items()}
    w_before = {k: v.clone() for k, v in site.mixer.weights.items()} if site.mixer.weights else None
    site.evaluate(global_state, "validation")
    site.evaluate(global_state, "testing")
    site.evaluate(split="validation")
    assert calls == []
    for k, v in site.model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    if w_before:
        for k, w in site.mixer.weights.items():
            torch.testing.assert_close(w, w_before[k])
    site.fit_round(global_state, 3)
    assert calls == [1], "fit_round mixes exactly once, in begin_round"


def test_channel_selection_seeded_identically_and_site_index_fixed(tiny_fedicra, tmp_path):
    cfg = tiny_config(tiny_fedicra, "faz")
    a, b = (FedICRALearner(s, cfg, output_dir=tmp_path / s) for s in cfg.federation_sites)
    assert (a.site_index, b.site_index) == (0, 1) and a.model.site_index == 0 and b.model.site_index == 1
    for (k, va), vb in zip(a.model.channel_selection.state_dict().items(),
                           b.model.channel_selection.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)
    with pytest.raises(ValueError, match="not in federation_sites"):
        cfg.site_index("site-9")


def test_fedrep_split_head_then_body(two_sites):
    _, learners = two_sites
    site = learners[0]
    site.begin_round({}, {})
    batch = next(iter(site.train_loader))
    params = lambda: {k: v.detach().clone() for k, v in site.model.named_parameters()}  # noqa: E731
    before = params()
    site.train_step(None, batch)  # iteration 0 of 3, rep_iterations 1: head only
    after = params()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(HEAD_PREFIX) for k in changed)
    site.train_step(None, batch)
    before = params()
    site.train_step(None, batch)  # last iteration: body only
    after = params()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not any(k.startswith(HEAD_PREFIX) for k in changed)


def test_poly_lr_and_personal_keys_per_algorithm(tiny_fedicra, tmp_path):
    from src.learners.fedicra import build_fedicra_model

    cfg = tiny_config(tiny_fedicra, "faz", total_iterations=100)
    site = FedICRALearner("site-1", cfg, output_dir=tmp_path)
    site.iteration = 50
    assert site.current_lr() == pytest.approx(0.01 * 0.5 ** 0.9)
    model = build_fedicra_model(cfg)
    fedrep = FedICRALearner.key_groups_of(model, tiny_config(tiny_fedicra, "faz", algorithm="fedrep"))
    assert fedrep.personal and all(k.startswith(HEAD_PREFIX) for k in fedrep.personal)
    assert not FedICRALearner.key_groups_of(model, tiny_config(tiny_fedicra, "faz", algorithm="fedavg")).personal


def _copy_data(tiny_fedicra, tmp_path):
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_fedicra["faz"]["data"], data)
    lists = tmp_path / "lists"
    shutil.copytree(tiny_fedicra["faz"]["datalists"], lists)
    entry = json.loads((lists / "site-1.json").read_text())["training"][0]
    return data, lists, data / entry["image"]


@pytest.mark.parametrize("damage, message", [
    ("drop_scribble", "scribble: dataset missing in"),
    ("bad_values", r"has values \[7\] outside \[0, 1, 2\]"),
    ("wrong_size", r"has shape \(16, 16\), image"),
])
def test_bad_input_named_before_training(tiny_fedicra, tmp_path, damage, message):
    data, lists, h5 = _copy_data(tiny_fedicra, tmp_path)
    with h5py.File(h5, "r+") as f:
        scribble = f["scribble"][()]
        del f["scribble"]
        if damage == "bad_values":
            scribble[0, 0] = 7
            f["scribble"] = scribble
        elif damage == "wrong_size":
            f["scribble"] = np.full((16, 16), 2, dtype=scribble.dtype)
    cfg = tiny_config(tiny_fedicra, "faz", data_root=str(data), datalist_dir=str(lists))
    with pytest.raises(DataValidationError, match=message) as err:
        FedICRALearner("site-1", cfg, output_dir=tmp_path / "out")
    assert h5.name in str(err.value)
