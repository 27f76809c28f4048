"""Synthetic six-site prostate T2 MRI in the real SAML / IOP-FL raw layout.

Writes ``<out>/<SITE>/CaseXX.nii.gz`` + ``CaseXX_segmentation.nii.gz`` for the sites BIDMC, HK, I2CVB, ISBI,
ISBI_1.5 and UCL, with the file-name case varying by site as in the real collection (``Case00_Segmentation``,
``case00_segmentation`` ...). Case ids are the real ids of each site (lowest first), so a full-size synthetic
set reproduces the reference split lists.

Every site has its own scanner profile (gain/offset, gland contrast sign and strength, noise, bias field,
in-plane resolution, slice count) and anatomy (gland size and position, a dark rectum, a bladder, and a
site-specific annotation margin), so that one global model fits some sites worse than a personalised model
does and a held-out site is out of distribution.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from data_prep.common import atomic_dir, progress
from data_prep.multisite_prostate import REFERENCE_SPLITS

__all__ = ["SITES", "SiteProfile", "PROFILES", "synth_volume", "generate", "raw_file_names"]

SITES = ("BIDMC", "HK", "I2CVB", "ISBI", "ISBI_1.5", "UCL")

#: the real collection's case ids per site (sorted); synthetic sites use the first ``n_cases`` of them
REAL_CASE_IDS = {
    site: sorted(f"Case{i:02d}" for part in parts for i in part) for site, parts in REFERENCE_SPLITS.items()
}


@dataclass(frozen=True)
class SiteProfile:
    """Acquisition and anatomy of one simulated site.

    Args:
        gain, offset: linear intensity mapping of the scanner.
        gland: gland intensity relative to soft tissue (negative: the gland is darker than its surroundings).
        noise: Gaussian noise std relative to soft tissue intensity.
        bias: amplitude of the smooth multiplicative bias field.
        size: in-plane matrix (pixels); the field of view is fixed, so this is the resolution.
        slices: number of axial slices.
        radius: mean gland semi-axis as a fraction of the field of view.
        margin: annotation margin in pixels (annotators at this site draw the boundary wider (>0) or tighter (<0)).
        name_style: how file names are capitalised at this site.
    """

    gain: float
    offset: float
    gland: float
    noise: float
    bias: float
    size: int
    slices: int
    radius: float
    margin: int
    name_style: str


PROFILES = {
    "BIDMC": SiteProfile(1.0, 0.0, 0.55, 0.10, 0.15, 64, 14, 0.17, 0, "Case{id}|Case{id}_segmentation"),
    "HK": SiteProfile(1.7, 40.0, 0.35, 0.20, 0.30, 56, 12, 0.15, 1, "Case{id}|Case{id}_segmentation"),
    "I2CVB": SiteProfile(0.6, -5.0, 0.80, 0.06, 0.10, 72, 16, 0.20, 0, "Case{id}|Case{id}_segmentation"),
    "ISBI": SiteProfile(1.2, 20.0, -0.45, 0.12, 0.40, 64, 14, 0.16, 0, "Case{id}|Case{id}_Segmentation"),
    "ISBI_1.5": SiteProfile(0.9, 10.0, 0.30, 0.25, 0.20, 60, 12, 0.18, -1, "case{id}|case{id}_segmentation"),
    "UCL": SiteProfile(1.4, 0.0, 0.65, 0.08, 0.50, 68, 15, 0.19, 1, "Case{id}|Case{id}_Segmentation"),
}


def raw_file_names(site: str, case_id: str) -> tuple[str, str]:
    """(image, segmentation) file names of ``case_id`` (``CaseXX``) at ``site`` in that site's capitalisation."""
    number = case_id[4:]
    image, seg = PROFILES[site].name_style.split("|")
    return f"{image.format(id=number)}.nii.gz", f"{seg.format(id=number)}.nii.gz"


