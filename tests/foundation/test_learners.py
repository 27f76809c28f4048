"""The shared learner base through its two tutorial learners, on tiny data."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from src.config.tutorial import MedNISTConfig, ProstateConfig
from src.data.validation import DataValidationError
from src.learners.classification import ClassificationLearner
from src.learners.segmentation import SegmentationLearner


def _prostate_config(data, **kw):
    return ProstateConfig(data_root=str(data["data_root"]), datalist_dir=str(data["datalist_dir"]),
                          local_epochs=1, num_threads=1, channels=(8, 16, 32), roi_size=(32, 32, 16), **kw)


def test_segmentation_round_trains_validates_and_checkpoints(prostate_data, tmp_path):
    learner = SegmentationLearner("site-1", _prostate_config(prostate_data), output_dir=tmp_path)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    result = learner.train_round()
    assert result.num_steps == len(learner.train_loader) >= 1
    assert np.isfinite(result.metrics["train_loss"]) and 0 < result.metrics["train_loss"] < 1.5
    changed = [k for k, v in result.params.items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    metrics = learner.evaluate()
    assert set(metrics) == {"val_dice"} and 0.0 <= metrics["val_dice"] <= 1.0
    assert learner.update_best(metrics)
    saved = torch.load(learner.checkpoint_path("best"), weights_only=True)  # plain state_dict
    assert saved.keys() == learner.model.state_dict().keys()
    assert set(learner.evaluate(split="testing")) == {"test_dice"}


def test_evaluate_with_params_restores_the_local_model(prostate_data, tmp_path):
    learner = SegmentationLearner("site-2", _prostate_config(prostate_data), output_dir=tmp_path)
    own = {k: v.clone() for k, v in learner.model.state_dict().items()}
    other = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in own.items()}
    learner.evaluate(other)
    assert all(torch.equal(own[k], v) for k, v in learner.model.state_dict().items())
    with pytest.raises(KeyError, match="not in the model"):
        learner.load_params({"no.such.key": torch.zeros(1)})


def test_sites_get_different_but_reproducible_seeds(prostate_data, tmp_path):
    def first_weights(site):
        return SegmentationLearner(site, _prostate_config(prostate_data), output_dir=tmp_path).model.state_dict()

    a, b, a2 = first_weights("site-1"), first_weights("site-2"), first_weights("site-1")
    key = next(k for k in a if k.endswith("weight"))
    assert torch.equal(a[key], a2[key]) and not torch.equal(a[key], b[key])


def _site_copy(prostate_data, tmp_path):
    data_root = tmp_path / "data"
    shutil.copytree(prostate_data["data_root"] / "site-1", data_root / "site-1")
    dl = tmp_path / "dl"
    dl.mkdir()
    shutil.copy(prostate_data["datalist_dir"] / "site-1.json", dl / "site-1.json")
    return {"data_root": data_root, "datalist_dir": dl}


def test_learner_fails_fast_naming_the_file(prostate_data, tmp_path):
    data = _site_copy(prostate_data, tmp_path)
    label = sorted((data["data_root"] / "site-1" / "labels").glob("*.nii.gz"))[0]
    img = nib.load(label)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :-3], img.affine), label)
    with pytest.raises(DataValidationError, match=rf"{label.name}.*shape"):
        SegmentationLearner("site-1", _prostate_config(data), output_dir=tmp_path)
    label.unlink()
    with pytest.raises(DataValidationError, match=rf"{label.name}.*does not exist"):
        SegmentationLearner("site-1", _prostate_config(data), output_dir=tmp_path)


def test_learner_rejects_an_empty_site_and_a_missing_datalist(prostate_data, tmp_path):
    data = _site_copy(prostate_data, tmp_path)
    path = data["datalist_dir"] / "site-1.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "training": []}))
    with pytest.raises(DataValidationError, match="'training' is empty"):
        SegmentationLearner("site-1", _prostate_config(data), output_dir=tmp_path)
    with pytest.raises(DataValidationError, match="site-9.json.*does not exist"):
        SegmentationLearner("site-9", _prostate_config(data), output_dir=tmp_path)


def test_data_root_and_datalist_can_be_set_by_the_site_environment(prostate_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FL_DATA_ROOT", str(prostate_data["data_root"]))
    monkeypatch.setenv("FL_DATALIST", str(prostate_data["datalist_dir"] / "site-3.json"))
    config = ProstateConfig(data_root="/nowhere", datalist_dir="/nowhere", num_threads=1)
    learner = SegmentationLearner("any-hospital", config, output_dir=tmp_path)
    assert all("site-3" in item["image"] for item in learner.datalist["training"])


def test_classification_round_reports_accuracy_and_auc(mednist_data, tmp_path):
    config = MedNISTConfig(data_root=str(mednist_data["data_root"]), datalist_dir=str(mednist_data["datalist_dir"]),
                           batch_size=8, num_threads=1)
    learner = ClassificationLearner("site-1", config, output_dir=tmp_path)
    result = learner.train_round()
    assert result.num_steps == 3 and np.isfinite(result.metrics["train_loss"])
    metrics = learner.evaluate(split="testing")
    assert set(metrics) == {"test_accuracy", "test_auc"}
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_config_round_trip_and_validation(tmp_path):
    config = ProstateConfig(lr=0.01, roi_size=(32, 32, 8))
    loaded = ProstateConfig.load(config.save(tmp_path / "c.json"))
    assert loaded.lr == 0.01 and tuple(loaded.roi_size) == (32, 32, 8)
    with pytest.raises(ValueError, match="local_epochs must be >= 1"):
        ProstateConfig(local_epochs=0)
    with pytest.raises(ValueError, match="unknown config fields"):
        ProstateConfig.from_dict({"learning_rate": 1})
