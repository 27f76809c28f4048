"""The learner base's round protocol on a tiny classifier: personal keys, extras, persistent state, scoring."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from ignite.metrics import Accuracy
from monai.transforms import Compose, EnsureTyped, LoadImaged, RandFlipd
from torch import nn

from src.config.base import LearnerConfig
from src.learners.base import FederatedLearner
from src.models.key_groups import KeyGroups, norm_keys
from src.protocol import pack_payload, unpack_payload


class TinyLearner(FederatedLearner):
    """Conv -> BatchNorm -> linear on 8x8 images of two classes (bright vs dark), with a random flip."""

    key_metric = "val_accuracy"

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 2))

    def transforms(self, stage: str) -> Compose:
        steps = [LoadImaged(keys="image", reader="NumpyReader", image_only=True)]
        if stage == "training":
            steps.append(RandFlipd(keys="image", prob=0.5, spatial_axis=0))
        return Compose(steps + [EnsureTyped(keys=("image", "label"), dtype=torch.float32, track_meta=False)])

    def build_loss(self) -> nn.Module:
        ce = nn.CrossEntropyLoss()
        return lambda pred, label: ce(pred, label.long().view(-1))

    def build_metrics(self, prefix: str) -> dict:
        return {f"{prefix}_accuracy": Accuracy(output_transform=_pred_index)}


def _pred_index(output):
    pred = torch.stack([o["pred"] for o in output]) if isinstance(output, list) else output["pred"]
    label = torch.stack([torch.as_tensor(o["label"]) for o in output]) if isinstance(output, list) else output["label"]
    return pred, label.long().view(-1)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    lists = {}
    for site in ("site-1", "site-2"):
        items = {}
        for split, n in (("training", 8), ("validation", 4), ("testing", 2)):
            items[split] = []
            for i in range(n):
                label = i % 2
                image = (rng.normal(0.0, 0.3, (1, 8, 8)) + (1.0 if label else -1.0)).astype(np.float32)
                name = f"{site}/{split}_{i}.npy"
                (root / site).mkdir(exist_ok=True)
                np.save(root / name, image)
                items[split].append({"image": name, "label": label})
        lists[site] = items
    (root / "datalists").mkdir()
    for site, items in lists.items():
        (root / "datalists" / f"{site}.json").write_text(json.dumps(items))
    return root


def _learner(data, tmp_path, site="site-1", **kw) -> TinyLearner:
    config = LearnerConfig(data_root=str(data), datalist_dir=str(data / "datalists"), batch_size=4, num_threads=1,
                           tracking=(), lr=0.05, **kw)
    return TinyLearner(site, config, output_dir=tmp_path)


def _clone(state):
    return {k: v.detach().clone() for k, v in state.items()}


def test_personal_keys_never_leave_and_are_never_overwritten(tiny_data, tmp_path):
    learner = _learner(tiny_data, tmp_path, algorithm="fedbn")
    personal = set(norm_keys(learner.model))
    assert personal and set(learner.personal_keys()) == personal
    own = _clone(learner.model.state_dict())
    incoming = {k: v + 100.0 if v.is_floating_point() else v + 7 for k, v in own.items()}
    learner.begin_round(incoming, {})  # what a round starts with
    loaded = learner.model.state_dict()
    assert all(torch.equal(loaded[k], own[k]) for k in personal)  # the server's copies are ignored
    assert all(torch.equal(loaded[k], incoming[k]) for k in loaded if k not in personal)
    learner.evaluate(incoming)  # scoring loads params too: still no personal key taken
    assert all(torch.equal(learner.model.state_dict()[k], own[k]) for k in personal)
    result = learner.fit_round(incoming, 1)
    for payload in (result.params, learner.best_local_state(), learner.shared_state()):
        assert payload and not set(payload) & personal
        assert set(payload) == set(own) - personal


def test_fedbn_on_a_model_without_batchnorm_is_refused():
    class NoNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

    with pytest.raises(ValueError, match="no BatchNorm"):
        TinyLearner.key_groups_of(NoNorm(), LearnerConfig(algorithm="fedbn"))
    with pytest.raises(KeyError, match="no state_dict keys"):
        KeyGroups.split(NoNorm(), personal=["fc.nope"])
    with pytest.raises(ValueError, match="overlap"):
        KeyGroups(frozenset({"a"}), personal=frozenset({"a"}))


def test_extras_arrive_in_begin_round_and_only_the_own_sites(tiny_data, tmp_path):
    learner = _learner(tiny_data, tmp_path)
    payload = pack_payload(learner.shared_state(), extras={"round_scale": torch.tensor(2.0)},
                           site_extras={"site-1": {"anchor": torch.ones(3)}, "site-2": {"anchor": torch.zeros(3)}})
    params, extras = unpack_payload(payload, "site-1")
    assert set(params) == set(learner.model.state_dict())  # no extra key reaches load_params
    seen = {}
    original = learner.begin_round

    def spy(p, e):
        original(p, e)
        seen.update(learner.extras)

    learner.begin_round = spy
    learner.fit_round(params, 1, extras)
    assert set(seen) == {"round_scale", "anchor"} and torch.equal(seen["anchor"], torch.ones(3))
    with pytest.raises(KeyError, match="not in the model"):
        learner.load_params(payload)  # extras left packed would be refused, not silently loaded
    with pytest.raises(ValueError, match="reserved|must not start"):
        pack_payload({"__extra__/x": 1})


def test_extra_state_round_trips_and_a_restarted_site_continues_identically(tiny_data, tmp_path):
    a = _learner(tiny_data, tmp_path / "a")
    global_state = _clone(a.model.state_dict())
    a.fit_round(global_state, 1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the site's folder as it was after round 1
    second = a.fit_round(global_state, 2)

    b = _learner(tiny_data, tmp_path / "b", resume=True)  # a restarted site process
    assert b.round == 1 and b.best_metric == pytest.approx(a.best_metric, abs=1.0)
    assert b.optimizer.state_dict()["state"], "optimiser moments were not restored"
    resumed = b.fit_round(global_state, 2)
    for key, value in second.params.items():
        assert torch.allclose(value, resumed.params[key], atol=1e-6), key
    assert resumed.metrics["train_loss"] == pytest.approx(second.metrics["train_loss"], rel=1e-6)


def test_resume_without_saved_state_starts_fresh(tiny_data, tmp_path):
    learner = _learner(tiny_data, tmp_path, resume=True)
    assert learner.round == 0 and not learner.optimizer.state_dict()["state"]


def test_scoring_a_received_model_changes_no_state(tiny_data, tmp_path):
    learner = _learner(tiny_data, tmp_path)
    learner.fit_round(_clone(learner.model.state_dict()), 1)
    model = _clone(learner.model.state_dict())
    optimizer = json.dumps(str(learner.optimizer.state_dict()))
    rng, np_rng = torch.get_rng_state(), np.random.get_state()[1].copy()
    counters = (learner.round, learner.best_metric, learner.trainer.state.epoch, dict(learner.extras))
    other = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in model.items()}
    for split in ("validation", "testing"):
        learner.evaluate(other, split)
    assert all(torch.equal(model[k], v) for k, v in learner.model.state_dict().items())
    assert json.dumps(str(learner.optimizer.state_dict())) == optimizer
    assert torch.equal(torch.get_rng_state(), rng) and np.array_equal(np.random.get_state()[1], np_rng)
    assert (learner.round, learner.best_metric, learner.trainer.state.epoch, dict(learner.extras)) == counters
    assert not learner.checkpoint_path("personal_best").exists()


def test_fit_round_order_reports_received_local_and_training_metrics(tiny_data, tmp_path):
    learner = _learner(tiny_data, tmp_path)
    received = _clone(learner.model.state_dict())
    expected = learner.evaluate(received)
    result = learner.fit_round(received, 3)
    assert result.received_metrics == expected  # the model as received, before any training
    assert {"val_accuracy", "val_accuracy_local", "train_loss", "train_seconds"} <= set(result.metrics)
    assert learner.round == 3 and result.num_steps == 2 and result.meta["NUM_TRAIN_SAMPLES"] == 8
    assert learner.checkpoint_path("best").is_file() and learner.state_path().is_file()
    saved = torch.load(learner.checkpoint_path("last"), weights_only=True)
    assert saved.keys() == learner.model.state_dict().keys()  # plain state_dict


def test_fedprox_penalty_enters_the_default_step(tiny_data, tmp_path):
    plain = _learner(tiny_data, tmp_path / "plain")
    prox = _learner(tiny_data, tmp_path / "prox", algorithm="fedprox", fedprox_mu=10.0)
    start = _clone(plain.model.state_dict())
    a, b = plain.fit_round(start, 1), prox.fit_round(start, 1)
    drift = {name: sum(float((r.params[k] - start[k]).pow(2).sum()) for k in start if k.endswith("weight"))
             for name, r in (("plain", a), ("prox", b))}
    assert drift["prox"] < drift["plain"]  # the proximal term pulls the local model towards the received one
