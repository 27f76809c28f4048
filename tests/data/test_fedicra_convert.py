"""FedICRA converter: both layouts -> per-site datalists; splits; every bad input named and nothing written."""

import json
import re
import shutil

import h5py
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from PIL import Image

from data_prep import fedicra
from data_prep.common import DataValidationError
from data_prep.fedicra_layout import CODE_SUP_TYPES, PAPER_SUP_TYPES, load_case
from data_prep.synthetic.fedicra import generate

N_SITES, N_TRAIN, N_TEST, SIZE = 5, 5, 2, 48
ROOTS = {("faz", "h5"): "FAZ_h5", ("faz", "png"): "FAZ", ("odoc", "h5"): "ODOC_h5", ("odoc", "png"): "ODOC"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("fedicra_raw")
    generate(root, "both", N_SITES, N_TRAIN, N_TEST, SIZE, "both", seed=11)
    return root


@pytest.fixture
def copy(raw, tmp_path):
    """A private copy of one layout root, for tests that damage it."""

    def make(task, layout):
        dst = tmp_path / ROOTS[(task, layout)]
        shutil.copytree(raw / ROOTS[(task, layout)], dst)
        return dst

    return make


def _ids(items):
    return {i["case_id"] for i in items}


@pytest.mark.parametrize("task,layout", sorted(ROOTS))
def test_convert_writes_loadable_per_site_datalists(raw, tmp_path, task, layout):
    root = raw / ROOTS[(task, layout)]
    written = fedicra.convert(root, task, datalist_dir=tmp_path / "dl")
    assert sorted(written) == [f"site-{k}" for k in range(1, N_SITES + 1)]
    for k, (_site, path) in enumerate(sorted(written.items()), start=1):
        raw_json = json.loads(path.read_text())
        train_folder = {p.stem for p in (root / f"Domain{k}" / "train").glob("*.h5" if layout == "h5" else "imgs/*")}
        test_folder = {p.stem for p in (root / f"Domain{k}" / "test").glob("*.h5" if layout == "h5" else "imgs/*")}
        tr, va, te = (raw_json[s] for s in ("training", "validation", "testing"))
        assert _ids(tr) | _ids(va) == train_folder and not (_ids(tr) & _ids(va))  # val comes out of train
        assert _ids(te) == test_folder and len(va) == 1  # round(0.2 * 5)
        assert {i["sup_type"] for i in tr} == {PAPER_SUP_TYPES[task][k - 1]}
        assert {i["label_key"] for i in va + te} == {"mask"}
        for split in ("training", "validation", "testing"):
            for item in load_decathlon_datalist(str(path), True, split, str(root)):
                case = load_case(item)
                channels = 1 if task == "faz" else 3
                assert case["image"].shape == (channels, SIZE, SIZE) and case["image"].dtype == np.float32
                assert case["label"].shape == (SIZE, SIZE) and case["label"].dtype == np.int64
                n_cls = 2 if task == "faz" else 3
                assert case["label"].max() <= (n_cls if split == "training" else n_cls - 1)
    assert fedicra.validate(root, task, tmp_path / "dl") == N_SITES * (N_TRAIN + N_TEST)


@pytest.mark.parametrize("task", ["faz", "odoc"])
def test_h5_and_png_layouts_give_the_same_cases(raw, tmp_path, task):
    a = fedicra.convert(raw / ROOTS[(task, "h5")], task, datalist_dir=tmp_path / "h5")
    b = fedicra.convert(raw / ROOTS[(task, "png")], task, datalist_dir=tmp_path / "png")
    for site in a:
        ja, jb = json.loads(a[site].read_text()), json.loads(b[site].read_text())
        for split in ("training", "validation", "testing"):
            assert [i["case_id"] for i in ja[split]] == [i["case_id"] for i in jb[split]]
            for ia, ib in zip(ja[split], jb[split]):
                ca, cb = load_case(ia, raw / ROOTS[(task, "h5")]), load_case(ib, raw / ROOTS[(task, "png")])
                assert np.array_equal(ca["label"], cb["label"])
                assert np.abs(ca["image"] - cb["image"]).max() <= 0.5 / 255 + 1e-6


def test_split_is_deterministic_by_seed_and_val_fraction_zero_keeps_all(raw, tmp_path):
    root = raw / "FAZ_h5"

    def val_ids(seed, fraction=0.4):
        path = fedicra.convert(root, "faz", val_fraction=fraction, seed=seed, datalist_dir=tmp_path / f"s{seed}")
        return [_ids(json.loads(p.read_text())["validation"]) for p in path.values()]

    assert val_ids(0) == val_ids(0)
    assert any(val_ids(0) != val_ids(s) for s in (1, 2, 3))
    none = fedicra.convert(root, "faz", val_fraction=0.0, datalist_dir=tmp_path / "none")
    assert all(len(json.loads(p.read_text())["training"]) == N_TRAIN for p in none.values())


def test_sup_types_code_assignment_and_explicit_list(raw, tmp_path):
    code = fedicra.convert(raw / "ODOC", "odoc", sup_types="code", datalist_dir=tmp_path / "code")
    forms = [json.loads(p.read_text())["training"][0]["sup_type"] for _, p in sorted(code.items())]
    assert tuple(forms) == CODE_SUP_TYPES["odoc"]
    listed = fedicra.convert(raw / "FAZ", "faz", sup_types="box,box,mask,block,keypoint", datalist_dir=tmp_path / "l")
    first = json.loads(listed["site-1"].read_text())["training"][0]
    assert first["label"].startswith("Domain1/train/box/")
    third = json.loads(listed["site-3"].read_text())["training"][0]
    assert third["label"].startswith("Domain3/train/mask/")
    with pytest.raises(ValueError, match=r"unknown form\(s\) \['scribbles'\]"):
        fedicra.convert(raw / "FAZ", "faz", sup_types="scribbles,box,box,box,box", datalist_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="2 form"):
        fedicra.convert(raw / "FAZ", "faz", sup_types="box,box", datalist_dir=tmp_path / "x")


def _first(root, split="train", pattern="*.h5"):
    return sorted((root / "Domain1" / split).glob(pattern))[0]


def _rewrite_h5(path, **changes):
    with h5py.File(path, "a") as f:
        for key, value in changes.items():
            if key in f:
                del f[key]
            if value is not None:
                f.create_dataset(key, data=value)


def _damage_missing_dataset(root):
    path = _first(root)
    _rewrite_h5(path, scribble=None)
    return [path.name, "scribble", "dataset missing"]


def _damage_wrong_dtype(root):
    path = _first(root)
    with h5py.File(path, "r") as f:
        image = f["image"][()]
    _rewrite_h5(path, image=(image * 255).astype(np.uint8))
    return [path.name, "image", "dtype uint8"]


def _damage_fractional_label(root):
    path = _first(root, "test")
    _rewrite_h5(path, mask=np.full((SIZE, SIZE), 0.5, np.float32))
    return [path.name, "mask", "float32 with non-integer values"]


def _damage_wrong_rank(root):
    path = _first(root, "test")
    _rewrite_h5(path, image=np.zeros((SIZE, SIZE), np.float32))
    return [path.name, "image", r"expected \(3, H, W\)"]


def _damage_label_values(root):
    path = _first(root)
    with h5py.File(path, "r") as f:
        mask = f["mask"][()]
    mask[0, 0] = 7
    _rewrite_h5(path, mask=mask)
    return [path.name, "mask", r"\[7\] outside the expected set"]


def _damage_shape_mismatch(root):
    path = _first(root)
    _rewrite_h5(path, mask=np.zeros((SIZE, SIZE + 2), np.uint8))
    return [path.name, "mask", "shape"]


def _damage_nan(root):
    path = _first(root, "test")
    with h5py.File(path, "r") as f:
        image = f["image"][()]
    image[0, 3, 3] = np.nan
    _rewrite_h5(path, image=image)
    return [path.name, "image", "NaN"]


def _damage_range(root):
    path = _first(root)
    with h5py.File(path, "r") as f:
        image = f["image"][()]
    _rewrite_h5(path, image=image * 255)
    return [path.name, "image", r"expected \[0, 1\]"]


def _damage_empty_sparse(root):
    path = _first(root)
    _rewrite_h5(path, scribble=np.full((SIZE, SIZE), 3, np.uint8))
    return [path.name, "scribble", "no annotated pixel"]


def _damage_empty_site(root):
    for f in (root / "Domain3" / "test").glob("*.h5"):
        f.unlink()
    return ["Domain3/test", "empty site"]


def _damage_domain_gap(root):
    (root / "Domain5").rename(root / "Domain7")
    return [r"Domain folders \[1, 2, 3, 4, 7\]"]


def _damage_leak(root):
    path = _first(root)
    shutil.copy(path, root / "Domain1" / "test" / path.name)
    return ["Domain1", path.stem, "both train and test"]


def _damage_corrupt(root):
    path = _first(root, "test")
    path.write_bytes(b"not an hdf5 file")
    return [path.name, "cannot read h5"]


def _damage_size(root):
    path = _first(root, "test")
    _rewrite_h5(path, image=np.zeros((3, SIZE + 8, SIZE + 8), np.float32),
                mask=np.zeros((SIZE + 8, SIZE + 8), np.uint8))
    return [path.name, "share one size"]


H5_DAMAGES = [_damage_missing_dataset, _damage_wrong_dtype, _damage_fractional_label, _damage_wrong_rank,
              _damage_label_values, _damage_shape_mismatch, _damage_nan, _damage_range, _damage_empty_sparse,
              _damage_empty_site, _damage_domain_gap, _damage_leak, _damage_corrupt, _damage_size]


@pytest.mark.parametrize("damage", H5_DAMAGES, ids=lambda f: f.__name__[8:])
def test_bad_h5_input_is_named_and_nothing_is_written(copy, tmp_path, damage):
    root = copy("odoc", "h5")
    good = fedicra.convert(root, "odoc", datalist_dir=tmp_path / "dl")  # an earlier good conversion
    before = {p.name: p.read_text() for p in (tmp_path / "dl").iterdir()}
    expected = damage(root)
    with pytest.raises(DataValidationError) as err:
        fedicra.convert(root, "odoc", datalist_dir=tmp_path / "dl")
    for part in expected:
        assert re.search(part, str(err.value)), (part, str(err.value))
    assert {p.name: p.read_text() for p in (tmp_path / "dl").iterdir()} == before  # untouched
    assert len(good) == N_SITES
    with pytest.raises(DataValidationError):
        fedicra.convert(root, "odoc", datalist_dir=tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists() and not list(tmp_path.glob(".fresh*"))


def _png_missing_sparse(root):
    path = sorted((root / "Domain2" / "train" / "keypoint").glob("*.png"))[0]
    path.unlink()
    return [str(path.name), "keypoint", "is missing"]


def _png_wrong_mode(root):
    path = sorted((root / "Domain1" / "train" / "imgs").glob("*.png"))[0]
    Image.open(path).convert("RGB").save(path)
    return [path.name, "image", "PNG mode 'RGB'"]


def _png_255_encoding(root):
    path = sorted((root / "Domain1" / "test" / "mask").glob("*.png"))[0]
    mask = np.asarray(Image.open(path)) * 255
    Image.fromarray(mask.astype(np.uint8)).save(path)
    return [path.name, "mask", r"\[255\] outside"]


def _png_missing_mask(root):
    path = sorted((root / "Domain4" / "test" / "mask").glob("*.png"))[0]
    path.unlink()
    return [path.name, "mask", "is missing"]


@pytest.mark.parametrize("damage", [_png_missing_sparse, _png_wrong_mode, _png_255_encoding, _png_missing_mask],
                         ids=lambda f: f.__name__[5:])
def test_bad_png_input_is_named_and_nothing_is_written(copy, tmp_path, damage):
    root = copy("faz", "png")
    expected = damage(root)
    with pytest.raises(DataValidationError) as err:
        fedicra.convert(root, "faz", datalist_dir=tmp_path / "dl")
    for part in expected:
        assert re.search(part, str(err.value)), (part, str(err.value))
    assert not (tmp_path / "dl").exists()


def test_whole_number_float_labels_are_accepted(copy, tmp_path):
    root = copy("faz", "h5")
    path = _first(root, "test")
    with h5py.File(path, "r") as f:
        mask = f["mask"][()]
    _rewrite_h5(path, mask=mask.astype(np.float64))
    assert len(fedicra.convert(root, "faz", datalist_dir=tmp_path / "dl")) == N_SITES


def test_validate_catches_escaping_and_shared_paths(raw, tmp_path):
    root = raw / "FAZ_h5"
    written = fedicra.convert(root, "faz", datalist_dir=tmp_path / "dl")
    data = json.loads(written["site-2"].read_text())
    data["testing"][0]["image"] = "../../outside.h5"
    written["site-2"].write_text(json.dumps(data))
    with pytest.raises(DataValidationError, match=r"escapes the data root"):
        fedicra.validate(root, "faz", tmp_path / "dl")
    data = json.loads(written["site-1"].read_text())
    written = fedicra.convert(root, "faz", datalist_dir=tmp_path / "dl")
    other = json.loads(written["site-2"].read_text())
    other["training"].append(data["testing"][0])  # site-1's test case in site-2's training list
    written["site-2"].write_text(json.dumps(other))
    with pytest.raises(DataValidationError, match="a case in two splits or sites"):
        fedicra.validate(root, "faz", tmp_path / "dl")


def test_cli_convert_validate_and_errors(raw, tmp_path, capsys):
    root = str(raw / "ODOC")
    assert fedicra.main(["convert", "--task", "odoc", "--data-root", root, "--datalist-dir", str(tmp_path / "d")]) == 0
    assert "site-5" in capsys.readouterr().out
    assert fedicra.main(["validate", "--task", "odoc", "--data-root", root, "--datalist-dir", str(tmp_path / "d")]) == 0
    assert "validated 35 datalist entries" in capsys.readouterr().out
    assert fedicra.main(["convert", "--task", "odoc", "--data-root", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert fedicra.main(["generate", "--out", str(tmp_path / "g"), "--task", "faz", "--n-sites", "1", "--n-train", "1",
                         "--n-test", "1", "--size", "32", "--layout", "png"]) == 0
    assert (tmp_path / "g" / "FAZ" / "Domain1" / "train" / "scr_n").is_dir()
    with pytest.raises(SystemExit) as e:
        fedicra.main(["convert", "--help"])
    assert e.value.code == 0
