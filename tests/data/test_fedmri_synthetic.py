"""The synthetic FedMRI raw data reads back through h5py, MONAI and nibabel exactly like the public files."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import replace

import h5py
import nibabel as nib
import numpy as np
import pytest

from data_prep._mri_fft import center_crop, fft2c, ifft2c, rss
from data_prep.synthetic import fedmri as syn

NS = "{http://www.ismrm.org/ISMRMRD}"
SMALL_SITES = syn.sites_with_matrix(syn.DEFAULT_SITES, fastmri_matrix=32, brats_matrix=24)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("fedmri_raw")
    written = syn.generate(root, SMALL_SITES, volumes_per_site=3, slices=2, seed=1)
    return root, written


def _query(root: ET.Element, *path: str) -> str:
    """fastMRI's ``et_query``: nested lookup in the ISMRMRD namespace."""
    return root.find("./" + "/".join(NS + p for p in path)).text


def _brute_force_dft2(x: np.ndarray) -> np.ndarray:
    """Unitary centred 2-D DFT from its definition (indices measured from the centre pixel n // 2)."""
    h, w = x.shape
    ky, kx = np.arange(h) - h // 2, np.arange(w) - w // 2
    fy = np.exp(-2j * np.pi * np.outer(ky, ky) / h) / np.sqrt(h)
    fx = np.exp(-2j * np.pi * np.outer(kx, kx) / w) / np.sqrt(w)
    return fy @ x @ fx.T


def test_fft2c_matches_the_centred_dft_definition_and_inverts():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8)) + 1j * rng.normal(size=(6, 8))
    np.testing.assert_allclose(fft2c(x), _brute_force_dft2(x), atol=1e-10)
    np.testing.assert_allclose(ifft2c(fft2c(x)), x, atol=1e-10)
    assert np.isclose(np.linalg.norm(fft2c(x)), np.linalg.norm(x))  # unitary
    constant = np.ones((4, 4))
    assert np.isclose(fft2c(constant)[2, 2], 4.0)  # DC sits at the centre pixel


def test_center_crop_uses_fastmri_offsets_and_keeps_short_axes():
    a = np.arange(7 * 6).reshape(7, 6)
    np.testing.assert_array_equal(center_crop(a, (3, 2)), a[2:5, 2:4])
    assert center_crop(a, (10, 4)).shape == (7, 4)
    np.testing.assert_allclose(rss(np.array([[[3.0]], [[4j]]]), coil_axis=0), [[5.0]])


def test_multicoil_file_has_fastmri_brain_layout(raw):
    root, written = raw
    path = written["site-1"][0]
    assert re.fullmatch(r"file_brain_AXT1_201_\d{7}\.h5", path.name) and path.parent.name == "multicoil_train"
    with h5py.File(path, "r") as f:
        assert set(f.keys()) == {"kspace", "reconstruction_rss", "ismrmrd_header"}
        k, recon = f["kspace"][()], f["reconstruction_rss"][()]
        assert k.dtype == np.complex64 and k.shape == (2, 4, 64, 32)
        assert recon.dtype == np.float32 and recon.shape == (2, 32, 32)
        assert set(f.attrs) == {"acquisition", "max", "norm", "patient_id"}
        assert f.attrs["max"] == pytest.approx(recon.max())
        assert f.attrs["norm"] == pytest.approx(np.linalg.norm(recon), rel=1e-5)
        header = ET.fromstring(f["ismrmrd_header"][()])
    np.testing.assert_allclose(center_crop(rss(ifft2c(k), coil_axis=1), (32, 32)), recon, rtol=1e-4, atol=1e-6)
    assert (int(_query(header, "encoding", "encodedSpace", "matrixSize", "x")),
            int(_query(header, "encoding", "encodedSpace", "matrixSize", "y"))) == k.shape[-2:]
    assert int(_query(header, "acquisitionSystemInformation", "receiverChannels")) == 4


