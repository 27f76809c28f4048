"""FedMRI site learner: what leaves the site, L_con schedule, optimiser/scheduler state, masks, bad input."""

import h5py
import numpy as np
import pytest
import torch

from src.config.fedmri import FedMRIConfig
from src.data.validation import DataValidationError
from src.learners.fedmri import FedMRILearner, build_fedmri_model
from src.models.fastmri_unet import encoder_decoder_keys
from src.protocol import FEDMRI_RELAY_META, pack_negatives


def _config(data, **kw):
    values = dict(data_root=str(data["data"]), datalist_dir=str(data["datalists"]), channels=4, num_pools=2,
                  batch_size=2, local_epochs=1, lr=1e-3, num_threads=1, tracking=(), n_clients=2)
    values.update(kw)
    return FedMRIConfig(**values)


def _learner(data, tmp_path, site="site-1", **kw):
    return FedMRILearner(site, _config(data, **kw), output_dir=tmp_path / site)


def test_decoder_never_in_the_payload_and_encoder_is_all_that_is_sent(tiny_mri, tmp_path):
    learner = _learner(tiny_mri, tmp_path)
    encoder, decoder = encoder_decoder_keys(learner.model)
    result = learner.fit_round(None, 1)
    assert set(result.params) == set(encoder) and not set(result.params) & set(decoder)
    assert result.meta[FEDMRI_RELAY_META] is False
    # the decoder is never overwritten by what the server sends
    before = {k: v.clone() for k, v in learner.model.state_dict().items() if k in decoder}
    foreign = {k: torch.zeros_like(v) for k, v in learner.model.state_dict().items()}
    learner.load_params(foreign)
    after = learner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in decoder)
    assert all(float(after[k].abs().sum()) == 0 for k in encoder)


@pytest.mark.parametrize("algorithm,personal", [("fedmri", "decoder"), ("lg-fedavg", "encoder"), ("fedavg", None),
                                                ("fedprox", None), ("local", None), ("fedbn", "norm")])
def test_key_groups_per_algorithm(tiny_mri, algorithm, personal):
    config = _config(tiny_mri, algorithm=algorithm)
    model = build_fedmri_model(config)
    encoder, decoder = encoder_decoder_keys(model)
    keys = set(FedMRILearner.personal_keys_of(model, config))
    expected = {"decoder": set(decoder), "encoder": set(encoder), None: set()}.get(personal)
    if personal == "norm":
        assert keys and all(".running_" in k or "num_batches" in k or k.endswith((".weight", ".bias")) for k in keys)
    else:
        assert keys == expected


def test_lcon_skips_first_batch_of_each_epoch_and_is_off_without_negatives(tiny_mri, tmp_path):
    learner = _learner(tiny_mri, tmp_path, local_epochs=2)
    calls = []
    original = learner.contrastive_loss
    learner.contrastive_loss = lambda: calls.append(learner.trainer.state.iteration) or original()
    learner.train_round(None, 1)
    assert calls == []  # round 1: no negatives from the server
    enc = {k: v.clone() for k, v in learner.model.state_dict().items() if k in learner.encoder_keys}
    negatives = [{k: v + 0.01 for k, v in enc.items()}, {k: v - 0.02 for k, v in enc.items()}]
    learner.train_round(enc, 2, pack_negatives("exact", snapshots=negatives))
    per_epoch = len(learner.train_loader)
    assert per_epoch >= 2
    first = learner.trainer.state.iteration - 2 * per_epoch  # iterations before this round
    expected = [first + e * per_epoch + b for e in range(2) for b in range(2, per_epoch + 1)]
    assert calls == expected
    assert learner.negative_mode == "all" and learner._lcon_count == len(expected)


def test_positive_is_a_clone_and_linear_summary_is_used(tiny_mri, tmp_path):
    from src.losses.weighted_contrastive import summarize_negatives

    learner = _learner(tiny_mri, tmp_path)
    learner.train_round(None, 1)
    enc = {k: v.clone() for k, v in learner.model.state_dict().items() if k in learner.encoder_keys}
    negatives = [{k: v + 0.01 for k, v in enc.items()}, {k: v - 0.02 for k, v in enc.items()}]
    s = summarize_negatives({k: v.double() for k, v in enc.items()}, [{k: v.double() for k, v in n.items()}
                                                                    for n in negatives])
    extras = pack_negatives("linear", distance=s.distance.reshape(1).numpy(),
                            sign_sum={k: v.numpy() for k, v in s.sign_sum.items()}, num_negatives=2)
    learner.train_round(enc, 2, extras)
    assert learner.negative_mode == "linear" and learner._lcon_count > 0
    # the positive is the received encoder, unchanged by local training
    assert all(torch.equal(learner.positive[k], enc[k]) for k in enc)
    assert not all(torch.equal(learner.model.state_dict()[k], enc[k]) for k in enc)


