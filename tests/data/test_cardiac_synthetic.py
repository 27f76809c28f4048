"""The synthetic cardiac generator writes the real ACDC / M&Ms-1 raw layouts with plausible anatomy."""

import csv

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from data_prep.synthetic.cardiac import (
    MNMS_CSV_COLUMNS,
    MNMS_CSV_NAME,
    VENDORS,
    _contraction,
    generate_acdc,
    generate_mnms,
)


@pytest.fixture(scope="module")
def acdc_raw(tmp_path_factory):
    return generate_acdc(tmp_path_factory.mktemp("acdc") / "raw", n_subjects=3, n_slices=4, n_frames=6, seed=1)


@pytest.fixture(scope="module")
def mnms_raw(tmp_path_factory):
    return generate_mnms(tmp_path_factory.mktemp("mnms") / "raw", subjects_per_vendor=2, n_slices=4, n_frames=6,
                         seed=1)


def _info(path):
    return dict(line.split(": ", 1) for line in path.read_text().splitlines())


def test_acdc_layout_and_info_cfg(acdc_raw):
    folders = sorted(p.name for p in (acdc_raw / "training").iterdir())
    assert folders == ["patient001", "patient002", "patient003"]
    case = acdc_raw / "training" / "patient002"
    info = _info(case / "Info.cfg")
    assert set(info) == {"ED", "ES", "Group", "Height", "NbFrame", "Weight"}
    ed, es, n = int(info["ED"]), int(info["ES"]), int(info["NbFrame"])
    assert info["Group"] in {"DCM", "HCM", "MINF", "NOR", "RV"} and 1 <= ed < es <= n == 6
    expected = {"Info.cfg", "patient002_4d.nii.gz"} | {
        f"patient002_frame{f:02d}{s}.nii.gz" for f in (ed, es) for s in ("", "_gt")
    }
    assert {p.name for p in case.iterdir()} == expected
    cine = nib.load(case / "patient002_4d.nii.gz")
    assert cine.shape[2:] == (4, n) and cine.header.get_zooms()[:3] == pytest.approx((1.5625, 1.5625, 10.0))
    frame = nib.load(case / f"patient002_frame{es:02d}.nii.gz")
    np.testing.assert_array_equal(np.asarray(frame.dataobj), np.asarray(cine.dataobj)[..., es - 1])


def test_acdc_raw_labels_are_1rv_2myo_3lv(acdc_raw):
    case = acdc_raw / "training" / "patient001"
    ed = int(_info(case / "Info.cfg")["ED"])
    gt = np.asarray(nib.load(case / f"patient001_frame{ed:02d}_gt.nii.gz").dataobj)[..., 0]
    assert set(np.unique(gt)) == {0, 1, 2, 3}
    lv, myo, rv = gt == 3, gt == 2, gt == 1
    ring = ndimage.binary_dilation(lv, iterations=2) & ~lv
    assert np.all(myo[ring]), "the LV blood pool (3) must be enclosed by myocardium (2)"
    assert not np.any(ndimage.binary_dilation(rv) & lv), "the RV (1) must not touch the LV blood pool"
    assert np.any(ndimage.binary_dilation(rv) & myo), "the RV crescent hugs the septum"


def test_acdc_readable_with_monai(acdc_raw):
    from monai.transforms import LoadImage

    case = acdc_raw / "training" / "patient003"
    img = LoadImage(image_only=True)(str(case / "patient003_4d.nii.gz"))
    assert tuple(img.shape[2:]) == (4, 6)


def test_systole_shrinks_cavities_and_conserves_myocardium(acdc_raw):
    case = acdc_raw / "training" / "patient001"
    info = _info(case / "Info.cfg")
    ed, es = (np.asarray(nib.load(case / f"patient001_frame{int(info[k]):02d}_gt.nii.gz").dataobj)
              for k in ("ED", "ES"))
    lv_ratio = (es == 3).sum() / (ed == 3).sum()
    assert 0.3 < lv_ratio < 0.75  # ejection fraction 25-70 %
    assert (es == 1).sum() < (ed == 1).sum()
    assert (es == 2).sum() / (ed == 2).sum() == pytest.approx(1.0, abs=0.15)


