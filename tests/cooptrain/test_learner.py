"""The cooperative step through the base's train_step under FedAvg, FedBN and share-anatomy; state across restarts."""

import pytest
import torch

from src.learners.cooptrain import CoopTrainLearner
from src.models.key_groups import norm_keys

from .conftest import tiny_config


def _learner(coop_data, tmp_path, site="acdc", **kwargs):
    return CoopTrainLearner(site, tiny_config(coop_data, **kwargs), output_dir=tmp_path)


def test_fedavg_round_runs_the_cooperative_step_and_sends_all_five_parts(coop_data, tmp_path):
    learner = _learner(coop_data, tmp_path)
    assert learner.step_config.hard_example_bn == "reference" and learner.step_config.latent_da
    init = {k: v.clone() for k, v in learner.model.state_dict().items()}
    result = learner.train_round(init, 1)
    output = learner.trainer.state.output
    assert {"hard/seg", "hard/image", "hard/pred_shape", "hard/masked_shape", "standard/gt_shape"} <= output.keys()
    assert set(result.params) == set(init)  # FedAvg: every key of all five parts leaves the site
    for part in ("encoder", "code_filter", "image_decoder", "segmentation_decoder", "stn"):
        assert any(not torch.equal(init[k], result.params[k]) for k in init if k.startswith(part + ".")), part
    assert result.num_steps == len(learner.train_loader) and torch.isfinite(torch.tensor(result.metrics["train_loss"]))


def test_no_latent_da_is_the_standard_step_of_the_same_networks(coop_data, tmp_path):
    learner = _learner(coop_data, tmp_path, latent_da=False)
    learner.train_round({}, 1)
    output = learner.trainer.state.output
    assert "standard/image" in output and "standard/pred_shape" in output
    assert not any(k.startswith("hard/") for k in output)


def test_fedbn_keeps_every_batchnorm_key_on_the_site(coop_data, tmp_path):
    learner = _learner(coop_data, tmp_path, algorithm="fedbn")
    bn = set(norm_keys(learner.model))
    assert bn and learner.key_groups.personal == bn
    result = learner.train_round({}, 1)
    assert not bn & set(result.params) and set(result.params) == set(learner.model.state_dict()) - bn
    local = {k: learner.model.state_dict()[k].clone() for k in bn}
    received = {k: torch.zeros_like(v) if k in bn else v for k, v in learner.model.state_dict().items()}
    learner.load_params(received)
    assert all(torch.equal(learner.model.state_dict()[k], local[k]) for k in bn)


def test_share_anatomy_keeps_the_image_decoder_on_the_site(coop_data, tmp_path):
    learner = _learner(coop_data, tmp_path, algorithm="share-anatomy")
    decoder = {k for k in learner.model.state_dict() if k.startswith("image_decoder.")}
    assert decoder and learner.key_groups.personal == decoder
    result = learner.train_round({}, 1)
    assert not decoder & set(result.params)
    assert {k.split(".")[0] for k in result.params} == {"encoder", "code_filter", "segmentation_decoder", "stn"}


def test_adam_moments_persist_across_rounds_unless_reset(coop_data, tmp_path):
    for reset in (False, True):
        learner = _learner(coop_data, tmp_path / str(reset), reset_optimizer_each_round=reset)
        learner.train_round({}, 1)
        steps = len(learner.train_loader)
        learner.train_round(learner.shared_state(), 2)
        step = int(next(iter(learner.optimizer.state.values()))["step"])
        assert step == (steps if reset else 2 * steps)


def test_state_survives_a_restart(coop_data, tmp_path):
    """Two rounds in one go == one round, a restart (resume), one more round: same weights, same RNG sequence."""
    straight = _learner(coop_data, tmp_path / "a")
    straight.train_round({}, 1)
    straight.train_round(straight.shared_state(), 2)

    first = _learner(coop_data, tmp_path / "b")
    first.train_round({}, 1)
    params = first.shared_state()
    del first
    resumed = _learner(coop_data, tmp_path / "b", resume=True)
    assert resumed.round == 1 and resumed.optimizer.state  # restored, not fresh
    resumed.train_round(params, 2)

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())


def test_score_reports_per_structure_dice_and_hd95_with_the_stn(coop_data, tmp_path):
    learner = _learner(coop_data, tmp_path)
    scores = learner.evaluate(split="validation")
    assert {"val_dice", "val_dice_lv", "val_dice_myo", "val_dice_rv", "val_hd95"} <= scores.keys()
    assert 0.0 <= scores["val_dice"] <= 1.0
    calls = []
    original = learner.model.refine
    learner.model.refine = lambda logits: calls.append(1) or original(logits)
    learner.evaluate(split="validation")
    assert calls, "inference did not use the STN refinement"


def test_config_rules():
    from src.config.cooptrain import CoopTrainConfig

    with pytest.raises(ValueError, match="algorithm must be one of .* got 'fedprox'"):
        CoopTrainConfig(algorithm="fedprox")
    with pytest.raises(ValueError, match="crop_size must be a positive multiple of 16, got 40"):
        CoopTrainConfig(crop_size=40)
    with pytest.raises(ValueError, match="latent_da=True needs cooperative=True"):
        CoopTrainConfig(cooperative=False)
