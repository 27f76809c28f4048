"""Issue 15, "data checks everywhere": every hole reported there, one test each (converters and datalists)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from data_prep import acdc, mnms, msd_prostate, multisite_prostate
from data_prep.common import DataValidationError, write_datalists, write_site_datalist
from data_prep.fedmri import inspect_brats_case
from data_prep.synthetic import fedmri as syn_fedmri
from data_prep.synthetic.cardiac import generate_acdc, generate_mnms
from data_prep.synthetic.multisite_prostate import generate as generate_multisite
from src.data.datalist import load_site_datalist


def _move(path, how: str) -> None:
    """Rewrite a NIfTI with a shifted (5 mm) or flipped (first axis reversed) affine, same voxels and spacing."""
    img = nib.load(str(path))
    affine = img.affine.copy()
    if how == "shifted":
        affine[:3, 3] += [5.0, 0.0, 0.0]
    else:
        affine[:3, 0] *= -1
    new = nib.Nifti1Image(np.asarray(img.dataobj), affine, img.header)
    new.set_sform(affine)
    new.set_qform(affine)
    nib.save(new, str(path))


def _set_label_value(path, value: int) -> None:
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    data[np.nonzero(data)[0][0], np.nonzero(data)[1][0], np.nonzero(data)[2][0]] = value
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(path))


# ---------------------------------------------------------------------------------------------------------------
# image/label affine agreement in every converter with labels
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def _bidmc_template(tmp_path_factory):
    """Generated once per module (about 4 s each on a loaded machine); 96 x 96 in plane instead of the real 384 x 384:
    the checks below (affine, label values) do not depend on the matrix."""
    raw = tmp_path_factory.mktemp("bidmc") / "raw"
    generate_multisite(raw, n_cases=3, sites=("BIDMC",), matrix=96)
    return raw / "BIDMC"


@pytest.fixture()
def bidmc(_bidmc_template, tmp_path):
    """A fresh copy per test (the tests break its files)."""
    import shutil

    shutil.copytree(_bidmc_template, tmp_path / "raw" / "BIDMC")
    return tmp_path / "raw" / "BIDMC"


@pytest.mark.parametrize("how", ["shifted", "flipped"])
def test_multisite_prostate_rejects_a_moved_label(bidmc, tmp_path, how):
    _move(bidmc / "Case02_segmentation.nii.gz", how)
    with pytest.raises(DataValidationError, match=r"Case02_segmentation.nii.gz.*affine differs"):
        multisite_prostate.convert(bidmc.parent, tmp_path / "out", tmp_path / "lists", sites=("BIDMC",))
    assert not (tmp_path / "out").exists() and not (tmp_path / "lists").exists()


@pytest.mark.parametrize("how", ["shifted", "flipped"])
def test_fedmri_brats_rejects_a_moved_segmentation(tmp_path, how):
    # BraTS-layout files are 240 x 240 x 155 whatever the site's crop; the head fills the default 240 matrix
    spec = next(s for s in syn_fedmri.DEFAULT_SITES if s.layout == "brats")
    case = syn_fedmri.generate(tmp_path, (spec,), volumes_per_site=1)[spec.name][0]
    assert inspect_brats_case(case)["slices"]
    _move(case / f"{case.name}_seg.nii.gz", how)
    with pytest.raises(DataValidationError, match=r"seg: .*_seg.nii.gz.*affine differs from t1"):
        inspect_brats_case(case)


@pytest.mark.parametrize("how", ["shifted", "flipped"])
def test_acdc_rejects_a_moved_ground_truth(tmp_path, how):
    generate_acdc(tmp_path / "raw", n_subjects=1, n_slices=3, n_frames=5)
    subject = acdc.find_subjects(tmp_path / "raw")[0]
    acdc.validate_subject(subject)
    _move(subject.frame_paths(subject.es)[1], how)
    with pytest.raises(DataValidationError, match=r"_gt.nii.gz.*affine differs"):
        acdc.validate_subject(subject)


@pytest.mark.parametrize("how", ["shifted", "flipped"])
def test_mnms_rejects_a_moved_ground_truth(tmp_path, how):
    raw = tmp_path / "raw"
    generate_mnms(raw, subjects_per_vendor=1, vendors="A", unlabeled=0, n_slices=3, n_frames=5)
    case = mnms.find_cases(raw)[0][0]
    mnms.validate_case(case)
    _move(case.label_path, how)
    with pytest.raises(DataValidationError, match=r"_sa_gt.nii.gz.*affine differs"):
        mnms.validate_case(case)


# ---------------------------------------------------------------------------------------------------------------
# label values outside the declared set: rejected, never remapped
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [7, 255])
def test_multisite_prostate_rejects_undeclared_label_values(bidmc, tmp_path, value):
    _set_label_value(bidmc / "Case00_segmentation.nii.gz", value)
    with pytest.raises(DataValidationError, match=rf"Case00_segmentation.nii.gz.*values \[{value}\] outside"):
        multisite_prostate.convert(bidmc.parent, tmp_path / "out", tmp_path / "lists", sites=("BIDMC",))


def test_multisite_prostate_merges_the_declared_zone_label(bidmc, tmp_path):
    _set_label_value(bidmc / "Case00_segmentation.nii.gz", 2)  # a second zone, as the reference merges it
    case = multisite_prostate.find_cases(bidmc.parent, ("BIDMC",))["BIDMC"][0]
    assert set(np.unique(multisite_prostate.load_case(case)[1]).tolist()) == {0, 1}


# ---------------------------------------------------------------------------------------------------------------
# datalist entries: strings inside the data root (symlinks resolved), no case twice, used splits non-empty
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def root(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b", "c"):
        (data / f"{name}.nii.gz").write_bytes(b"")
    return data


def _datalist(tmp_path, **splits) -> str:
    payload = {"training": [{"image": "a.nii.gz", "label": "a.nii.gz"}],
               "validation": [{"image": "b.nii.gz", "label": "b.nii.gz"}], **splits}
    path = tmp_path / "site-1.json"
    path.write_text(json.dumps(payload))
    return path


def test_list_valued_path_is_rejected(root, tmp_path):
    secret = tmp_path / "secret.nii.gz"
    secret.write_bytes(b"")
    bad = {"image": [str(secret)], "label": "c.nii.gz"}
    with pytest.raises(DataValidationError, match=r"site-1.json: testing\[0\].image: path must be a string.*list"):
        load_site_datalist(_datalist(tmp_path, testing=[bad]), root)
    with pytest.raises(DataValidationError, match=r"training\[0\].label: path must be a string"):
        write_site_datalist(tmp_path / "dl" / "site-1.json", root, {"training": [{"image": "a.nii.gz",
                                                                               "label": ["../secret.nii.gz"]}]})


def test_symlink_out_of_the_data_root_is_rejected(root, tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.nii.gz").write_bytes(b"")
    (root / "link").symlink_to(tmp_path / "outside")
    entry = {"image": "link/x.nii.gz", "label": "c.nii.gz"}
    with pytest.raises(DataValidationError, match=r"testing\[0\].image: path 'link/x.nii.gz' escapes the data root"):
        load_site_datalist(_datalist(tmp_path, testing=[entry]), root)


def test_class_index_labels_are_still_accepted(root, tmp_path):
    path = tmp_path / "cls.json"
    path.write_text(json.dumps({"training": [{"image": "a.nii.gz", "label": 3}],
                                "validation": [{"image": "b.nii.gz", "label": 0}]}))
    assert load_site_datalist(path, root)["training"][0]["label"] == 3


def test_case_in_two_splits_is_rejected(root, tmp_path):
    leak = {"image": "a.nii.gz", "label": "a.nii.gz"}  # the training case, again as a test case
    with pytest.raises(DataValidationError, match=r"testing\[0\].image: 'a.nii.gz' is also in split 'training'"):
        load_site_datalist(_datalist(tmp_path, testing=[leak]), root)


def test_case_in_two_sites_or_splits_is_never_written(root, tmp_path):
    one = {"image": "a.nii.gz", "label": "a.nii.gz"}
    two = {"image": "b.nii.gz", "label": "b.nii.gz"}
    lists = {"site-1": {"training": [one], "validation": [two]}, "site-2": {"training": [one], "validation": [two]}}
    with pytest.raises(DataValidationError, match=r"site-2.json training\[0\]: case 'a.nii.gz' is also in "
                                                  r"site-1.json:training"):
        write_datalists(tmp_path / "dl", root, lists, "t", {})
    lists = {"site-1": {"training": [one, two], "validation": [two]}}
    with pytest.raises(DataValidationError, match="is also in site-1.json:training"):
        write_datalists(tmp_path / "dl", root, lists, "t", {})
    assert not (tmp_path / "dl").exists()


def test_empty_validation_split_is_rejected_naming_file_and_split(root, tmp_path):
    path = _datalist(tmp_path, validation=[])
    with pytest.raises(DataValidationError, match=r"site-1.json'?: split 'validation' is empty"):
        load_site_datalist(path, root)
    assert load_site_datalist(path, root, require=("training",))["validation"] == []


def test_converter_refuses_an_empty_validation_split(prostate_data, tmp_path):
    with pytest.raises(DataValidationError, match=r"site-1.json'?: split 'validation' is empty"):
        msd_prostate.convert(prostate_data["task"], tmp_path / "out", n_sites=1, datalist_dir=tmp_path / "dl",
                             fractions=(0.8, 0.0, 0.2))
    assert not (tmp_path / "out").exists() and not (tmp_path / "dl").exists()


def test_validate_finds_a_case_listed_by_two_sites(prostate_data, tmp_path):
    dl = tmp_path / "dl"
    msd_prostate.convert(prostate_data["task"], tmp_path / "data", n_sites=3, datalist_dir=dl)
    one, two = (json.loads((dl / f"site-{k}.json").read_text()) for k in (1, 2))
    two["testing"].append(one["training"][0])  # site-1's training case, also tested at site-2
    (dl / "site-2.json").write_text(json.dumps(two))
    leak = r"site-2.json testing\[\d\]: case .* is also in site-1.json:training"
    with pytest.raises(DataValidationError, match=leak):
        msd_prostate.validate(tmp_path / "data", dl)