def test_contraction_is_zero_at_ed_one_at_es_and_periodic():
    c = _contraction(10, ed=9, es=3)
    assert c[9] == pytest.approx(0.0) and c[3] == pytest.approx(1.0)
    assert np.all((c >= 0) & (c <= 1))
    assert c[0] < c[1] < c[2] < c[3] > c[4]


def test_mnms_layout_csv_and_partitions(mnms_raw):
    with open(mnms_raw / MNMS_CSV_NAME, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == MNMS_CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == 4 * 2 + 1
    for row in rows:
        code = row["External code"]
        assert len(code) == 6 and code.isalnum() and code.isupper()
        hits = list(mnms_raw.glob(f"*/{code}")) + list(mnms_raw.glob(f"Training/*/{code}"))
        assert len(hits) == 1, code
        partition = str(hits[0].parent.relative_to(mnms_raw))
        files = {p.name for p in hits[0].iterdir()}
        if partition == "Training/Unlabeled":
            assert files == {f"{code}_sa.nii.gz"} and row["Vendor"] == "C"
            continue
        assert files == {f"{code}_sa.nii.gz", f"{code}_sa_gt.nii.gz"}
        if partition == "Training/Labeled":
            assert row["Vendor"] in "AB"
        assert row["VendorName"] == VENDORS[row["Vendor"]][0]
        gt = np.asarray(nib.load(hits[0] / f"{code}_sa_gt.nii.gz").dataobj)
        assert gt.ndim == 4
        annotated = [t for t in range(gt.shape[3]) if gt[..., t].any()]
        assert annotated == sorted({int(row["ED"]), int(row["ES"])})
        ed = gt[..., int(row["ED"])]
        lv = ed == 1  # M&Ms raw labels: 1 LV, 2 MYO, 3 RV
        in_plane = np.zeros((3, 3, 3), bool)
        in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
        ring = ndimage.binary_dilation(lv, in_plane, iterations=2) & ~lv
        assert np.all(ed[ring] == 2)


def test_vendors_differ_in_appearance(mnms_raw):
    with open(mnms_raw / MNMS_CSV_NAME, newline="") as f:
        rows = [r for r in csv.DictReader(f)]
    blood, spacing = {}, {}
    for row in rows:
        code = row["External code"]
        path = next(mnms_raw.rglob(f"{code}_sa_gt.nii.gz"), None)
        if path is None:
            continue
        gt = np.asarray(nib.load(path).dataobj)[..., int(row["ED"])]
        img = nib.load(path.with_name(f"{code}_sa.nii.gz"))
        blood.setdefault(row["Vendor"], []).append(np.median(np.asarray(img.dataobj)[..., int(row["ED"])][gt == 1]))
        spacing[row["Vendor"]] = img.header.get_zooms()[0]
    med = {v: np.mean(b) for v, b in blood.items()}
    assert med["B"] > 2 * med["A"] > 2 * med["C"]  # gains 2500 / 900 / 400
    assert len(set(np.round(list(spacing.values()), 3))) == 4


def test_generation_is_deterministic_by_seed(tmp_path):
    a = generate_acdc(tmp_path / "a", n_subjects=1, n_slices=2, n_frames=3, seed=5)
    b = generate_acdc(tmp_path / "b", n_subjects=1, n_slices=2, n_frames=3, seed=5)
    c = generate_acdc(tmp_path / "c", n_subjects=1, n_slices=2, n_frames=3, seed=6)
    load = lambda root: np.asarray(nib.load(root / "training/patient001/patient001_4d.nii.gz").dataobj)  # noqa: E731
    np.testing.assert_array_equal(load(a), load(b))
    assert not np.array_equal(load(a), load(c))


@pytest.mark.parametrize("kwargs", [{"n_subjects": 0}, {"n_slices": 1}, {"n_frames": 2}])
def test_acdc_generator_rejects_bad_sizes(tmp_path, kwargs):
    with pytest.raises(ValueError, match="need n_subjects"):
        generate_acdc(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_mnms_generator_rejects_unknown_vendor(tmp_path):
    with pytest.raises(ValueError, match="vendors must be letters"):
        generate_mnms(tmp_path / "x", vendors="AE")
