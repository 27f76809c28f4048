"""benchmarks/fedmri_compare --quick on tiny converted data: every method, the output shape, the bytes."""

import json

import pytest

from benchmarks import fedmri_compare
from benchmarks.report import build_report
from benchmarks.stats import SCORE_COLUMNS, VOLUME_COLUMNS, read_rows


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
        assert f.readline().strip().split(",") == list(SCORE_COLUMNS)
    rows = read_rows(out / "fedmri_compare.csv")
    methods = {r["method"] for r in rows}
    assert methods == set(fedmri_compare.METHODS)
    assert {r["site"] for r in rows} == {"site-1", "site-2"} and {r["setting"] for r in rows} == {"federation"}
    assert {r["metric"] for r in rows} == {"psnr", "ssim", "nmse"}
    psnr = [r["value"] for r in rows if r["metric"] == "psnr"]
    assert all(5 < v < 80 for v in psnr)
    summary = json.loads((out / "fedmri_compare.json").read_text())["summary"]
    assert summary["site-1"]["fedavg"]["test_psnr"]["n"] == 1
    # the CSV's cell is the mean over the site's test volumes of the per-volume scores beside it
    volumes = read_rows(out / "fedmri_compare_volumes.csv")
    assert list(volumes[0]) == list(VOLUME_COLUMNS)
    site1 = [v["value"] for v in volumes if v["site"] == "site-1" and v["method"] == "fedavg" and v["metric"] == "psnr"]
    cell = next(r for r in rows if r["site"] == "site-1" and r["method"] == "fedavg" and r["metric"] == "psnr")
    assert cell["n"] == len(site1) >= 1 and abs(cell["value"] - sum(site1) / len(site1)) < 1e-9
    assert abs(summary["site-1"]["fedavg"]["test_psnr"]["mean"] - cell["value"]) < 1e-9
    bytes_ = {m: summary["site-1"][m]["download_bytes_per_round"]["mean"] for m in fedmri_compare.METHODS}
    # exact negatives download the N snapshots, linear only int8 signs: exact > linear > 0; local nothing
    assert bytes_["fedmri-exact"] > bytes_["fedmri-linear"] > 0 and bytes_["local"] == 0
    upload = {m: summary["site-1"][m]["upload_bytes_per_round"]["mean"] for m in fedmri_compare.METHODS}
    assert upload["fedmri-linear"] < upload["fedavg"]  # the decoder stays on the site
    assert (out / "fedmri_compare_examples.png").stat().st_size > 0 and (out / "fedmri_compare.png").is_file()
    meta = json.loads((out / "fedmri_compare_meta.json").read_text())
    assert meta["run_label"] and meta["settings"]["wall_seconds"] > 0
    claimed = {(c["better"], c["worse"]) for c in meta["claims"]}
    assert claimed >= {("fedmri-exact", "fedavg"), ("fedmri-exact", "local")}
    md = (out / "fedmri_compare.md").read_text()
    assert "federation: fedmri-exact > fedavg" in md and "federation: fedmri-exact < local" in md  # NMSE: lower
    assert "Communication per site and round" in md and "not measured" not in md
    report, _ = build_report(out)
    assert "## fedmri: FedMRI" in report.read_text() and "| lg-fedavg |" in report.read_text()