def synth_volume(rng: np.random.Generator, profile: SiteProfile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case: (image[X,Y,Z] float32, label[X,Y,Z] uint8 in {0,1}, affine)."""
    n, s = profile.size, profile.slices
    fov = 160.0  # mm, fixed: the matrix size sets the resolution
    spacing = fov / n
    axis = (np.arange(n) - (n - 1) / 2) / n  # in-plane coordinate in field-of-view units, [-0.5, 0.5]
    zax = (np.arange(s) - (s - 1) / 2) / s
    x, y, z = np.meshgrid(axis, axis, zax, indexing="ij")
    cx, cy = rng.normal(0, 0.03, 2)
    ax = profile.radius * rng.uniform(0.85, 1.15)
    ay = ax * rng.uniform(0.7, 0.95)
    az = rng.uniform(0.25, 0.35)
    r = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + (z / az) ** 2
    # a lobulated boundary: gland shapes vary between patients
    theta = np.arctan2(y - cy, x - cx)
    lobes = 1.0 + 0.08 * np.sin(2 * theta + rng.uniform(0, np.pi)) + 0.05 * np.sin(3 * theta + rng.uniform(0, np.pi))
    gland = r < lobes
    body = (x / 0.46) ** 2 + (y / 0.40) ** 2 < 1.0
    rectum = ((x - cx) / 0.07) ** 2 + ((y - cy - ay - 0.09) / 0.06) ** 2 < 1.0
    bladder = (((x - cx) / 0.16) ** 2 + ((y - cy + ay + 0.10) / 0.09) ** 2 < 1.0) & (z > 0)

    tissue = 200.0
    image = np.where(body, tissue, 10.0)
    image = image + np.where(gland, profile.gland * tissue, 0.0)
    image = np.where(rectum, 0.25 * tissue, image)
    image = np.where(bladder, 1.9 * tissue, image)
    bias = 1.0 + profile.bias * np.sin(3 * x + rng.uniform(0, 6)) * np.cos(3 * y + rng.uniform(0, 6))
    image = image * bias + rng.normal(0.0, profile.noise * tissue, image.shape)
    image = np.clip(profile.gain * image + profile.offset, 0.0, None).astype(np.float32)

    label = gland
    if profile.margin:
        from scipy.ndimage import binary_dilation, binary_erosion

        structure = np.ones((3, 3, 1), bool)
        grow = binary_dilation if profile.margin > 0 else binary_erosion
        label = grow(label, structure, iterations=abs(profile.margin))
    affine = np.diag([spacing, spacing, 3.0, 1.0])
    return image, label.astype(np.uint8), affine


def generate(out_dir: str | Path, n_cases: int = 6, seed: int = 0, sites: tuple[str, ...] = SITES) -> Path:
    """Write the synthetic sites under ``out_dir`` (atomically) and return it.

    Args:
        out_dir: receives one folder per site.
        n_cases: cases per site (at most the real site's count; 3 is the minimum a train/val/test split needs).
        seed: every site draws from its own stream derived from this seed.
        sites: which of :data:`SITES` to write.
    """
    unknown = sorted(set(sites) - set(SITES))
    if unknown:
        raise ValueError(f"sites must be among {SITES}, got {unknown}")
    if n_cases < 3:
        raise ValueError(f"n_cases must be >= 3 (train/val/test), got {n_cases!r}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, owner="data_prep.multisite_prostate generate", marker_beside=True) as tmp:
        for k, site in enumerate(sites):
            ids = REAL_CASE_IDS[site][: min(n_cases, len(REAL_CASE_IDS[site]))]
            rng = np.random.default_rng([seed, k])
            (tmp / site).mkdir()
            for case_id in progress(ids, f"synthetic {site}"):
                image, label, affine = synth_volume(rng, PROFILES[site])
                image_name, seg_name = raw_file_names(site, case_id)
                nib.save(nib.Nifti1Image(image, affine), tmp / site / image_name)
                nib.save(nib.Nifti1Image(label, affine), tmp / site / seg_name)
    return out_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/raw/multisite_prostate", help="(default: %(default)s)")
    p.add_argument("--n-cases", type=int, default=6, help="cases per site (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(f"wrote {generate(a.out, a.n_cases, a.seed)}")
    return 0
