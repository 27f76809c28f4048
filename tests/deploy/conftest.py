"""Tiny synthetic prostate data shared by the deployment tests (generated once per session)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_prostate(tmp_path_factory):
    """Two sites x 4 cases (2 train, 1 validation, 1 test) of ~38x38x11 voxels: ``(data_root, datalist_dir)``."""
    from data_prep.msd_prostate import convert
    from data_prep.synthetic.msd_prostate import generate

    base = tmp_path_factory.mktemp("prostate")
    task = generate(base / "raw", n_train=8, n_test=0, n_scanners=2, seed=0, scale=0.6)
    convert(task, base / "prostate", n_sites=2, datalist_dir=base / "datalists")
    return base / "prostate", base / "datalists"