def test_singlecoil_file_esc_is_the_cropped_inverse_fft_and_padding_matches_header(raw):
    root, written = raw
    path = written["site-3"][0]
    assert re.fullmatch(r"file\d{7}\.h5", path.name) and path.parent.name == "singlecoil_train"
    with h5py.File(path, "r") as f:
        assert set(f.keys()) == {"kspace", "reconstruction_esc", "reconstruction_rss", "ismrmrd_header"}
        k, esc = f["kspace"][()], f["reconstruction_esc"][()]
        header = ET.fromstring(f["ismrmrd_header"][()])
        assert f.attrs["acquisition"] == "AXFLAIR"
        assert f["reconstruction_rss"].shape == esc.shape
    assert k.dtype == np.complex64 and k.ndim == 3 and k.shape[1] == 64 and k.shape[2] > 32
    np.testing.assert_allclose(np.abs(center_crop(ifft2c(k), (32, 32))), esc, rtol=1e-4, atol=1e-6)
    # fastMRI's SliceDataset: padding_left = y // 2 - center, padding_right = padding_left + maximum + 1
    width = int(_query(header, "encoding", "encodedSpace", "matrixSize", "y"))
    center = int(_query(header, "encoding", "encodingLimits", "kspace_encoding_step_1", "center"))
    maximum = int(_query(header, "encoding", "encodingLimits", "kspace_encoding_step_1", "maximum"))
    left = width // 2 - center
    right = left + maximum + 1
    assert width == k.shape[2] and 0 < left < right < width
    assert np.all(k[:, :, :left] == 0) and np.all(k[:, :, right:] == 0)
    assert np.all(np.abs(k[:, :, left:right]).sum(axis=1) > 0)
    assert (int(_query(header, "encoding", "reconSpace", "matrixSize", "x")),
            int(_query(header, "encoding", "reconSpace", "matrixSize", "y"))) == esc.shape[-2:]


def test_monai_fastmri_reader_reads_generated_files(raw):
    from monai.apps.reconstruction.fastmri_reader import FastMRIReader

    _, written = raw
    reader = FastMRIReader()
    path = written["site-1"][0]
    # MONAI 1.6.1's verify_suffix passes ".h5" where is_supported_format expects "h5", so it answers False for
    # every file; read() and get_data() are what LoadImage would call with reader=FastMRIReader().
    kspace, meta = reader.get_data(reader.read(str(path)))
    assert kspace.shape == (2, 4, 64, 32)
    assert meta["reconstruction_rss"].shape == (2, 32, 32)
    assert meta["acquisition"] == "AXT1" and meta["filename"] == path.name
    assert len(meta["patient_id"]) == 64


def test_brats_cases_follow_the_2019_layout_and_read_with_monai(raw):
    from monai.transforms import LoadImage

    root, written = raw
    for site in ("site-2", "site-4"):
        for case_dir in written[site]:
            grade = case_dir.parent.name
            assert grade in ("HGG", "LGG") and case_dir.parent.parent.name == "MICCAI_BraTS_2019_Data_Training"
            assert re.fullmatch(r"BraTS19_(CBICA_[A-Z]{3}|TMC_\d{5})_1", case_dir.name)
            names = sorted(p.name for p in case_dir.iterdir())
            assert names == sorted(f"{case_dir.name}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg"))
            seg = nib.load(str(case_dir / f"{case_dir.name}_seg.nii.gz"))
            t1 = nib.load(str(case_dir / f"{case_dir.name}_t1.nii.gz"))
            assert seg.get_data_dtype() == np.uint8 and t1.get_data_dtype() == np.int16
            # the real BraTS 2019 geometry, whatever the site's load-time crop: 240 x 240 x 155 at 1 mm
            assert seg.shape == t1.shape == syn.BRATS_SHAPE == (240, 240, 155)
            assert np.allclose(np.abs(np.diag(t1.affine)[:3]), 1.0)
            labels = set(np.unique(np.asarray(seg.dataobj)).tolist())
            assert labels <= {0, 1, 2, 4}
            if grade == "LGG":
                assert 4 not in labels
            image = LoadImage(image_only=True)(str(case_dir / f"{case_dir.name}_flair.nii.gz"))
            assert tuple(image.shape) == (240, 240, 155) and float(image.max()) > 0
            # the head is drawn inside the site's 24 x 24 load-time crop, so cropping loses no brain
            data = np.asarray(image)
            assert data[:108].max() == 0 and data[132:].max() == 0 and data[108:132].max() > 0


