"""benchmarks/fedmri_compare --quick on tiny converted data: every method, the output shape, the bytes."""

import csv
import json

import pytest

from benchmarks import fedmri_compare


@pytest.fixture()
def quick(tiny_mri, tmp_path):
    data = tiny_mri
    out = tmp_path / "out"
    payload = fedmri_compare.main(["--quick", "--out", str(out), "--data-root", str(data["data"]),
                                   "--datalist-dir", str(data["datalists"]), "--threads", "1"])
    return out, payload


def test_quick_comparison_writes_every_method_and_the_communication(quick):
    out, payload = quick
    with open(out / "fedmri_compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["algorithm", "site", "method", "seed", "metric", "value"]
    methods = {r["method"] for r in rows}
    assert methods == set(fedmri_compare.METHODS)
    assert {r["site"] for r in rows} == {"site-1", "site-2"}
    psnr = [float(r["value"]) for r in rows if r["metric"] == "test_psnr"]
    assert all(5 < v < 80 for v in psnr)
    summary = json.loads((out / "fedmri_compare.json").read_text())["summary"]
    assert summary["site-1"]["fedavg"]["test_psnr"]["n"] == 1
    bytes_ = {r["method"]: float(r["value"]) for r in rows if r["metric"] == "download_bytes_per_round"}
    # exact negatives download the N snapshots, linear only int8 signs: exact > linear > 0; local nothing
    assert bytes_["fedmri-exact"] > bytes_["fedmri-linear"] > 0 and bytes_["local"] == 0
    upload = {r["method"]: float(r["value"]) for r in rows if r["metric"] == "upload_bytes_per_round"}
    assert upload["fedmri-linear"] < upload["fedavg"]  # the decoder stays on the site
    assert (out / "fedmri_compare_examples.png").stat().st_size > 0
    md = (out / "fedmri_compare.md").read_text()
    assert "Paper's claim" in md and "vs fedavg" in md
