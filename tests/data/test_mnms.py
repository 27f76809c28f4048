"""M&Ms converter: vendors become sites, ED/ES from the CSV, outputs read back, splits, bad inputs."""

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from data_prep import mnms
from data_prep.cardiac_common import TARGET_SPACING
from data_prep.common import DataValidationError
from data_prep.synthetic.cardiac import MNMS_CSV_NAME, generate_mnms


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return generate_mnms(tmp_path_factory.mktemp("mnms") / "raw", subjects_per_vendor=3, n_slices=3, n_frames=5,
                         seed=2)


@pytest.fixture(scope="module")
def converted(raw, tmp_path_factory):
    base = tmp_path_factory.mktemp("mnms_out")
    return base / "data", mnms.convert(raw, base / "data", base / "datalists", seed=0)


@pytest.fixture
def raw_copy(raw, tmp_path):
    return shutil.copytree(raw, tmp_path / "raw")


def _rows(root):
    with open(root / MNMS_CSV_NAME, newline="") as f:
        return list(csv.DictReader(f))


def _case(root, vendor):
    row = next(r for r in _rows(root) if r["Vendor"] == vendor)
    folder = next(p for p in root.rglob(row["External code"]) if p.is_dir())
    return row, folder


def _rewrite(path, fn, zooms=None):
    img = nib.load(path)
    array = fn(np.asarray(img.dataobj))
    out = nib.Nifti1Image(array, img.affine)
    out.header.set_zooms(zooms or img.header.get_zooms()[: array.ndim])
    nib.save(out, path)


def test_vendors_become_sites(converted):
    from monai.data import load_decathlon_datalist

    data, written = converted
    assert sorted(written) == ["site-1", "site-2", "site-3", "site-4"]
    all_subjects = []
    for site, vendor in zip(sorted(written), "ABCD"):
        assert written[site].parent.name == "mnms"
        assert f"vendor {vendor}" in json.loads(written[site].read_text())["description"]
        per_split = {}
        for split in ("training", "validation", "testing"):
            items = load_decathlon_datalist(str(written[site]), data_list_key=split, base_dir=str(data))
            assert items and all(i["vendor"] == vendor for i in items)
            per_split[split] = {i["subject"] for i in items}
        assert sum(len(s) for s in per_split.values()) == len(set().union(*per_split.values())) == 3
        all_subjects += list(set().union(*per_split.values()))
    assert len(all_subjects) == len(set(all_subjects)) == 12


def test_unlabeled_cases_are_skipped(raw, converted):
    data, written = converted
    unlabeled = {p.name for p in (raw / "Training" / "Unlabeled").iterdir()}
    listed = {i["subject"] for p in written.values() for s in json.loads(p.read_text()).values()
              if isinstance(s, list) for i in s}
    assert unlabeled and not unlabeled & listed


def test_ed_es_frames_taken_from_csv_and_labels_kept(raw, converted):
    data, _ = converted
    row, folder = _case(raw, "B")
    code = row["External code"]
    gt4 = np.asarray(nib.load(folder / f"{code}_sa_gt.nii.gz").dataobj)
    spacing = nib.load(folder / f"{code}_sa.nii.gz").header.get_zooms()[0]
    for phase in ("ED", "ES"):
        raw_lab = gt4[..., int(row[phase])]
        new = nib.load(data / code / f"{code}_{phase}_gt.nii.gz")
        assert new.header.get_zooms() == pytest.approx((TARGET_SPACING, TARGET_SPACING, 9.0))
        new_lab = np.asarray(new.dataobj)
        for value in (1, 2, 3):  # M&Ms labels are already 1 LV, 2 MYO, 3 RV
            expected = (raw_lab == value).sum() * (spacing / TARGET_SPACING) ** 2
            assert (new_lab == value).sum() == pytest.approx(expected, rel=0.06)
    ed = np.asarray(nib.load(data / code / f"{code}_ED_gt.nii.gz").dataobj)
    es = np.asarray(nib.load(data / code / f"{code}_ES_gt.nii.gz").dataobj)
    assert (es == 1).sum() < (ed == 1).sum()


def test_outputs_read_back_with_monai(converted):
    from monai.transforms import LoadImage

    data, written = converted
    entry = json.loads(written["site-3"].read_text())["training"][0]
    img = LoadImage(image_only=True)(str(data / entry["image"]))
    assert img.ndim == 3 and float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert entry["partition"] in ("Validation", "Testing") and entry["vendor_name"] == "GE"


