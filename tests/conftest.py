"""Shared fixtures: tiny synthetic data sets written in their real layouts and converted by the real converters."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prostate_data(tmp_path_factory) -> dict[str, Path]:
    """Tiny MSD Task05 (9 cases, 3 scanners, half field of view) converted into 3 sites."""
    from data_prep.msd_prostate import convert
    from data_prep.synthetic.msd_prostate import generate

    root = tmp_path_factory.mktemp("prostate")
    task = generate(root / "raw", n_train=9, n_test=1, n_scanners=3, seed=0, scale=0.75)
    convert(task, root / "data", n_sites=3, datalist_dir=root / "datalists", fractions=(0.34, 0.33, 0.33))
    return {"task": task, "data_root": root / "data", "datalist_dir": root / "datalists"}


@pytest.fixture(scope="session")
def mednist_data(tmp_path_factory) -> dict[str, Path]:
    """Tiny synthetic MedNIST (8 images per class) split IID into 2 sites."""
    from data_prep.mednist import split
    from data_prep.synthetic.mednist import generate

    root = tmp_path_factory.mktemp("mednist")
    generate(root, per_class=8, seed=0)
    split(root, n_sites=2, datalist_dir=root / "datalists", seed=0)
    return {"data_root": root, "datalist_dir": root / "datalists"}
