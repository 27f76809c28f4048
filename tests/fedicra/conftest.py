"""Tiny synthetic FedICRA data (FAZ and ODOC, two sites, 32x32 h5), generated once per test session."""

import pytest

from data_prep.fedicra import convert
from data_prep.synthetic.fedicra import generate

N_SITES = 2


@pytest.fixture(scope="session")
def tiny_fedicra(tmp_path_factory):
    root = tmp_path_factory.mktemp("fedicra")
    generate(root / "raw", "both", n_sites=N_SITES, n_train=5, n_test=2, size=32, layout="h5", seed=0)
    out = {}
    for task, folder in (("faz", "FAZ_h5"), ("odoc", "ODOC_h5")):
        lists = root / "datalists" / task
        convert(root / "raw" / folder, task, val_fraction=0.2, seed=0, datalist_dir=lists)
        out[task] = {"data": root / "raw" / folder, "datalists": lists}
    return out


def tiny_config(data: dict, task: str, algorithm: str = "fedicra", **overrides):
    from src.config.fedicra import FedICRAConfig

    values = dict(task=task, data_root=str(data[task]["data"]), datalist_dir=str(data[task]["datalists"]),
                  algorithm=algorithm, federation_sites=("site-1", "site-2"), batch_size=2,
                  iterations_per_round=3, rep_iterations=1, mixing_warmup=3, mixing_max_first_epochs=2,
                  mixing_batches=1, num_threads=1, tracking=(), crf_radius=2)
    values.update(overrides)
    return FedICRAConfig(**values)
