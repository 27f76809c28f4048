"""FedMRI converter: outputs, splits, datalists, and every bad-input case of issue 8."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from data_prep import fedmri
from data_prep._mri_fft import center_crop, ifft2c
from data_prep.common import DataValidationError
from data_prep.synthetic import fedmri as syn

# BraTS-layout files are always 240 x 240 x 155; the sites keep their default head size and crop at load time
SMALL_SITES = syn.sites_with_matrix(syn.DEFAULT_SITES, fastmri_matrix=32, brats_matrix=None)
LAYOUT_OF = {s.name: s.layout for s in SMALL_SITES}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    syn.generate(root, SMALL_SITES, volumes_per_site=4, slices=2, seed=3)
    return root


@pytest.fixture(scope="module")
def converted(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv")
    sites = {s.name: raw / s.name for s in SMALL_SITES}
    # cheap settings crop at load time: 24 x 24 centre of the 240 x 240 BraTS slices, 3 slices per volume
    summary = fedmri.convert(sites, out / "data", out / "datalists", seed=7, modalities={"site-2": "t2"},
                             max_slices=3, crops={"site-2": 24, "site-4": 24})
    return raw, out / "data", out / "datalists", summary


def _entries(datalist: Path) -> dict[str, list[dict]]:
    payload = json.loads(datalist.read_text())
    return {split: payload[split] for split in fedmri.SPLITS}


def test_datalists_load_with_monai_and_record_source_type(converted):
    _, data, datalists, summary = converted
    assert set(summary) == set(LAYOUT_OF)
    for site, layout in LAYOUT_OF.items():
        for split in fedmri.SPLITS:
            items = load_decathlon_datalist(datalists / f"{site}.json", False, split, base_dir=data)
            assert len(items) == summary[site][split] > 0
            for item in items:
                assert Path(item["image"]).is_file() and str(item["image"]).startswith(str(data))
                assert item["source_type"] == fedmri.SOURCE_TYPES[layout]
                assert isinstance(item["slice"], int)


def test_splits_are_by_volume_disjoint_complete_and_seeded(converted, tmp_path):
    raw, data, datalists, _ = converted
    for site in LAYOUT_OF:
        splits = _entries(datalists / f"{site}.json")
        vols = {split: {e["volume"] for e in items} for split, items in splits.items()}
        assert not (vols["training"] & vols["validation"] or vols["training"] & vols["testing"]
                    or vols["validation"] & vols["testing"])
        assert sum(len(v) for v in vols.values()) == 4
        # every slice of a volume lands in its volume's split
        for items in splits.values():
            for vol in {e["volume"] for e in items}:
                with h5py.File(data / site / f"{vol}.h5") as f:
                    assert sorted(e["slice"] for e in items if e["volume"] == vol) == list(range(f["target"].shape[0]))
    again = fedmri.convert({"site-1": raw / "site-1"}, tmp_path / "d", tmp_path / "dl", seed=7)
    assert again["site-1"] == converted[3]["site-1"]
    assert _entries(tmp_path / "dl" / "site-1.json") == _entries(datalists / "site-1.json")


def test_converted_files_match_their_sources(converted):
    raw, data, _, _ = converted
    for site, layout in LAYOUT_OF.items():
        for path in sorted((data / site).glob("*.h5")):
            with h5py.File(path) as f:
                k, target = f["kspace"][()], f["target"][()]
                attrs = dict(f.attrs)
            assert k.dtype == np.complex64 and target.dtype == np.float32 and k.shape == target.shape
            np.testing.assert_allclose(np.abs(ifft2c(k)), target, rtol=1e-4, atol=1e-5 * target.max())
            assert attrs["source_type"] == fedmri.SOURCE_TYPES[layout] and attrs["site"] == site
            source = raw / site / attrs["source_file"]
            if layout == "fastmri_singlecoil":
                with h5py.File(source) as f:
                    np.testing.assert_allclose(target, f["reconstruction_esc"][()], rtol=1e-4, atol=1e-5)
                    # measured path keeps the phase: the k-space is not that of the magnitude
                    assert np.abs(ifft2c(k).imag).max() > 1e-3 * target.max()
            elif layout == "fastmri_multicoil":
                with h5py.File(source) as f:
                    np.testing.assert_array_equal(target, f["reconstruction_rss"][()])
            else:
                assert source.name.endswith("_t2.nii.gz" if site == "site-2" else "_t1.nii.gz")
                volume = np.asarray(nib.load(str(source)).dataobj)
                assert volume.shape == syn.BRATS_SHAPE and target.shape[-2:] == (24, 24)
                for i, z in enumerate(attrs["slice_indices"]):
                    assert fedmri.BRATS_SLICE_RANGE[0] <= z < fedmri.BRATS_SLICE_RANGE[1]
                    np.testing.assert_array_equal(target[i], volume[:, :, z].T[108:132, 108:132])


def test_validate_accepts_converted_and_the_cli_runs_end_to_end(converted, tmp_path, capsys):
    _, data, datalists, summary = converted
    assert fedmri.validate_datalists(datalists, data) == {
        s: {k: v for k, v in c.items() if k != "volumes"} for s, c in summary.items()
    }
    raw_dir, conv, dl = tmp_path / "raw", tmp_path / "conv", tmp_path / "dl"
    assert fedmri.main(["generate", "--out", str(raw_dir), "--sites", "2", "--volumes", "3", "--slices", "1",
                        "--fastmri-matrix", "16", "--brats-matrix", "16"]) == 0
    assert fedmri.main(["convert", "--raw-root", str(raw_dir), "--out", str(conv), "--datalist-dir", str(dl),
                        "--max-slices", "2", "--crop", "site-2=16"]) == 0
    assert fedmri.main(["validate", "--data-root", str(conv), "--datalist-dir", str(dl)]) == 0
    assert fedmri.main(["validate", "--raw-root", str(raw_dir), "--crop", "site-2=16"]) == 0
    assert "site-2" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------
# Bad input: each case raises DataValidationError naming file and field, and writes nothing.
# ----------------------------------------------------------------------------------------------------------------
def _copy_site(raw: Path, site: str, dst: Path) -> Path:
    shutil.copytree(raw / site, dst / site)
    return dst / site


def _first(site_dir: Path, pattern: str) -> Path:
    return sorted(site_dir.rglob(pattern))[0]


def _rewrite(path: Path, key: str, value) -> None:
    with h5py.File(path, "a") as f:
        del f[key]
        if value is not None:
            f.create_dataset(key, data=value)


def _mutate_h5(site: str, key: str, fn):
    def mutate(site_dir: Path) -> Path:
        path = _first(site_dir, "*.h5")
        with h5py.File(path) as f:
            current = f[key][()]
        _rewrite(path, key, fn(current))
        return path
    return site, mutate


def _nifti(site_dir: Path, suffix: str) -> Path:
    return _first(site_dir, f"*_{suffix}.nii.gz")


def _save_like(path: Path, data: np.ndarray, zooms=None) -> None:
    img = nib.load(str(path))
    new = nib.Nifti1Image(data, img.affine)
    if zooms:
        new.header.set_zooms(zooms)
    nib.save(new, str(path))


def _nan_kspace(k):
    k = k.copy()
    k[0, 0, 0] = np.nan
    return k


def _nan_nifti(site_dir):
    path = _nifti(site_dir, "t1")
    data = np.asarray(nib.load(str(path)).dataobj).astype(np.float32)
    data[0, 0, 0] = np.nan
    _save_like(path, data)
    return path


def _bad_label(site_dir):
    path = _nifti(site_dir, "seg")
    data = np.asarray(nib.load(str(path)).dataobj).copy()
    data[0, 0, 0] = 3
    _save_like(path, data)
    return path


def _seg_shape(site_dir):
    path = _nifti(site_dir, "seg")
    _save_like(path, np.zeros((24, 24, 5), dtype=np.uint8))
    return path


def _seg_spacing(site_dir):
    path = _nifti(site_dir, "seg")
    _save_like(path, np.asarray(nib.load(str(path)).dataobj), zooms=(2.0, 2.0, 1.0))
    return path


def _missing_modality(site_dir):
    path = _nifti(site_dir, "t1")
    path.unlink()
    return path


def _bad_header(site_dir):
    path = _first(site_dir, "*.h5")
    _rewrite(path, "ismrmrd_header", np.bytes_(b"<ismrmrdHeader><encoding>"))
    return path


def _header_recon_mismatch(site_dir):
    path = _first(site_dir, "*.h5")
    with h5py.File(path) as f:
        old = b"<reconSpace><matrixSize><x>32</x>"
        header = f["ismrmrd_header"][()].replace(old, old.replace(b"32", b"30"))
    _rewrite(path, "ismrmrd_header", np.bytes_(header))
    return path


def _test_file(site_dir):
    """An undersampled test-split file: kspace + mask, no reference reconstruction."""
    path = _first(site_dir, "*.h5")
    _rewrite(path, "reconstruction_esc", None)
    with h5py.File(path, "a") as f:
        f.create_dataset("mask", data=np.ones(f["kspace"].shape[-1], dtype=bool))
    return path


BAD_INPUTS = {
    "missing kspace": (*_mutate_h5("site-3", "kspace", lambda k: None), "kspace: dataset missing"),
    "test file without reference": ("site-3", _test_file, "reconstruction_esc: dataset missing.*mask"),
    "kspace not complex": (*_mutate_h5("site-3", "kspace", lambda k: np.abs(k)), "kspace: .*complex"),
    "kspace wrong rank": (*_mutate_h5("site-3", "kspace", lambda k: k[0]), r"kspace: .*\[slices, H, W\]"),
    "kspace NaN": (*_mutate_h5("site-3", "kspace", _nan_kspace), "kspace: .*NaN"),
    "recon wrong dtype": (*_mutate_h5("site-1", "reconstruction_rss", lambda r: r.astype(np.complex64)),
                          "reconstruction_rss: .*float"),
    "recon wrong slices": (*_mutate_h5("site-1", "reconstruction_rss", lambda r: r[:1]),
                           r"reconstruction_rss: .*slices=2"),
    "recon NaN": (*_mutate_h5("site-1", "reconstruction_rss", lambda r: np.where(r > r.mean(), np.nan, r)),
                  "reconstruction_rss: .*NaN"),
    "recon inconsistent": (*_mutate_h5("site-3", "reconstruction_esc", lambda r: r[:, ::-1].copy()),
                           "reconstruction_esc: .*disagrees with kspace"),
    "header not xml": ("site-3", _bad_header, "ismrmrd_header: .*not valid XML"),
    "header recon size": ("site-3", _header_recon_mismatch, "reconSpace matrixSize"),
    "nifti NaN": ("site-2", _nan_nifti, "t1: NIfTI .*NaN"),
    "seg label outside set": ("site-2", _bad_label, r"label: .*values \[3\]"),
    "seg shape mismatch": ("site-2", _seg_shape, "seg: .*shape"),
    "seg spacing mismatch": ("site-2", _seg_spacing, "seg: .*spacing"),
    "modality missing": ("site-2", _missing_modality, "t1: file .*does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_rejected_before_anything_is_written(case, raw, tmp_path):
    site, mutate, match = BAD_INPUTS[case]
    good = _copy_site(raw, "site-4", tmp_path / "raw")  # a valid site next to the broken one
    broken_file = mutate(_copy_site(raw, site, tmp_path / "raw"))
    with pytest.raises(DataValidationError, match=match) as err:
        fedmri.convert({"site-4": good, site: tmp_path / "raw" / site}, tmp_path / "out", tmp_path / "dl")
    assert broken_file.name.split(".")[0] in str(err.value)  # the message names the file
    assert not (tmp_path / "out").exists() and not (tmp_path / "dl").exists()


def test_unreadable_h5_and_empty_site_and_too_few_volumes(raw, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataValidationError, match="site 'site-9': no fastMRI"):
        fedmri.convert({"site-9": empty}, tmp_path / "out", tmp_path / "dl")
    with pytest.raises(DataValidationError, match="does not exist"):
        fedmri.convert({"site-9": tmp_path / "nowhere"}, tmp_path / "out", tmp_path / "dl")
    (empty / "file1.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataValidationError, match="file: cannot open .*file1.h5"):
        fedmri.convert({"site-9": empty}, tmp_path / "out", tmp_path / "dl")
    few = _copy_site(raw, "site-3", tmp_path / "few")
    for path in sorted(few.rglob("*.h5"))[2:]:
        path.unlink()
    with pytest.raises(DataValidationError, match="need at least 3 cases"):
        fedmri.convert({"site-3": few}, tmp_path / "out", tmp_path / "dl")
    assert not (tmp_path / "out").exists()


def _corrupt_datalist(converted, tmp_path, edit) -> Path:
    _, data, datalists, _ = converted
    dl = tmp_path / "dl"
    shutil.copytree(datalists, dl)
    payload = json.loads((dl / "site-1.json").read_text())
    edit(payload, data)
    (dl / "site-1.json").write_text(json.dumps(payload))
    return dl


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p, d: p["training"][0].update(image="../outside.h5"), "escapes the data root"),
        (lambda p, d: p["training"][0].update(image=str(d / "site-1" / "x.h5")), "must be relative"),
        (lambda p, d: p["training"][0].update(slice=99), r"slice: 99 outside"),
        (lambda p, d: p["training"][0].update(source_type="dicom"), "source_type: unknown value 'dicom'"),
        (lambda p, d: p["validation"].append(dict(p["training"][0])), "in both training and validation"),
        (lambda p, d: p.update(training=[]), "no training entries"),
        (lambda p, d: p["training"][0].pop("volume"), "field 'volume' missing"),
    ],
)
def test_validate_rejects_corrupt_datalists(converted, tmp_path, edit, match):
    dl = _corrupt_datalist(converted, tmp_path, edit)
    with pytest.raises(DataValidationError, match=match):
        fedmri.validate_datalists(dl, converted[1])


def test_validate_rejects_a_volume_listed_by_two_sites(converted, tmp_path):
    def steal(payload, data):
        other = json.loads((converted[2] / "site-2.json").read_text())
        payload["testing"].append(other["training"][0])
    dl = _corrupt_datalist(converted, tmp_path, steal)
    with pytest.raises(DataValidationError, match="also listed by site"):
        fedmri.validate_datalists(dl, converted[1])


def test_validate_rejects_converted_file_that_lost_consistency(converted, tmp_path):
    _, data, datalists, _ = converted
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    path = sorted((copy / "site-1").glob("*.h5"))[0]
    _rewrite(path, "target", np.zeros((2, 32, 32), dtype=np.float32) + 1)
    with pytest.raises(DataValidationError, match=r"target: .*differs from \|ifft2c\(kspace\)\|"):
        fedmri.validate_datalists(datalists, copy)


def test_cli_reports_invalid_data_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "raw" / "site-1").mkdir(parents=True)
    assert fedmri.main(["convert", "--raw-root", str(tmp_path / "raw"), "--out", str(tmp_path / "o"),
                        "--datalist-dir", str(tmp_path / "dl")]) == 2
    assert "site 'site-1': no fastMRI" in capsys.readouterr().err


def test_cropping_handles_kspace_narrower_than_the_reconstruction():
    """fastMRI's "FLAIR 203" case: k-space narrower than 320 columns; the crop keeps the short axis."""
    k = np.ones((1, 40, 12), dtype=np.complex64)
    assert center_crop(ifft2c(k), (16, 16)).shape == (1, 16, 12)


def test_modalities_for_unknown_sites_are_rejected(raw, tmp_path):
    with pytest.raises(ValueError, match="unknown sites"):
        fedmri.convert({"site-2": raw / "site-2"}, tmp_path / "o", tmp_path / "dl", modalities={"site-7": "t2"})
    with pytest.raises(ValueError, match="modality must be one of"):
        fedmri.convert({"site-2": raw / "site-2"}, tmp_path / "o", tmp_path / "dl", modalities={"site-2": "dwi"})