def test_optimizer_and_scheduler_state_survive_a_round_and_a_restart(tiny_mri, tmp_path):
    learner = _learner(tiny_mri, tmp_path, lr_step_rounds=1, lr_gamma=0.5)
    learner.fit_round(None, 1)
    state = learner.optimizer.state_dict()["state"]
    assert state and all("square_avg" in s for s in state.values())
    square = {i: s["square_avg"].clone() for i, s in state.items()}
    steps = {i: int(s["step"]) for i, s in state.items()}
    assert learner.scheduler.last_epoch == 1 and learner.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    params = learner.shared_state()
    learner.fit_round(params, 2)  # the state is not reset by a new round
    assert learner.scheduler.last_epoch == 2 and learner.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    state2 = learner.optimizer.state_dict()["state"]
    assert any(not torch.equal(square[i], state2[i]["square_avg"]) for i in square)
    assert all(int(state2[i]["step"]) == 2 * steps[i] for i in steps)  # RMSprop kept counting across rounds
    saved = {i: s["square_avg"].clone() for i, s in state2.items()}
    restarted = FedMRILearner("site-1", _config(tiny_mri, lr_step_rounds=1, lr_gamma=0.5, resume=True),
                              output_dir=tmp_path / "site-1")
    assert restarted.round == 2 and restarted.scheduler.last_epoch == 2
    assert restarted.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    got = restarted.optimizer.state_dict()["state"]
    assert all(torch.equal(saved[i], got[i]["square_avg"]) for i in saved)


def test_masks_are_fixed_per_site_and_differ_between_sites(tiny_mri, tmp_path):
    a = _learner(tiny_mri, tmp_path, "site-1")
    b = _learner(tiny_mri, tmp_path, "site-2")
    m1 = a.mask_for((32, 32))
    assert m1 is a.mask_for((32, 32))  # one mask for the whole run
    assert torch.equal(m1, _learner(tiny_mri, tmp_path / "again", "site-1").mask_for((32, 32)))
    assert not torch.equal(m1, b.mask_for((32, 32)))
    first = a.train_loader.dataset[0]["image"]
    a.train_round(None, 1)
    assert torch.equal(a.train_loader.dataset[0]["image"], first)


def test_scores_are_per_volume_and_say_the_kspace_source(tiny_mri, tmp_path):
    learner = _learner(tiny_mri, tmp_path)
    scores = learner.evaluate(split="validation")
    assert set(scores) == {"val_nmse", "val_psnr", "val_ssim", "val_measured_kspace"}
    assert scores["val_measured_kspace"] == 0.0 and np.isfinite(scores["val_psnr"])
    result = learner.fit_round(learner.shared_state(), 1)
    assert "val_psnr" in result.received_metrics
    assert (tmp_path / "site-1" / "site-1_personalised_best_model.pt").exists()


def _break(tiny_mri, how):
    path = tiny_mri["data"] / "site-1" / "site-1_vol0.h5"
    with h5py.File(path, "r+") as f:
        k = f["kspace"][()]
        del f["kspace"]
        if how == "missing":
            pass
        elif how == "dtype":
            f.create_dataset("kspace", data=np.abs(k).astype(np.float32))
        elif how == "rank":
            f.create_dataset("kspace", data=k[0])
        elif how == "nan":
            k[0, 0, 0] = np.nan
            f.create_dataset("kspace", data=k)
    return path


@pytest.mark.parametrize("how,match", [("missing", "no 'kspace'"), ("dtype", "must be complex"),
                                       ("rank", "must be 3-D"), ("nan", "NaN")])
def test_bad_kspace_is_rejected_naming_the_file(tiny_mri, tmp_path, how, match):
    path = _break(tiny_mri, how)
    with pytest.raises(DataValidationError, match=match) as err:
        _learner(tiny_mri, tmp_path)
    assert path.name in str(err.value)


def test_unknown_mask_type_and_missing_site_mask_are_rejected(tiny_mri):
    with pytest.raises(ValueError, match=r"masks\['site-1'\].mask_type must be one of"):
        _config(tiny_mri, masks={"site-1": {"mask_type": "spiral", "acceleration": 4.0, "center_fraction": 0.08,
                                            "seed": 1}})
    with pytest.raises(ValueError, match="no sampling mask configured for site 'site-9'"):
        _config(tiny_mri).mask_spec("site-9")
    with pytest.raises(ValueError, match="negatives must be one of"):
        _config(tiny_mri, negatives="mean")
