"""Tiny synthetic ACDC + M&Ms (vendors A-C) sites for the cooperative-training tests, made once per session."""

import pytest
import torch


@pytest.fixture(scope="session")
def coop_data(tmp_path_factory):
    from data_prep import acdc, cooptrain, mnms
    from data_prep.synthetic.cardiac import generate_acdc, generate_mnms

    base = tmp_path_factory.mktemp("coop")
    generate_acdc(base / "raw_acdc", n_subjects=8, n_slices=2, n_frames=4, seed=0)
    generate_mnms(base / "raw_mnms", subjects_per_vendor=4, vendors="ABC", unlabeled=0, n_slices=2, n_frames=4, seed=0)
    acdc.convert(base / "raw_acdc", base / "data" / "acdc", base / "dl", seed=0, fewshot_subjects=2)
    mnms.convert(base / "raw_mnms", base / "data" / "mnms", base / "dl", seed=0)
    cooptrain.combine(base / "data", base / "data" / "acdc", base / "dl" / "acdc_fewshot" / "site-1.json",
                      base / "data" / "mnms", base / "dl" / "mnms", base / "dl" / "cooptrain", train_subjects=2)
    return {"data": base / "data", "datalists": base / "dl" / "cooptrain", "base": base}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(data, **kwargs):
    from src.config.cooptrain import CoopTrainConfig

    values = dict(data_root=str(data["data"]), datalist_dir=str(data["datalists"]), crop_size=32, pad_size=48,
                  base_channels=4, code_channels=8, batch_size=2, slices_per_volume=1, num_threads=1, tracking=())
    return CoopTrainConfig(**{**values, **kwargs})