def test_splits_deterministic_by_seed(raw, tmp_path):
    def train_of(seed, name):
        w = mnms.convert(raw, tmp_path / name, tmp_path / f"dl_{name}", seed=seed, vendors="A")
        return [i["subject"] for i in json.loads(w["site-1"].read_text())["training"]]

    assert train_of(7, "a") == train_of(7, "b")
    assert {tuple(train_of(s, f"s{s}")) for s in range(4)} != {tuple(train_of(7, "a"))}


def test_validate_cli(converted):
    data, written = converted
    dl_dir = written["site-1"].parent.parent
    assert mnms.main(["validate", "--data-root", str(data), "--datalist-dir", str(dl_dir)]) == 0


def _expect_failure(raw_copy, tmp_path, match, **kwargs):
    with pytest.raises(DataValidationError, match=match):
        mnms.convert(raw_copy, tmp_path / "out", tmp_path / "dl", **kwargs)
    assert not (tmp_path / "out").exists() and not (tmp_path / "dl").exists()


def test_missing_csv(raw_copy, tmp_path):
    (raw_copy / MNMS_CSV_NAME).unlink()
    _expect_failure(raw_copy, tmp_path, "no '\\*M&Ms\\*information\\*.csv'")


def test_csv_missing_column(raw_copy, tmp_path):
    path = raw_copy / MNMS_CSV_NAME
    rows = _rows(raw_copy)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "ES"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    _expect_failure(raw_copy, tmp_path, r"lacks column\(s\) \['ES'\]")


def test_case_folder_not_in_csv(raw_copy, tmp_path):
    (raw_copy / "Testing" / "ZZZZZZ").mkdir()
    _expect_failure(raw_copy, tmp_path, "ZZZZZZ' has no row in")


def test_missing_ground_truth(raw_copy, tmp_path):
    row, folder = _case(raw_copy, "D")
    (folder / f"{row['External code']}_sa_gt.nii.gz").unlink()
    _expect_failure(raw_copy, tmp_path, r"label: file .*_sa_gt.nii.gz' does not exist")


def test_es_outside_time_points(raw_copy, tmp_path):
    path = raw_copy / MNMS_CSV_NAME
    text = path.read_text().splitlines()
    fields = text[1].split(",")
    fields[5] = "40"  # ES column
    path.write_text("\n".join([text[0], ",".join(fields), *text[2:]]) + "\n")
    _expect_failure(raw_copy, tmp_path, r"column 'ES'=40 outside 0..4")


def test_wrong_ed_gives_empty_label(raw_copy, tmp_path):
    path = raw_copy / MNMS_CSV_NAME
    text = path.read_text().splitlines()
    fields = text[1].split(",")
    ed, es = int(fields[4]), int(fields[5])
    fields[4] = str(next(t for t in range(5) if t not in (ed, es)))
    path.write_text("\n".join([text[0], ",".join(fields), *text[2:]]) + "\n")
    _expect_failure(raw_copy, tmp_path, r"_sa_gt.nii.gz' is empty at ED time point")


def test_label_value_outside_set(raw_copy, tmp_path):
    row, folder = _case(raw_copy, "A")
    _rewrite(folder / f"{row['External code']}_sa_gt.nii.gz", lambda a: np.where(a == 3, 9, a).astype(np.uint8))
    _expect_failure(raw_copy, tmp_path, r"has values \[9\] outside")


def test_shape_mismatch(raw_copy, tmp_path):
    row, folder = _case(raw_copy, "C")
    _rewrite(folder / f"{row['External code']}_sa_gt.nii.gz", lambda a: a[..., :-1])
    _expect_failure(raw_copy, tmp_path, r"shape: image .*_sa.nii.gz' \(96, 96, 3, 5\) and label")


def test_nan_in_image(raw_copy, tmp_path):
    row, folder = _case(raw_copy, "B")
    _rewrite(folder / f"{row['External code']}_sa.nii.gz", lambda a: np.full(a.shape, np.nan, np.float32))
    _expect_failure(raw_copy, tmp_path, "contains NaN or Inf")


def test_requested_vendor_without_cases_is_an_empty_site(tmp_path):
    raw = generate_mnms(tmp_path / "ab", subjects_per_vendor=3, vendors="AB", unlabeled=0, n_slices=2, n_frames=3)
    _expect_failure(raw, tmp_path, r"site 'site-3' \(vendor 'C'\) has no labelled cases", vendors="ABC")


def test_validate_rejects_path_escaping_root(converted, tmp_path):
    data, written = converted
    payload = json.loads(written["site-2"].read_text())
    payload["validation"][0]["label"] = "/etc/passwd"
    bad = tmp_path / "site-2.json"
    bad.write_text(json.dumps(payload))
    with pytest.raises(DataValidationError, match=r"validation\[0\].label: path '/etc/passwd' must be relative"):
        mnms.validate_datalists([bad], data)
