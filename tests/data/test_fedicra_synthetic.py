"""The synthetic FedICRA generator writes the release layouts; read them back as a user would (h5py, PIL)."""

import h5py
import numpy as np
import pytest
from PIL import Image

from data_prep.fedicra_layout import PNG_SPARSE_DIRS, SPARSE_FORMS
from data_prep.synthetic import fedicra as syn

N_SITES, N_TRAIN, N_TEST, SIZE = 5, 2, 1, 64


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("fedicra")
    syn.generate(root, "both", N_SITES, N_TRAIN, N_TEST, SIZE, "both", seed=3)
    return root


def _h5_files(root, split="train"):
    return sorted(root.glob(f"Domain*/{split}/*.h5"))


@pytest.mark.parametrize("task,root,channels,classes", [("faz", "FAZ_h5", 1, 2), ("odoc", "ODOC_h5", 3, 3)])
def test_h5_files_hold_the_release_datasets(out, task, root, channels, classes):
    assert sorted(p.name for p in (out / root).iterdir()) == [f"Domain{k}" for k in range(1, N_SITES + 1)]
    assert len(_h5_files(out / root, "train")) == N_SITES * N_TRAIN
    assert len(_h5_files(out / root, "test")) == N_SITES * N_TEST
    for path in _h5_files(out / root):
        with h5py.File(path, "r") as f:
            assert set(f.keys()) == {"image", "mask", *SPARSE_FORMS}
            image, mask = f["image"][()], f["mask"][()]
            assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
            assert image.shape == ((SIZE, SIZE) if channels == 1 else (channels, SIZE, SIZE))
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= set(range(classes))
            assert (mask > 0).any()
            for name in SPARSE_FORMS:
                assert f[name].shape == mask.shape and set(np.unique(f[name][()])) <= set(range(classes + 1))
    for path in _h5_files(out / root, "test"):
        with h5py.File(path, "r") as f:
            assert set(f.keys()) == {"image", "mask"}


@pytest.mark.parametrize(
    "task,h5_root,png_root,mode", [("faz", "FAZ_h5", "FAZ", "L"), ("odoc", "ODOC_h5", "ODOC", "RGB")]
)
def test_png_tree_matches_the_h5_files(out, task, h5_root, png_root, mode):
    domain = out / png_root / "Domain2"
    assert sorted(p.name for p in (domain / "train").iterdir()) == sorted(["imgs", "mask", *PNG_SPARSE_DIRS.values()])
    assert sorted(p.name for p in (domain / "test").iterdir()) == ["imgs", "mask"]
    for h5_path in _h5_files(out / h5_root, "train") + _h5_files(out / h5_root, "test"):
        split = h5_path.parent.name
        png_domain = out / png_root / h5_path.parent.parent.name / split
        with h5py.File(h5_path, "r") as f, Image.open(png_domain / "imgs" / f"{h5_path.stem}.png") as pic:
            assert pic.mode == mode and pic.size == (SIZE, SIZE)
            image = f["image"][()]
            expected = np.round(image * 255).astype(np.uint8)
            expected = expected.transpose(1, 2, 0) if image.ndim == 3 else expected
            assert np.array_equal(np.asarray(pic), expected)
            labels = {"mask": "mask"} | (dict(PNG_SPARSE_DIRS) if split == "train" else {})
            for key, folder in labels.items():
                with Image.open(png_domain / folder / f"{h5_path.stem}.png") as lab:
                    assert lab.mode == "L"
                    assert np.array_equal(np.asarray(lab), f[key][()])


def test_faz_is_a_dark_avascular_blob_and_cup_is_brighter_than_rim(out):
    for path in _h5_files(out / "FAZ_h5"):
        with h5py.File(path, "r") as f:
            image, mask = f["image"][()], f["mask"][()]
        assert image[mask == 1].mean() < image[mask == 0].mean() - 0.05
    for path in _h5_files(out / "ODOC_h5"):
        with h5py.File(path, "r") as f:
            image, mask = f["image"][()].mean(axis=0), f["mask"][()]
        assert image[mask == 1].mean() > image[mask == 2].mean() > image[mask == 0].mean()


def test_sites_look_different(out):
    def site_stats(root, k):
        values = []
        for path in sorted((out / root / f"Domain{k}" / "train").glob("*.h5")):
            with h5py.File(path, "r") as f:
                img = f["image"][()]
            values.append([img.mean(), img.std()] + ([img[0].mean() / (img[1].mean() + 1e-6)] if img.ndim == 3 else []))
        return np.mean(values, axis=0)

    for root in ("FAZ_h5", "ODOC_h5"):
        stats = np.array([site_stats(root, k) for k in range(1, N_SITES + 1)])
        spread = stats.max(axis=0) - stats.min(axis=0)
        assert spread[0] > 0.03, f"{root}: site mean intensities barely differ: {stats[:, 0]}"


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        syn.generate(tmp_path / name, "faz", 1, 1, 1, 32, "h5", seed)
    read = {n: h5py.File(tmp_path / n / "FAZ_h5/Domain1/train/d1_train_000.h5", "r")["image"][()] for n in "abc"}
    assert np.array_equal(read["a"], read["b"])
    assert not np.array_equal(read["a"], read["c"])


def test_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing_write(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")

    monkeypatch.setattr(syn, "_write_h5", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        syn.generate(tmp_path, "faz", 2, 2, 1, 32, "both", 0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs,match", [({"task": "ct"}, "task must be one of"), ({"n_train": 0}, "n_train must be"),
                                          ({"layout": "nifti"}, "layout must be one of")])
def test_generate_rejects_bad_options(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        syn.generate(tmp_path, **kwargs)


def test_monai_pil_reader_reads_the_png_tree(out):
    from monai.transforms import LoadImage

    load = LoadImage(reader="PILReader", image_only=True, reverse_indexing=False)
    for task_root, h5_root in (("FAZ", "FAZ_h5"), ("ODOC", "ODOC_h5")):
        png = out / task_root / "Domain1" / "train"
        with h5py.File(out / h5_root / "Domain1" / "train" / "d1_train_000.h5", "r") as f:
            image, scribble = f["image"][()], f["scribble"][()]
        got = np.asarray(load(png / "imgs" / "d1_train_000.png"))
        expected = np.round(image * 255)
        assert np.array_equal(got, expected.transpose(1, 2, 0) if image.ndim == 3 else expected)
        assert np.array_equal(np.asarray(load(png / "scr" / "d1_train_000.png")), scribble)
