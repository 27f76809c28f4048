"""Tiny converted FedMRI data (the converter's output layout) written directly: seconds, not minutes."""

import json

import h5py
import numpy as np
import pytest

SIZE = 32


def _phantom(rng: np.random.Generator, size: int = SIZE, gamma: float = 1.0) -> np.ndarray:
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    image = np.zeros((size, size))
    for k in range(int(rng.integers(3, 6))):
        cy, cx = rng.uniform(-0.4, 0.4, size=2) * (0.2 if k == 0 else 1.0)
        ay, ax = rng.uniform(0.6, 0.8, size=2) if k == 0 else rng.uniform(0.1, 0.3, size=2)
        image[((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1] += rng.uniform(0.2, 0.6)
    return (image / max(image.max(), 1e-8)) ** gamma


def _fft2c(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def write_converted(root, sites=("site-1", "site-2"), volumes=3, slices=2, size=SIZE, seed=0):
    """``root/data/<site>/<vol>.h5`` (kspace, target) and ``root/datalists/<site>.json`` (one volume per split)."""
    data, datalists = root / "data", root / "datalists"
    datalists.mkdir(parents=True, exist_ok=True)
    for s, site in enumerate(sites):
        rng = np.random.default_rng([seed, s])
        (data / site).mkdir(parents=True, exist_ok=True)
        splits = {"training": [], "validation": [], "testing": []}
        for v in range(volumes):
            volume = f"{site}_vol{v}"
            target = np.stack([_phantom(rng, size, 1.0 + 0.3 * s) for _ in range(slices)]).astype(np.float32)
            with h5py.File(data / site / f"{volume}.h5", "w") as f:
                f.create_dataset("kspace", data=_fft2c(target).astype(np.complex64))
                f.create_dataset("target", data=target)
            split = "training" if v < volumes - 2 else ("validation" if v == volumes - 2 else "testing")
            splits[split] += [{"image": f"{site}/{volume}.h5", "slice": i, "volume": volume,
                               "source_type": "brats_nifti_simulated"} for i in range(slices)]
        (datalists / f"{site}.json").write_text(json.dumps(splits))
    return {"data": data, "datalists": datalists}


@pytest.fixture()
def tiny_mri(tmp_path):
    return write_converted(tmp_path / "mri_data", volumes=4, slices=2)
