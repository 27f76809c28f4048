"""ACDC converter: outputs read back, labels remapped, spacing, splits, and every bad-input case."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from data_prep import acdc
from data_prep.cardiac_common import TARGET_SPACING
from data_prep.common import DataValidationError
from data_prep.synthetic.cardiac import generate_acdc


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return generate_acdc(tmp_path_factory.mktemp("acdc") / "raw", n_subjects=8, n_slices=3, n_frames=5, seed=3)


@pytest.fixture(scope="module")
def converted(raw, tmp_path_factory):
    base = tmp_path_factory.mktemp("acdc_out")
    written = acdc.convert(raw, base / "data", base / "datalists", seed=0, fewshot_subjects=3)
    return base / "data", written


@pytest.fixture
def raw_copy(raw, tmp_path):
    return shutil.copytree(raw, tmp_path / "raw")


def _frame_paths(root, pid, key):
    info = acdc.parse_info_cfg(root / "training" / pid / "Info.cfg")
    stem = root / "training" / pid / f"{pid}_frame{int(info[key]):02d}"
    return stem.with_name(stem.name + ".nii.gz"), stem.with_name(stem.name + "_gt.nii.gz")


def _rewrite(path, fn, zooms=None):
    img = nib.load(path)
    array = fn(np.asarray(img.dataobj))
    out = nib.Nifti1Image(array, img.affine)  # fresh header: the new array's dtype is stored as is
    out.header.set_zooms(zooms or img.header.get_zooms()[: array.ndim])
    nib.save(out, path)


def test_outputs_read_back_with_monai_and_nibabel(converted):
    from monai.transforms import LoadImage

    data, _ = converted
    img = LoadImage(image_only=True)(str(data / "patient001" / "patient001_ED.nii.gz"))
    lab = nib.load(data / "patient001" / "patient001_ED_gt.nii.gz")
    assert tuple(img.shape) == lab.shape
    assert lab.header.get_zooms() == pytest.approx((TARGET_SPACING, TARGET_SPACING, 10.0))
    assert float(img.min()) == 0.0 and float(img.max()) == pytest.approx(1.0)
    assert set(np.unique(np.asarray(lab.dataobj))) == {0, 1, 2, 3}
    # 96 px at 1.5625 mm -> round(96 * 1.5625 / 1.36719) = 110 px
    assert lab.shape == (110, 110, 3)


def test_labels_remapped_to_1lv_2myo_3rv(raw, converted):
    data, _ = converted
    _, raw_gt = _frame_paths(raw, "patient002", "ES")
    raw_lab = np.asarray(nib.load(raw_gt).dataobj)
    new = np.asarray(nib.load(data / "patient002" / "patient002_ES_gt.nii.gz").dataobj)
    area = (1.5625 / TARGET_SPACING) ** 2
    for new_value, raw_value in ((1, 3), (2, 2), (3, 1)):  # LV, MYO, RV
        assert (new == new_value).sum() == pytest.approx((raw_lab == raw_value).sum() * area, rel=0.06)


def test_datalists_load_with_monai_and_are_disjoint(converted):
    from monai.data import load_decathlon_datalist

    data, written = converted
    assert set(written) == {"fewshot", "standard"}
    for setting, path in written.items():
        assert path.parent.name == f"acdc_{setting}" and path.name == "site-1.json"
        subjects = {}
        for split in ("training", "validation", "testing"):
            items = load_decathlon_datalist(str(path), data_list_key=split, base_dir=str(data))
            assert items, (setting, split)
            assert all(str(i["image"]).startswith(str(data)) for i in items)
            by_subject = {}
            for i in items:
                by_subject.setdefault(i["subject"], set()).add(i["phase"])
            assert all(p == {"ED", "ES"} for p in by_subject.values())
            subjects[split] = set(by_subject)
        assert not (subjects["training"] & subjects["validation"])
        assert not (subjects["training"] & subjects["testing"])
        assert not (subjects["validation"] & subjects["testing"])
    few = json.loads(written["fewshot"].read_text())
    std = json.loads(written["standard"].read_text())
    assert len({i["subject"] for i in few["training"]}) == 3
    assert few["testing"] == std["testing"]


def test_validate_cli_passes_on_converted(converted):
    data, written = converted
    dl_dir = written["fewshot"].parent.parent
    assert acdc.main(["validate", "--data-root", str(data), "--datalist-dir", str(dl_dir)]) == 0


def test_fallback_splits_deterministic_by_seed():
    pids = [f"patient{i:03d}" for i in range(1, 21)]
    a = acdc.acdc_splits(pids, "standard", seed=4)
    assert a == acdc.acdc_splits(pids, "standard", seed=4)
    assert a != acdc.acdc_splits(pids, "standard", seed=5)
    assert [len(a[k]) for k in ("training", "validation", "testing")] == [14, 2, 4]
    few = acdc.acdc_splits(pids, "fewshot", seed=4)
    assert len(few["training"]) == 10 and set(few["training"]) <= set(a["training"])
    assert few["testing"] == a["testing"]


def test_paper_splits_used_when_all_100_subjects_present():
    pids = [f"patient{i:03d}" for i in range(1, 151)]
    std = acdc.acdc_splits(pids, "standard", seed=0)
    assert [len(std[k]) for k in ("training", "validation", "testing")] == [70, 10, 20]
    assert "patient007" in std["testing"] and "patient005" in std["validation"] and "patient001" in std["training"]
    assert len(set().union(*std.values())) == 100
    for fold in range(5):
        few = acdc.acdc_splits(pids, "fewshot", seed=1, fold=fold)
        assert len(few["training"]) == 10 and few["testing"] == std["testing"]
        assert set(few["training"]) <= {f"patient{s}" for s in acdc.PAPER_FEWSHOT_POOL}
        assert not set(few["training"]) & set(few["validation"])
        assert few == acdc.acdc_splits(pids, "fewshot", seed=1, fold=fold)
    assert acdc.acdc_splits(pids, "fewshot", seed=1) != acdc.acdc_splits(pids, "fewshot", seed=2)


@pytest.mark.parametrize("kwargs, match", [({"setting": "half"}, "setting must be"), ({"fold": 5}, "fold must be"),
                                           ({"fewshot_subjects": 0}, "fewshot_subjects must be")])
def test_split_arguments_checked(kwargs, match):
    args = {"pids": ["patient001", "patient002", "patient003"], "setting": "fewshot", "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        acdc.acdc_splits(**args)


def _expect_failure(raw_copy, tmp_path, match):
    with pytest.raises(DataValidationError, match=match):
        acdc.convert(raw_copy, tmp_path / "out", tmp_path / "dl", fewshot_subjects=3)
    assert not (tmp_path / "out").exists() and not (tmp_path / "dl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_missing_label_file(raw_copy, tmp_path):
    _, gt = _frame_paths(raw_copy, "patient004", "ES")
    gt.unlink()
    _expect_failure(raw_copy, tmp_path, r"label: file .*patient004_frame\d\d_gt.nii.gz' does not exist")


def test_missing_info_cfg_field(raw_copy, tmp_path):
    cfg = raw_copy / "training" / "patient003" / "Info.cfg"
    cfg.write_text("\n".join(line for line in cfg.read_text().splitlines() if not line.startswith("ES")))
    _expect_failure(raw_copy, tmp_path, "patient003/Info.cfg' has no field 'ES'")


def test_info_cfg_frame_out_of_range(raw_copy, tmp_path):
    cfg = raw_copy / "training" / "patient003" / "Info.cfg"
    cfg.write_text(cfg.read_text().replace("ED: 1", "ED: 9"))
    _expect_failure(raw_copy, tmp_path, r"field 'ED'=9 outside 1..NbFrame=5")


def test_label_value_outside_set(raw_copy, tmp_path):
    _, gt = _frame_paths(raw_copy, "patient005", "ED")
    _rewrite(gt, lambda a: np.where(a == 2, 7, a).astype(np.uint8))
    _expect_failure(raw_copy, tmp_path, r"patient005_frame\d\d_gt.nii.gz' has values \[7\]")


def test_image_label_shape_mismatch(raw_copy, tmp_path):
    _, gt = _frame_paths(raw_copy, "patient002", "ED")
    _rewrite(gt, lambda a: a[:-4])
    _expect_failure(raw_copy, tmp_path, r"shape: image .*patient002_frame\d\d.nii.gz' \(96, 96, 3\) and label")


def test_image_label_spacing_mismatch(raw_copy, tmp_path):
    _, gt = _frame_paths(raw_copy, "patient002", "ES")
    _rewrite(gt, lambda a: a, zooms=(1.0, 1.0, 10.0))
    _expect_failure(raw_copy, tmp_path, r"spacing: image .*\(1.5625, 1.5625, 10.0\) and label")


def test_nan_in_image(raw_copy, tmp_path):
    img, _ = _frame_paths(raw_copy, "patient006", "ED")
    _rewrite(img, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a).astype(np.float32))
    _expect_failure(raw_copy, tmp_path, r"image: NIfTI .*patient006_frame\d\d.nii.gz' contains NaN")


def test_cine_inconsistent_with_info_cfg(raw_copy, tmp_path):
    cfg = raw_copy / "training" / "patient001" / "Info.cfg"
    cfg.write_text(cfg.read_text().replace("NbFrame: 5", "NbFrame: 6"))
    _expect_failure(raw_copy, tmp_path, r"patient001_4d.nii.gz' has shape \(96, 96, 3, 5\)")


def test_no_subjects(tmp_path):
    (tmp_path / "empty" / "training").mkdir(parents=True)
    with pytest.raises(DataValidationError, match="no patientXXX folders"):
        acdc.convert(tmp_path / "empty", tmp_path / "out", tmp_path / "dl")


def test_validate_rejects_path_escaping_root(converted, tmp_path):
    data, written = converted
    payload = json.loads(written["standard"].read_text())
    payload["testing"][0]["image"] = "../../etc/passwd"
    bad = tmp_path / "datalists" / "acdc_standard" / "site-1.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps(payload))
    with pytest.raises(DataValidationError, match=r"testing\[0\].image: path '../../etc/passwd' escapes"):
        acdc.validate_datalists([bad], data)
    assert acdc.main(["validate", "--data-root", str(data), "--datalist-dir", str(tmp_path / "datalists")]) == 2


def test_validate_rejects_empty_site_and_leakage(converted, tmp_path):
    data, written = converted
    payload = json.loads(written["standard"].read_text())
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**payload, "training": []}))
    with pytest.raises(DataValidationError, match="'training' is missing or empty"):
        acdc.validate_datalists([empty], data)
    leak = tmp_path / "leak.json"
    leak.write_text(json.dumps({**payload, "testing": payload["testing"] + payload["training"][:1]}))
    with pytest.raises(DataValidationError, match="also appears in leak.json:training"):
        acdc.validate_datalists([leak], data)


def test_generate_cli(tmp_path):
    assert acdc.main(["generate", "--out", str(tmp_path / "g"), "--subjects", "1", "--slices", "2",
                      "--frames", "3"]) == 0
    assert (tmp_path / "g" / "training" / "patient001" / "Info.cfg").is_file()
