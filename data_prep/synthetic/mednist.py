"""Synthetic MedNIST in the real layout: ``MedNIST/<Class>/<NNNNNN>.jpeg``, 64x64 grey JPEG, six classes.

Each class has its own anatomy-like template (body outline, lungs, skull, fingers, ...), randomly scaled, shifted,
rotated, contrast-jittered, blurred and noised, so the classes are separable but not trivially (a linear
classifier on pixels does not solve it, DenseNet121 does within a few epochs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from data_prep.common import atomic_dir, progress

CLASSES = ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT")
SIZE = 64


def _ellipse(x, y, cx, cy, ax, ay):
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 < 1.0


def _template(name: str, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    j = lambda s: rng.uniform(1 - s, 1 + s)  # noqa: E731
    img = np.zeros((SIZE, SIZE), np.float32)
    if name == "AbdomenCT":
        img[_ellipse(x, y, 32, 33, 27 * j(0.1), 21 * j(0.1))] = 0.45
        for _ in range(3):
            img[_ellipse(x, y, rng.uniform(18, 46), rng.uniform(22, 44), rng.uniform(4, 8), rng.uniform(4, 8))] = 0.7
        img[_ellipse(x, y, 32, 46, 4, 4)] = 0.95  # vertebra
    elif name == "BreastMRI":
        img[y < 22 * j(0.1)] = 0.25
        for cx in (19, 45):
            img[_ellipse(x, y, cx * j(0.05), 30, 13 * j(0.1), 20 * j(0.1)) & (y > 20)] = 0.75
    elif name == "CXR":
        img[_ellipse(x, y, 32, 34, 29, 30 * j(0.05))] = 0.75
        for cx in (20, 44):
            img[_ellipse(x, y, cx * j(0.05), 30, 9 * j(0.1), 19 * j(0.1))] = 0.2
        img[(abs(x - 32) < 3) & (y > 8)] = 0.9
    elif name == "ChestCT":
        img[_ellipse(x, y, 32, 33, 28 * j(0.08), 22 * j(0.08))] = 0.5
        for cx in (21, 43):
            img[_ellipse(x, y, cx, 31, 9 * j(0.1), 12 * j(0.1))] = 0.08
        img[_ellipse(x, y, 32, 48, 3.5, 3.5)] = 0.95
    elif name == "Hand":
        img[_ellipse(x, y, 32, 46, 13 * j(0.1), 12 * j(0.1))] = 0.8
        for k, angle in enumerate(np.linspace(-0.7, 0.5, 4) + rng.normal(0, 0.05, 4)):
            length = (24 if k in (1, 2) else 19) * j(0.1)
            t = (x - 32) * np.sin(angle) - (y - 40) * np.cos(angle)
            d = (x - 32) * np.cos(angle) + (y - 40) * np.sin(angle)
            img[(t > 0) & (t < length) & (abs(d) < 2.8)] = 0.8
        img[_ellipse(x, y, 46, 42, 10, 3.2)] = 0.8  # thumb
    elif name == "HeadCT":
        outer = _ellipse(x, y, 32, 32, 25 * j(0.08), 28 * j(0.08))
        inner = _ellipse(x, y, 32, 32, 21.5 * j(0.05), 24.5 * j(0.05))
        img[outer] = 0.95
        img[inner] = 0.4
        img[_ellipse(x, y, rng.uniform(26, 38), rng.uniform(26, 38), 4, 6) & inner] = 0.55
    else:
        raise ValueError(f"unknown MedNIST class {name!r}; expected one of {CLASSES}")
    return img


def synth_image(name: str, rng: np.random.Generator) -> Image.Image:
    img = Image.fromarray((_template(name, rng) * 255).astype(np.uint8))
    img = img.rotate(rng.uniform(-15, 15), translate=tuple(rng.integers(-4, 5, 2)), resample=Image.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    arr = np.asarray(img, np.float32) * rng.uniform(0.6, 1.2) + rng.uniform(-20, 30)
    arr += rng.normal(0, rng.uniform(8, 25), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def generate(out_dir: str | Path, per_class: int = 60, seed: int = 0) -> Path:
    """Write ``out_dir/MedNIST/<Class>/<NNNNNN>.jpeg`` (atomically) and return the MedNIST folder."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    target = Path(out_dir) / "MedNIST"
    with atomic_dir(target, owner="data_prep.mednist generate", marker_beside=True) as tmp:
        for name in progress(CLASSES, "synthetic MedNIST classes"):
            (tmp / name).mkdir()
            for i in range(per_class):
                synth_image(name, rng).save(tmp / name / f"{i:06d}.jpeg", quality=95)
    return target
