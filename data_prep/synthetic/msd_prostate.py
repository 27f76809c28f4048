"""Synthetic MSD ``Task05_Prostate`` in the real release's layout.

Writes ``Task05_Prostate/dataset.json``, ``imagesTr/prostate_XX.nii.gz`` (4-D, channels T2 and ADC),
``labelsTr/prostate_XX.nii.gz`` (0 background, 1 peripheral zone, 2 transition zone) and ``imagesTs/``.
Cases are generated in consecutive blocks, one block per simulated scanner, so that the converter's
``contiguous`` site split gives every site its own acquisition profile (intensity gain/offset, contrast,
noise, bias field, in-plane resolution, slice count) as on real multi-site data.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from data_prep.common import atomic_dir, progress

MODALITIES = {"0": "T2", "1": "ADC"}
LABELS = {"0": "background", "1": "PZ", "2": "TZ"}


@dataclass(frozen=True)
class ScannerProfile:
    """Acquisition differences between sites."""

    gain: float
    offset: float
    contrast: float  # gland-vs-tissue contrast multiplier
    noise: float  # noise std relative to tissue intensity
    bias: float  # amplitude of the smooth multiplicative bias field
    spacing: tuple[float, float, float]  # mm (x, y, z)


PROFILES = (
    ScannerProfile(gain=1.00, offset=0.0, contrast=1.00, noise=0.06, bias=0.15, spacing=(1.50, 1.50, 3.0)),
    ScannerProfile(gain=1.60, offset=40.0, contrast=0.70, noise=0.10, bias=0.30, spacing=(1.25, 1.25, 3.6)),
    ScannerProfile(gain=0.55, offset=-10.0, contrast=1.35, noise=0.04, bias=0.10, spacing=(1.75, 1.75, 3.0)),
    ScannerProfile(gain=1.20, offset=20.0, contrast=0.85, noise=0.14, bias=0.25, spacing=(1.40, 1.40, 4.0)),
)

FOV_MM = (96.0, 96.0, 54.0)


def _grid(shape, spacing):
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij")


def synth_case(rng: np.random.Generator, profile: ScannerProfile, scale: float = 1.0):
    """One case: (image[X,Y,Z,2] float32, label[X,Y,Z] uint8, affine)."""
    shape = tuple(max(8, int(round(f * scale / s))) for f, s in zip(FOV_MM, profile.spacing))
    x, y, z = _grid(shape, profile.spacing)
    cx, cy, cz = rng.normal(0, 4, 3)
    ax, ay, az = rng.uniform(17, 24), rng.uniform(13, 18), rng.uniform(13, 19)
    r = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2
    gland = r < 1.0
    # transition zone: central, anterior ellipsoid; peripheral zone: posterior rim of the gland
    tz = (((x - cx) / (0.62 * ax)) ** 2 + ((y - cy + 0.25 * ay) / (0.62 * ay)) ** 2 + ((z - cz) / (0.8 * az)) ** 2) < 1
    label = np.zeros(shape, np.uint8)
    label[gland] = 1
    label[gland & tz] = 2

    body = ((x / 44) ** 2 + (y / 40) ** 2) < 1.0
    t2 = np.where(body, 250.0, 15.0)
    t2 += np.where(label == 1, 170.0, 0.0) * profile.contrast  # PZ bright on T2
    t2 += np.where(label == 2, 60.0, 0.0) * profile.contrast
    adc = np.where(body, 120.0, 5.0) + np.where(label == 1, 140.0, 0.0) + np.where(label == 2, 60.0, 0.0)
    bias = 1.0 + profile.bias * np.sin(x / 30 + rng.uniform(0, 6)) * np.cos(y / 35 + rng.uniform(0, 6))
    channels = []
    for base in (t2, adc):
        img = base * bias
        img = img + rng.normal(0, profile.noise * 250.0, shape)
        channels.append(np.clip(profile.gain * img + profile.offset, 0, None))
    image = np.stack(channels, axis=-1).astype(np.float32)
    affine = np.diag([*profile.spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape, profile.spacing)]
    return image, label, affine


def generate(
    out_dir: str | Path, n_train: int = 12, n_test: int = 2, n_scanners: int = 3, seed: int = 0, scale: float = 1.0
) -> Path:
    """Write a synthetic ``Task05_Prostate`` folder under ``out_dir`` (atomically) and return its path."""
    if not 1 <= n_scanners <= len(PROFILES):
        raise ValueError(f"n_scanners must be in 1..{len(PROFILES)}, got {n_scanners}")
    if n_train < n_scanners:
        raise ValueError(f"n_train ({n_train}) must be at least n_scanners ({n_scanners})")
    target = Path(out_dir) / "Task05_Prostate"
    rng = np.random.default_rng(seed)
    with atomic_dir(target, owner="data_prep.msd_prostate generate", marker_beside=True) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        training, test = [], []
        for i in progress(range(n_train + n_test), "synthetic prostate cases"):
            scanner = min(i * n_scanners // n_train, n_scanners - 1) if i < n_train else i % n_scanners
            profile = PROFILES[scanner]
            image, label, affine = synth_case(rng, profile, scale)
            name = f"prostate_{i:02d}.nii.gz"
            if i < n_train:
                nib.save(nib.Nifti1Image(image, affine), tmp / "imagesTr" / name)
                nib.save(nib.Nifti1Image(label, affine), tmp / "labelsTr" / name)
                training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
            else:
                nib.save(nib.Nifti1Image(image, affine), tmp / "imagesTs" / name)
                test.append(f"./imagesTs/{name}")
        meta = {
            "name": "PROSTATE",
            "description": "Synthetic prostate transitional and peripheral zone segmentation (MSD Task05 layout)",
            "reference": "synthetic (data_prep.synthetic.msd_prostate)",
            "licence": "CC-BY-SA 4.0",
            "tensorImageSize": "4D",
            "modality": MODALITIES,
            "labels": LABELS,
            "numTraining": n_train,
            "numTest": n_test,
            "training": training,
            "test": test,
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=4))
    return target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/raw", help="folder that receives Task05_Prostate/ (default: %(default)s)")
    p.add_argument("--n-train", type=int, default=12)
    p.add_argument("--n-test", type=int, default=2)
    p.add_argument("--n-scanners", type=int, default=3)
    p.add_argument("--scale", type=float, default=1.0, help="field-of-view scale (1.0 gives ~64x64x18 voxels)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    path = generate(a.out, a.n_train, a.n_test, a.n_scanners, a.seed, a.scale)
    print(f"wrote {path}")
    return 0
