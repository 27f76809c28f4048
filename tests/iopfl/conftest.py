"""Tiny synthetic six-site prostate data shared by the IOP-FL tests (generated once per session)."""

import pytest

from data_prep.multisite_prostate import convert
from data_prep.synthetic.multisite_prostate import generate

TEST_SITES = ("BIDMC", "HK", "ISBI")
#: in-plane matrix of the tiny raw twin (the real 384 takes ~3 s a case; the geometry test checks 384 itself)
TEST_MATRIX = 96


@pytest.fixture(scope="session")
def tiny_prostate(tmp_path_factory):
    root = tmp_path_factory.mktemp("multisite_prostate")
    generate(root / "raw", n_cases=3, seed=0, sites=TEST_SITES, matrix=TEST_MATRIX)
    lists = convert(root / "raw", root / "data", root / "datalists", sites=TEST_SITES, size=32)
    return {"root": root, "data": root / "data", "datalists": root / "datalists", "lists": lists}


@pytest.fixture(scope="session")
def tiny_matrix():
    return TEST_MATRIX