def test_sites_differ_in_matrix_and_contrast(raw):
    _, written = raw
    spec = {s.name: s for s in syn.DEFAULT_SITES}
    assert sorted({s.matrix for s in syn.DEFAULT_SITES}) == [192, 240, 320]
    assert {s.layout for s in syn.DEFAULT_SITES} == set(syn.LAYOUTS)
    assert spec["site-1"].contrast != spec["site-3"].contrast
    # CSF/WM contrast ratio differs between T1 (dark CSF) and FLAIR-like tables and with the site gamma
    t1 = np.asarray(syn.CONTRASTS["T1"])
    t2 = np.asarray(syn.CONTRASTS["T2"])
    assert t1[syn.CSF] < t1[syn.WM] and t2[syn.CSF] > t2[syn.WM]


def test_generation_is_deterministic_by_seed(tmp_path):
    sites = (replace(SMALL_SITES[2], matrix=16),)
    a = syn.generate(tmp_path / "a", sites, volumes_per_site=1, slices=1, seed=5)["site-3"][0]
    b = syn.generate(tmp_path / "b", sites, volumes_per_site=1, slices=1, seed=5)["site-3"][0]
    c = syn.generate(tmp_path / "c", sites, volumes_per_site=1, slices=1, seed=6)["site-3"][0]
    with h5py.File(a) as fa, h5py.File(b) as fb, h5py.File(c) as fc:
        np.testing.assert_array_equal(fa["kspace"][()], fb["kspace"][()])
        assert not np.array_equal(fa["kspace"][()], fc["kspace"][()])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"layout": "dicom"}, "layout"), ({"matrix": 15}, "matrix"), ({"contrast": "DWI"}, "contrast"),
     ({"fov_fill": 0.1}, "fov_fill"), ({"coils": 0}, "coils")],
)
def test_site_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        replace(syn.DEFAULT_SITES[0], **kwargs)


def test_generate_rejects_empty_sizes(tmp_path):
    with pytest.raises(ValueError, match="volumes_per_site"):
        syn.generate(tmp_path, SMALL_SITES, volumes_per_site=0)


# Order of ismrmrdHeader's xs:sequence and the required children, transcribed from ismrmrd/schema/ismrmrd.xsd.
HEADER_SEQUENCE = ["version", "subjectInformation", "studyInformation", "measurementInformation",
                   "acquisitionSystemInformation", "experimentalConditions", "encoding", "sequenceParameters",
                   "userParameters", "waveformInformation"]
ENCODING_REQUIRED = {"encodedSpace", "reconSpace", "encodingLimits", "trajectory"}


def test_ismrmrd_header_follows_the_schema_structure():
    xml = syn.ismrmrd_header_xml((64, 36), (32, 32), 220.0, 5.0, 3, 4, (1, 34), "AXT2")
    root = ET.fromstring(xml)
    assert root.tag == NS + "ismrmrdHeader"
    tags = [child.tag.removeprefix(NS) for child in root]
    assert tags == sorted(tags, key=HEADER_SEQUENCE.index)  # schema order
    assert {"experimentalConditions", "encoding"} <= set(tags)  # minOccurs=1
    encoding = root.find(NS + "encoding")
    assert {c.tag.removeprefix(NS) for c in encoding} >= ENCODING_REQUIRED
    for space in ("encodedSpace", "reconSpace"):
        assert [c.tag.removeprefix(NS) for c in encoding.find(NS + space + "/" + NS + "matrixSize")] == ["x", "y", "z"]
    assert _query(root, "measurementInformation", "patientPosition") == "HFS"
    assert int(_query(root, "experimentalConditions", "H1resonanceFrequency_Hz")) > 0
    assert float(_query(root, "encoding", "encodedSpace", "fieldOfView_mm", "x")) == pytest.approx(440.0)
    # padding_left = 36 // 2 - center = 1 (first acquired column), padding_right = 1 + 33 + 1 = 35 (exclusive)
    assert int(_query(root, "encoding", "encodingLimits", "kspace_encoding_step_1", "center")) == 17
    assert int(_query(root, "encoding", "encodingLimits", "kspace_encoding_step_1", "maximum")) == 33
