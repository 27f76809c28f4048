import json

import nibabel as nib
import numpy as np
import pytest

from data_prep.common import DataValidationError
from data_prep.multisite_prostate import (
    REFERENCE_SPLITS,
    SPLITS,
    convert,
    find_cases,
    main,
    site_id,
    slices_2p5d,
    split_cases,
    validate,
    zscore,
)
from data_prep.synthetic.multisite_prostate import PROFILES, generate, raw_file_names


def test_raw_layout_and_name_case_vary_by_site(tiny_prostate):
    raw = tiny_prostate["root"] / "raw"
    assert (raw / "BIDMC" / "Case00_segmentation.nii.gz").is_file()
    assert (raw / "ISBI" / "Case00_segmentation.nii.gz").is_file()
    assert (raw / "HK" / "Case38.nii.gz").is_file()  # each site's real case ids (HK starts at 38)
    assert raw_file_names("ISBI_1.5", "Case07") == ("Case07.nii.gz", "Case07_segmentation.nii.gz")
    assert len({p.spacing_mm for p in PROFILES.values()}) > 1  # resolution differs between sites
    assert len({p.slice_mm for p in PROFILES.values()}) > 1


def test_converted_slices_and_datalists(tiny_prostate):
    lists = tiny_prostate["lists"]
    assert set(lists) == {"BIDMC", "HK", "ISBI"}
    d = json.loads(lists["HK"].read_text())
    item = d["training"][0]
    assert {"image", "label", "case", "slice"} <= set(item)
    x = np.load(tiny_prostate["data"] / item["image"])
    y = np.load(tiny_prostate["data"] / item["label"])
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert y.shape == (1, 32, 32) and y.dtype == np.uint8 and set(np.unique(y)) <= {0, 1} and y.any()
    assert validate(tiny_prostate["data"], tiny_prostate["datalists"]) > 0


def test_splits_disjoint_by_case(tiny_prostate):
    for path in tiny_prostate["lists"].values():
        d = json.loads(path.read_text())
        cases = {s: {it["case"] for it in d[s]} for s in SPLITS}
        assert all(cases[s] for s in SPLITS)
        assert not (cases["training"] & cases["validation"]) and not (cases["training"] & cases["testing"])
        assert not (cases["validation"] & cases["testing"])


def test_split_is_deterministic_and_uses_reference_lists():
    ids = [f"Case{i:02d}" for i in range(7)]
    assert split_cases("HK", ids, seed=3) == split_cases("HK", ids, seed=3)
    full = [f"Case{i:02d}" for i in (0, *range(2, 13))]
    bidmc = split_cases("BIDMC", full)
    assert bidmc["validation"] == ["Case07", "Case09"] and len(bidmc["training"]) == 7
    for site, parts in REFERENCE_SPLITS.items():  # the reference lists are disjoint themselves
        flat = sum(parts, [])
        assert len(flat) == len(set(flat)), site


def test_convert_twice_gives_identical_datalists(tiny_prostate, tmp_path):
    raw = tiny_prostate["root"] / "raw"
    again = convert(raw, tmp_path / "data", tmp_path / "lists", sites=("BIDMC",), size=32)
    assert again["BIDMC"].read_text() == tiny_prostate["lists"]["BIDMC"].read_text()
    a = np.load(tmp_path / "data" / json.loads(again["BIDMC"].read_text())["training"][0]["image"])
    b = np.load(tiny_prostate["data"] / json.loads(again["BIDMC"].read_text())["training"][0]["image"])
    assert np.array_equal(a, b)


def test_2p5d_edges_repeat_the_edge_slice():
    image = np.stack([np.full((2, 2), float(i)) for i in range(4)], -1)
    label = np.ones((2, 2, 4), np.uint8)
    got = {i: x[:, 0, 0].tolist() for i, x, _ in slices_2p5d(image, label)}
    assert got == {0: [0, 0, 1], 1: [0, 1, 2], 2: [1, 2, 3], 3: [2, 3, 3]}
    label[:, :, 1] = 0
    assert [i for i, _, _ in slices_2p5d(image, label)] == [0, 2, 3]
    assert [i for i, _, _ in slices_2p5d(image, label, keep_empty=True)] == [0, 1, 2, 3]


def test_zscore():
    z = zscore(np.arange(10, dtype=np.float32) * 7 + 3)
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5


@pytest.fixture()
def one_site(tmp_path, tiny_matrix):
    generate(tmp_path / "raw", n_cases=3, sites=("BIDMC",), matrix=tiny_matrix)
    return tmp_path / "raw" / "BIDMC"


def test_case_without_segmentation(one_site):
    (one_site / "Case02_segmentation.nii.gz").unlink()
    with pytest.raises(DataValidationError, match="'Case02' has no segmentation"):
        find_cases(one_site.parent, ("BIDMC",))


def test_label_values_outside_binary_after_conversion(one_site, tmp_path):
    img = nib.load(one_site / "Case00_segmentation.nii.gz")
    bad = np.asarray(img.dataobj).astype(np.float32) * 0.5  # interpolated, non-integer label
    nib.save(nib.Nifti1Image(bad, img.affine), one_site / "Case00_segmentation.nii.gz")
    with pytest.raises(DataValidationError, match="non-integer"):
        convert(one_site.parent, tmp_path / "out", tmp_path / "lists", sites=("BIDMC",))
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_image_label_shape_mismatch(one_site, tmp_path):
    img = nib.load(one_site / "Case02_segmentation.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine), one_site / "Case02_segmentation.nii.gz")
    with pytest.raises(DataValidationError, match="does not match image"):
        convert(one_site.parent, tmp_path / "out", tmp_path / "lists", sites=("BIDMC",))


def test_site_with_no_cases(tmp_path):
    (tmp_path / "raw" / "HK").mkdir(parents=True)
    with pytest.raises(DataValidationError, match="site 'HK': no CaseXX"):
        find_cases(tmp_path / "raw", ("HK",))
    assert main(["convert", "--raw", str(tmp_path / "raw"), "--sites", "HK", "--out", str(tmp_path / "o")]) == 2


def test_site_ids_are_valid_nvflare_client_names():
    assert site_id("ISBI_1.5") == "ISBI_1_5"
