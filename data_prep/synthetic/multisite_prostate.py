"""Synthetic six-site prostate T2 MRI in the real SAML / IOP-FL raw layout and geometry.

Writes ``<out>/<SITE>/CaseXX.nii.gz`` + ``CaseXX_segmentation.nii.gz`` (int16 image, uint8 label, 384 x 384
in-plane as the real collection) for BIDMC, HK, I2CVB, ISBI, ISBI_1.5 and UCL. Case ids are each site's real ids
(lowest first), so a full-size set reproduces the reference split lists.

Each site's shift stands for a real acquisition difference (see ``docs/data_multisite_prostate.md``): field
strength (1.5 T: lower SNR, lower contrast), endorectal coil (a strong near-field bias peaking at the rectum),
in-plane spacing and slice thickness (gland size in pixels, through-plane partial volume), intensity scale,
smooth bias field, gland size (population) and annotation style (margin, contour smoothing, apex/base slices).
``shift_strength`` scales every shift from 0 (all six sites draw from one neutral profile) upward. Within a
site, every case draws its own gland shape, position and size, zonal texture, surrounding tissue texture and
per-exam intensity scale, and the edges carry partial-volume blur in-plane and through-plane. No site inverts
the gland contrast: no real T2 scanner does.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter, zoom

from data_prep.common import atomic_dir, progress
from data_prep.multisite_prostate import REFERENCE_SPLITS

__all__ = [
    "SITES", "MATRIX", "SiteProfile", "NEUTRAL", "PROFILES", "site_profile", "synth_volume", "generate",
    "raw_file_names",
]

SITES = ("BIDMC", "HK", "I2CVB", "ISBI", "ISBI_1.5", "UCL")
#: in-plane matrix of every real volume (the reference's preprocessing asserts 384 x 384)
MATRIX = 384

#: the real collection's case ids per site (sorted); synthetic sites use the first ``n_cases`` of them
REAL_CASE_IDS = {
    site: sorted(f"Case{i:02d}" for part in parts for i in part) for site, parts in REFERENCE_SPLITS.items()
}


@dataclass(frozen=True)
class SiteProfile:
    """Acquisition, population and annotation of one simulated site (all shifts are relative to :data:`NEUTRAL`).

    Args:
        field_t: field strength in tesla; sets SNR (noise ~ 1/B) and T2 contrast (a little higher at 3 T).
        erc: endorectal-coil near-field gain at the rectal wall (0 = no coil; 2 = three times the signal there),
            decaying with distance; the coil also lowers noise near it.
        erc_decay_mm: decay length of that gain.
        spacing_mm: in-plane pixel spacing of the stored 384 x 384 image (field of view = 384 * spacing).
        blur_px: in-plane point-spread blur (native resolution coarser than the stored grid), pixels.
        slice_mm: slice thickness = spacing (through-plane partial volume and the number of gland slices).
        scale: intensity of soft tissue in scanner units (no absolute unit in MR: vendors and protocols differ).
        noise: Rician noise std relative to soft tissue at 1.5 T without coil.
        bias: amplitude of the smooth multiplicative body-coil bias field.
        gland_mm: mean gland semi-axis (left-right) in mm; populations differ (age, BPH prevalence).
        margin_mm: annotation margin (> 0 annotators draw outside the capsule, < 0 inside).
        smooth: how much of the lobulated boundary the annotator follows (0 = every lobe, 1 = a smooth ellipse).
        trim: apex/base slices left unlabelled at each end (annotators disagree most there).
    """

    field_t: float
    erc: float
    erc_decay_mm: float
    spacing_mm: float
    blur_px: float
    slice_mm: float
    scale: float
    noise: float
    bias: float
    gland_mm: float
    margin_mm: float
    smooth: float
    trim: int


#: the profile every site shares at ``shift_strength=0``
NEUTRAL = SiteProfile(2.25, 0.0, 25.0, 0.5, 0.5, 3.0, 400.0, 0.10, 0.15, 22.0, 0.0, 0.3, 0)

#: per site: what its real counterpart differs in (Liu et al., MS-Net/SAML site table; see the data doc)
PROFILES = {
    # PROMISE12 BIDMC: 3 T with endorectal coil, fine in-plane spacing (small FOV), 2.2-3 mm slices
    "BIDMC": SiteProfile(3.0, 2.0, 20.0, 0.30, 0.9, 2.6, 1200.0, 0.10, 0.10, 21.0, 0.5, 0.2, 0),
    # PROMISE12 HK: 1.5 T with endorectal coil, 0.625 mm, 3.6 mm slices
    "HK": SiteProfile(1.5, 1.6, 25.0, 0.625, 0.5, 3.6, 250.0, 0.10, 0.20, 22.0, 0.0, 0.5, 1),
    # I2CVB (HCRUDB): 3 T, no coil, ~0.7 mm, thin 1.25 mm slices; older population, larger glands
    "I2CVB": SiteProfile(3.0, 0.0, 25.0, 0.70, 0.5, 1.25, 900.0, 0.10, 0.25, 25.0, 0.0, 0.2, 2),
    # NCI-ISBI 2013 RUNMC: 3 T, surface coil only, 0.6 mm, 3.6-4 mm slices
    "ISBI": SiteProfile(3.0, 0.0, 25.0, 0.60, 0.4, 3.8, 600.0, 0.10, 0.20, 23.0, 0.0, 0.1, 0),
    # NCI-ISBI 2013 BMC: 1.5 T with endorectal coil, 0.4 mm, 3 mm slices
    "ISBI_1.5": SiteProfile(1.5, 2.4, 18.0, 0.40, 0.8, 3.0, 300.0, 0.10, 0.10, 21.0, -0.5, 0.4, 0),
    # PROMISE12 UCL: 1.5 and 3 T (here 1.5 T), no coil, 0.325-0.625 mm, 3-3.6 mm slices; generous outlines
    "UCL": SiteProfile(1.5, 0.0, 25.0, 0.45, 0.7, 3.3, 350.0, 0.10, 0.30, 20.0, 1.0, 0.7, 1),
}


def site_profile(site: str, shift_strength: float = 1.0) -> SiteProfile:
    """``NEUTRAL + shift_strength * (PROFILES[site] - NEUTRAL)``, field by field (integers rounded, values clipped).

    Multiplicative quantities (spacing, scale, field strength) interpolate in log space, so 0 gives the neutral
    site and 2 exaggerates every shift.
    """
    if site not in PROFILES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    if shift_strength < 0:
        raise ValueError(f"shift_strength must be >= 0, got {shift_strength!r}")
    target, s = PROFILES[site], float(shift_strength)
    values = {}
    for f in fields(SiteProfile):
        a, b = getattr(NEUTRAL, f.name), getattr(target, f.name)
        if f.name in ("field_t", "spacing_mm", "slice_mm", "scale", "gland_mm", "erc_decay_mm"):
            v = float(a ** (1 - s) * b**s)  # exact at s = 0 and s = 1
        else:
            v = (1 - s) * a + s * b
        if f.name == "trim":
            v = int(round(v))
        elif f.name in ("erc", "bias", "noise", "blur_px"):
            v = max(0.0, v)
        elif f.name == "smooth":
            v = float(np.clip(v, 0.0, 1.0))
        values[f.name] = v
    return replace(target, **values)


def raw_file_names(site: str, case_id: str) -> tuple[str, str]:
    """(image, segmentation) file names of ``case_id`` (``CaseXX``) at ``site``: ``CaseXX.nii.gz``,
    ``CaseXX_segmentation.nii.gz`` (see the data doc for what this follows)."""
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    if not (case_id.startswith("Case") and case_id[4:].isdigit()):
        raise ValueError(f"case_id must look like 'Case07', got {case_id!r}")
    return f"{case_id}.nii.gz", f"{case_id}_segmentation.nii.gz"


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-std smooth random texture: a coarse random grid upsampled (cheap at 384 x 384)."""
    coarse = rng.standard_normal((cells, cells, max(2, shape[2] // 3 + 1))).astype(np.float32)
    field = zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=1, grid_mode=True, mode="nearest")
    field = field[: shape[0], : shape[1], : shape[2]]
    return (field - field.mean()) / (field.std() + 1e-6)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def synth_volume(
    rng: np.random.Generator, profile: SiteProfile, matrix: int = MATRIX
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case: (image[X,Y,Z] int16, label[X,Y,Z] uint8 in {0,1}, affine) on a ``matrix`` x ``matrix`` grid.

    Geometry is in mm, so a smaller ``matrix`` (tests) keeps the anatomy and only coarsens the pixels
    (spacing scaled by ``MATRIX / matrix``).
    """
    spacing = profile.spacing_mm * MATRIX / matrix
    # patient anatomy (mm): gland semi-axes, position, shape; varies case to case within a site
    size = profile.gland_mm * float(np.exp(rng.normal(0.0, 0.15)))
    ax, ay, az = size, size * rng.uniform(0.70, 0.90), size * rng.uniform(0.80, 1.05)
    cx, cy = rng.normal(0.0, 4.0, 2)
    extent = 2 * az + 2 * rng.uniform(8.0, 16.0)  # gland plus a margin above and below (mm)
    n_slices = max(5, int(round(extent / profile.slice_mm)))
    xs = (np.arange(matrix, dtype=np.float32) - (matrix - 1) / 2) * spacing
    zs = (np.arange(n_slices, dtype=np.float32) - (n_slices - 1) / 2) * profile.slice_mm + rng.normal(0, 2.0)
    x, y = np.meshgrid(xs, xs, indexing="ij")
    x, y = x[..., None], y[..., None]
    theta = np.arctan2(y - cy, x - cx)
    phases = rng.uniform(0, 2 * np.pi, 3)
    amps = rng.uniform(0.03, 0.10, 3)
    lobes = sum(a * np.sin(k * theta + p) for a, p, k in zip(amps, phases, (2, 3, 5)))
    inplane = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2

    def radius(z: np.ndarray, lobe_scale: float = 1.0) -> np.ndarray:
        return np.sqrt(inplane + (z / az) ** 2) - lobe_scale * lobes  # < 1 inside the gland

    # partial volume through the slice: the gland occupancy averaged over three depths of the slab
    edge = 0.6 / size  # edge width of the occupancy in radius units (about 0.6 mm)
    gland = sum(_sigmoid((1.0 - radius(zs + d * profile.slice_mm)) / edge) for d in (-1 / 3, 0.0, 1 / 3)) / 3.0
    tz = _sigmoid((0.62 - np.sqrt(((x - cx) / ax) ** 2 + ((y - cy + 0.15 * ay) / (0.8 * ay)) ** 2
                                   + (zs / az) ** 2)) / 0.05)
    shape3 = gland.shape
    # tissue (relative T2 signal): muscle/soft tissue 1, fat brighter and textured, gland in between with a
    # bright peripheral zone and a nodular transition zone, rectum dark, bladder (urine) very bright
    body = _sigmoid((1.0 - np.sqrt((x / 150.0) ** 2 + (y / 115.0) ** 2)) / 0.02)
    fat = _sigmoid((np.sqrt(((x - cx) / (ax + 18)) ** 2 + ((y - cy) / (ay + 14)) ** 2) - 1.0) / 0.08)
    texture = _smooth_field(rng, shape3, 24)
    contrast = 0.9 + 0.1 * (profile.field_t - 1.5) / 1.5  # T2 contrast a little higher at 3 T
    tissue = 1.0 + 0.35 * fat * contrast + 0.08 * texture
    pz = 1.0 + 0.55 * contrast + 0.10 * texture
    tz_signal = 1.0 + 0.20 * contrast + 0.18 * _smooth_field(rng, shape3, 48)
    gland_signal = tz * tz_signal + (1 - tz) * pz
    image = tissue * (1 - gland) + gland_signal * gland
    rx, ry = cx + rng.normal(0, 2.0), cy + ay + rng.uniform(6.0, 10.0)  # rectum just behind the gland
    rectum = _sigmoid((1.0 - np.sqrt(((x - rx) / 14.0) ** 2 + ((y - ry) / 10.0) ** 2)) / 0.06)
    image = image * (1 - rectum) + 0.25 * rectum
    by = cy - ay - rng.uniform(10.0, 25.0)
    bladder = _sigmoid((1.0 - np.sqrt(((x - cx) / 35.0) ** 2 + ((y - by) / 20.0) ** 2)) / 0.05)
    bladder = bladder * (zs > az * rng.uniform(0.0, 0.6))
    image = image * (1 - bladder) + 2.6 * bladder
    image = image * (0.05 + 0.95 * body)
    # receive chain: body-coil bias, endorectal near field, resolution, Rician noise, exam-specific scale
    bias = 1.0 + profile.bias * np.sin(x / 90.0 + rng.uniform(0, 6)) * np.cos(y / 110.0 + rng.uniform(0, 6))
    dist = np.sqrt((x - rx) ** 2 + (y - ry) ** 2)
    near = np.exp(-np.maximum(dist - 8.0, 0.0) / profile.erc_decay_mm)
    gain = bias * (1.0 + profile.erc * near)
    image = image * gain
    if profile.blur_px > 0:
        image = gaussian_filter(image, (profile.blur_px, profile.blur_px, 0), mode="nearest")
    sigma = profile.noise * 1.5 / profile.field_t / np.sqrt(1.0 + 0.5 * profile.erc * near)
    real = image + sigma * rng.standard_normal(shape3, dtype=np.float32)
    imag = sigma * rng.standard_normal(shape3, dtype=np.float32)
    magnitude = np.sqrt(real * real + imag * imag)
    exam_scale = profile.scale * float(np.exp(rng.normal(0.0, 0.1)))
    image = np.clip(magnitude * exam_scale, 0, np.iinfo(np.int16).max).astype(np.int16)

    # the annotation: the capsule as this site's annotators draw it (margin, smoothing, apex/base)
    r_label = radius(zs, lobe_scale=1.0 - profile.smooth)
    label = r_label < 1.0 + profile.margin_mm / size
    present = np.flatnonzero(label.any(axis=(0, 1)))
    if profile.trim and len(present) > 2 * profile.trim + 1:
        label[..., present[: profile.trim]] = False
        label[..., present[len(present) - profile.trim:]] = False
    affine = np.diag([spacing, spacing, profile.slice_mm, 1.0])
    return image, label.astype(np.uint8), affine


def generate(
    out_dir: str | Path,
    n_cases: int | Mapping[str, int] = 6,
    seed: int = 0,
    sites: tuple[str, ...] = SITES,
    shift_strength: float = 1.0,
    matrix: int = MATRIX,
) -> Path:
    """Write the synthetic sites under ``out_dir`` (atomically) and return it.

    Args:
        out_dir: receives one folder per site.
        n_cases: cases per site, one number or ``{site: number}`` (at most the real site's count; >= 3).
        seed: every site draws from its own stream derived from this seed.
        sites: which of :data:`SITES` to write.
        shift_strength: 0 = identical sites, 1 = the documented site shifts, > 1 exaggerated.
        matrix: in-plane size; the real 384 by default (smaller only to keep tests fast).
    """
    unknown = sorted(set(sites) - set(SITES))
    if unknown:
        raise ValueError(f"sites must be among {SITES}, got {unknown}")
    counts = {s: (n_cases[s] if isinstance(n_cases, Mapping) else n_cases) for s in sites}
    for site, n in counts.items():
        if n < 3:
            raise ValueError(f"n_cases must be >= 3 (train/val/test), got {n!r} for site {site!r}")
    if matrix < 16:
        raise ValueError(f"matrix must be >= 16, got {matrix!r}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, owner="data_prep.multisite_prostate generate", marker_beside=True) as tmp:
        for site in sites:
            ids = REAL_CASE_IDS[site][: min(counts[site], len(REAL_CASE_IDS[site]))]
            rng = np.random.default_rng([seed, SITES.index(site)])
            profile = site_profile(site, shift_strength)
            (tmp / site).mkdir()
            for case_id in progress(ids, f"synthetic {site}"):
                image, label, affine = synth_volume(rng, profile, matrix)
                image_name, seg_name = raw_file_names(site, case_id)
                nib.save(nib.Nifti1Image(image, affine), tmp / site / image_name)
                nib.save(nib.Nifti1Image(label, affine), tmp / site / seg_name)
    return out_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/raw/multisite_prostate", help="(default: %(default)s)")
    p.add_argument("--n-cases", type=int, default=6, help="cases per site (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shift-strength", type=float, default=1.0, help="0 = identical sites (default: %(default)s)")
    a = p.parse_args(argv)
    print(f"wrote {generate(a.out, a.n_cases, a.seed, shift_strength=a.shift_strength)}")
    return 0
