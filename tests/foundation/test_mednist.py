"""Synthetic MedNIST in the real folder layout and the site splitter."""

import json

import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from PIL import Image

from data_prep.common import DataValidationError
from data_prep.mednist import CLASSES, split


def test_real_layout_and_image_format(mednist_data):
    root = mednist_data["data_root"] / "MedNIST"
    assert sorted(p.name for p in root.iterdir()) == sorted(CLASSES)
    first = root / "Hand" / "000000.jpeg"
    with Image.open(first) as img:
        assert img.format == "JPEG" and img.mode == "L" and img.size == (64, 64)
    assert len(list((root / "CXR").glob("*.jpeg"))) == 8


def test_classes_are_distinguishable_but_not_identical(mednist_data):
    root = mednist_data["data_root"] / "MedNIST"
    def images(name):
        return [np.asarray(Image.open(p), float) for p in sorted((root / name).glob("*.jpeg"))]

    means = {c: np.mean(images(c), 0) for c in CLASSES}
    within = np.mean([np.abs(img - means["HeadCT"]).mean() for img in images("HeadCT")])
    between = np.abs(means["HeadCT"] - means["Hand"]).mean()
    assert between > 0.5 * within > 0  # class templates differ, and images vary within a class


def test_iid_split_is_disjoint_balanced_and_loads_with_monai(mednist_data):
    root, dl = mednist_data["data_root"], mednist_data["datalist_dir"]
    images = []
    for site in ("site-1", "site-2"):
        items = sum((load_decathlon_datalist(str(dl / f"{site}.json"), False, s, str(root))
                     for s in ("training", "validation", "testing")), [])
        labels = np.bincount([i["label"] for i in items], minlength=6)
        assert labels.tolist() == [4] * 6
        images += [i["image"] for i in items]
    assert len(images) == len(set(images)) == 48


def test_dirichlet_split_is_non_iid_and_seeded(mednist_data, tmp_path):
    root = mednist_data["data_root"]
    split(root, n_sites=2, alpha=0.3, datalist_dir=tmp_path / "a", seed=1)
    split(root, n_sites=2, alpha=0.3, datalist_dir=tmp_path / "b", seed=1)
    a = json.loads((tmp_path / "a" / "site-1.json").read_text())
    assert a == json.loads((tmp_path / "b" / "site-1.json").read_text())
    counts = np.bincount([i["label"] for s in ("training", "validation", "testing") for i in a[s]], minlength=6)
    assert counts.max() - counts.min() >= 3


def test_missing_class_folder_is_named(tmp_path):
    (tmp_path / "MedNIST" / "Hand").mkdir(parents=True)
    with pytest.raises(DataValidationError, match="AbdomenCT"):
        split(tmp_path, n_sites=2, datalist_dir=tmp_path / "dl")
    assert not (tmp_path / "dl").exists()
