"""Bad input is refused before training, naming the file: missing ED/ES frame, labels outside 0..3, 4-D frames."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from src.data.cardiac import check_cardiac_datalist
from src.data.datalist import load_site_datalist
from src.data.validation import DataValidationError
from tests.helpers import load_job


@pytest.fixture
def broken(coop_data, tmp_path):
    """A writable copy of the datalists whose vendor-A site can be broken per test."""
    lists = tmp_path / "datalists"
    shutil.copytree(coop_data["datalists"], lists)
    path = lists / "vendor-A.json"
    return {"data": coop_data["data"], "lists": lists, "path": path, "payload": json.loads(path.read_text()),
            "tmp": tmp_path}


def _write(broken, payload):
    broken["path"].write_text(json.dumps(payload))
    return load_site_datalist(broken["path"], broken["data"])


def test_the_fixture_data_pass(coop_data):
    for site in ("acdc", "vendor-A", "vendor-B", "vendor-C"):
        check_cardiac_datalist(load_site_datalist(coop_data["datalists"] / f"{site}.json", coop_data["data"]), site)


def test_missing_es_frame_is_named(broken):
    payload = broken["payload"]
    victim = next(it for it in payload["training"] if it["phase"] == "ES")
    payload["training"] = [it for it in payload["training"] if it is not victim]
    with pytest.raises(DataValidationError, match=rf"subject '{victim['subject']}' has no ES frame"):
        check_cardiac_datalist(_write(broken, payload), "vendor-A")


def _replace_file(broken, key, array):
    payload = broken["payload"]
    item = payload["training"][0]
    new = broken["tmp"] / "bad" / Path(item[key]).name
    new.parent.mkdir(exist_ok=True)
    source = nib.load(str(broken["data"] / item[key]))
    nib.save(nib.Nifti1Image(array, source.affine), str(new))
    # a copy of the data root holding the bad file, so the datalist path stays inside the root
    root = broken["tmp"] / "data"
    if not root.exists():
        shutil.copytree(broken["data"], root)
    shutil.copy(new, root / item[key])
    broken["data"] = root
    return _write(broken, payload), str(root / item[key])


def test_label_outside_0_to_3_is_named(broken):
    item = broken["payload"]["training"][0]
    label = np.asarray(nib.load(str(broken["data"] / item["label"])).dataobj).copy()
    label[0, 0, 0] = 7
    datalist, path = _replace_file(broken, "label", label)
    with pytest.raises(DataValidationError, match=rf"{path}.*values \[7\] outside"):
        check_cardiac_datalist(datalist, "vendor-A")


def test_4d_where_3d_expected_is_named(broken):
    item = broken["payload"]["training"][0]
    image = np.asarray(nib.load(str(broken["data"] / item["image"])).dataobj)
    datalist, path = _replace_file(broken, "image", np.stack([image, image], axis=-1))
    with pytest.raises(DataValidationError, match=rf"{path}.* is 4-D .* expected one 3-D"):
        check_cardiac_datalist(datalist, "vendor-A")


def test_the_job_refuses_bad_data_before_training(broken, capsys):
    payload = broken["payload"]
    payload["training"] = [it for it in payload["training"] if it["phase"] == "ED"]
    broken["path"].write_text(json.dumps(payload))
    code = load_job("cooptrain").main(["--data-root", str(broken["data"]), "--datalist-dir", str(broken["lists"]),
                                       "--env", "export", "--export-dir", str(broken["tmp"] / "job"),
                                       "--tracking", "none"])
    assert code == 2
    assert "vendor-A: training: subject" in capsys.readouterr().err
    assert not (broken["tmp"] / "job").exists()  # nothing built
