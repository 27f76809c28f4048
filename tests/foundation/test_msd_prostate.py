"""Synthetic MSD Task05 generator and the prostate converter, read back as a real user would."""

import gzip
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from data_prep.msd_prostate import convert, main, validate
from data_prep.synthetic.msd_prostate import generate


def test_generator_writes_the_real_task05_layout(prostate_data):
    task = prostate_data["task"]
    meta = json.loads((task / "dataset.json").read_text())
    assert meta["modality"] == {"0": "T2", "1": "ADC"}
    assert meta["labels"] == {"0": "background", "1": "PZ", "2": "TZ"}
    assert meta["numTraining"] == len(meta["training"]) == 9
    entry = meta["training"][0]
    image, label = nib.load(task / entry["image"]), nib.load(task / entry["label"])
    assert image.ndim == 4 and image.shape[-1] == 2 and image.shape[:3] == label.shape
    assert set(np.unique(np.asarray(label.dataobj))) == {0, 1, 2}
    assert np.allclose(image.header.get_zooms()[:3], np.diag(image.affine)[:3])
    assert len(list((task / "imagesTs").glob("*.nii.gz"))) == 1


def test_scanners_differ_in_intensity_and_resolution(tmp_path):
    task = generate(tmp_path, n_train=3, n_test=0, n_scanners=3, seed=1, scale=0.5)
    stats = []
    for i in range(3):
        img = nib.load(task / "imagesTr" / f"prostate_{i:02d}.nii.gz")
        t2 = np.asarray(img.dataobj)[..., 0]
        stats.append((float(np.median(t2[t2 > 50])), img.header.get_zooms()[:3]))
    assert len({round(m, -1) for m, _ in stats}) == 3
    assert len({z for _, z in stats}) == 3


def test_converter_outputs_load_with_monai_and_are_binary(prostate_data):
    root, dl_dir = prostate_data["data_root"], prostate_data["datalist_dir"]
    seen = []
    for site in ("site-1", "site-2", "site-3"):
        path = dl_dir / f"{site}.json"
        per_split = {s: load_decathlon_datalist(str(path), True, s, str(root)) for s in ("training", "validation")}
        assert all(per_split.values())
        for items in per_split.values():
            for item in items:
                assert site in item["image"]
                label = np.asarray(nib.load(item["label"]).dataobj)
                assert set(np.unique(label)) <= {0, 1}
                assert nib.load(item["image"]).ndim == 3  # T2 only
                seen.append(item["image"])
    assert len(seen) == len(set(seen))  # no case in two splits or two sites
    assert validate(root, dl_dir) == 9


def _task_copy(prostate_data, tmp_path):
    task = tmp_path / "Task05_Prostate"
    shutil.copytree(prostate_data["task"], task)
    return task


def _corrupt_truncate(task):
    path = task / "imagesTr" / "prostate_01.nii.gz"
    path.write_bytes(path.read_bytes()[:300])


def _corrupt_labels(task):
    path = task / "labelsTr" / "prostate_02.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, img.affine), path)


def _corrupt_shape(task):
    path = task / "labelsTr" / "prostate_03.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine), path)


def _corrupt_affine(task):
    path = task / "labelsTr" / "prostate_04.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine * np.diag([2, 1, 1, 1])), path)


def _corrupt_missing(task):
    (task / "labelsTr" / "prostate_05.nii.gz").unlink()


def _corrupt_not_gzip(task):
    (task / "imagesTr" / "prostate_06.nii.gz").write_bytes(gzip.compress(b"not a nifti at all"))


def _corrupt_empty(task):
    meta = json.loads((task / "dataset.json").read_text())
    meta["training"] = []
    (task / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (_corrupt_truncate, "prostate_01.nii.gz"),
        (_corrupt_labels, r"prostate_02.nii.gz.*values \[7\]"),
        (_corrupt_shape, r"prostate_03.nii.gz.*shape"),
        (_corrupt_affine, r"prostate_04.nii.gz.*affine"),
        (_corrupt_missing, r"prostate_05.nii.gz.*does not exist"),
        (_corrupt_not_gzip, "prostate_06.nii.gz"),
        (_corrupt_empty, "no 'training' entries"),
    ],
)
def test_bad_input_is_named_and_nothing_is_written(prostate_data, tmp_path, corrupt, message):
    task = _task_copy(prostate_data, tmp_path)
    corrupt(task)
    out, dl = tmp_path / "out", tmp_path / "dl"
    with pytest.raises(ValueError, match=message):
        convert(task, out, n_sites=3, datalist_dir=dl)
    assert not out.exists() and not dl.exists()


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    assert main(["convert", "--task-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "dataset.json" in capsys.readouterr().err
