"""Synthetic FedMRI sites written in the real public raw layouts (fastMRI h5, BraTS 2019 NIfTI).

FedMRI (Feng et al., IEEE TMI 2022) trains four reconstruction clients: fastMRI brain, BraTS 2019, and two
private scanners (SMS, uMR). No real data is available here, so each site is a brain-like phantom (scalp,
skull, CSF with ventricles, grey and white matter, a tumour with oedema, enhancing rim and necrosis) with
its own contrast, matrix size, noise level and field of view, written in one of three public layouts:

* ``fastmri_multicoil`` - fastMRI brain multi-coil training file: ``kspace`` complex64 ``[slices, coils, 2N, N]``
  (readout oversampled twice), ``reconstruction_rss`` float32 ``[slices, N, N]`` (RSS of the coil images,
  centre-cropped), ``ismrmrd_header`` (ISMRMRD XML) and the attributes ``acquisition``, ``max``, ``norm``,
  ``patient_id``. File names ``multicoil_train/file_brain_<ACQ>_<system>_<id>.h5``.
* ``fastmri_singlecoil`` - fastMRI single-coil training file: ``kspace`` complex64 ``[slices, 2N, W]`` (emulated
  single-coil, W > N, zero columns outside the acquired phase-encoding range as in the public knee files),
  ``reconstruction_esc`` ``[slices, N, N]`` = ``|centre_crop(ifft2c(kspace))|``, ``reconstruction_rss``, header
  and attributes as above. File names ``singlecoil_train/file<id>.h5``.
* ``brats`` - BraTS 2019 training layout:
  ``MICCAI_BraTS_2019_Data_Training/{HGG,LGG}/BraTS19_<centre>_<id>_1/BraTS19_<centre>_<id>_1_{t1,t1ce,t2,flair,seg}.nii.gz``,
  images int16, ``seg`` uint8 with labels {0, 1 necrosis, 2 oedema, 4 enhancing}, 1 mm voxels.

Deviations from the public data, on purpose and documented in ``docs/data_fedmri.md``: the public single-coil
track is knee only (our single-coil site carries a brain phantom); the public fastMRI reconstructions are always
320x320 (ours are ``matrix`` x ``matrix``, 320 by default for the fastMRI sites, smaller in tests); BraTS volumes
are 240x240x155 at 1 mm, and so are ours, always (code written for the real data reads fixed axial ranges, the
reference slices 40-119, and applies 240 x 240 masks). For BraTS-layout sites ``matrix`` is the in-plane size the
site's pipeline centre-crops to at load time (``python -m data_prep.fedmri convert --crop SITE=N``): the phantom
head is drawn to fit inside it, the files keep the real geometry. Site-4 stands in for a private scanner exporting
magnitude NIfTI in the BraTS layout whose pipeline works on the central 192 x 192 (the paper's third image size).
Cheaper settings (tests) crop at load time and convert a few slices; they never shrink the files.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from data_prep._mri_fft import center_crop, fft2c, ifft2c, rss
from data_prep.common import progress

__all__ = [
    "LAYOUTS",
    "SiteSpec",
    "DEFAULT_SITES",
    "brain_labels",
    "render_contrast",
    "ismrmrd_header_xml",
    "write_fastmri_multicoil",
    "write_fastmri_singlecoil",
    "write_brats_case",
    "generate",
    "main",
]

LAYOUTS = ("fastmri_multicoil", "fastmri_singlecoil", "brats")
ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_ROOT = "MICCAI_BraTS_2019_Data_Training"
#: BraTS 2019 volumes: [x, y, z] voxels, always, at 1 mm isotropic
BRATS_SHAPE = (240, 240, 155)
BRATS_SPACING_MM = 1.0

# Tissue classes of the phantom label map.
BG, SCALP, SKULL, CSF, GM, WM, EDEMA, ENHANCING, NECROSIS = range(9)
# BraTS 2019 label of each tissue class (0 elsewhere): 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing.
_BRATS_LABEL = {EDEMA: 2, ENHANCING: 4, NECROSIS: 1}

# Relative intensity of each tissue class per contrast (BG, scalp, skull, CSF, GM, WM, oedema, enhancing, necrosis).
CONTRASTS: dict[str, tuple[float, ...]] = {
    "T1": (0.0, 0.90, 0.08, 0.20, 0.55, 0.80, 0.45, 0.50, 0.25),
    "T1CE": (0.0, 0.90, 0.08, 0.22, 0.55, 0.80, 0.45, 1.00, 0.25),
    "T2": (0.0, 0.50, 0.05, 1.00, 0.60, 0.40, 0.85, 0.75, 0.95),
    "FLAIR": (0.0, 0.60, 0.05, 0.10, 0.60, 0.45, 1.00, 0.80, 0.40),
    "PD": (0.0, 0.75, 0.10, 0.85, 0.80, 0.65, 0.85, 0.80, 0.85),
}
# fastMRI ``acquisition`` attribute per contrast (brain vocabulary of the public files; PD uses the knee one).
ACQUISITION = {"T1": "AXT1", "T1CE": "AXT1POST", "T2": "AXT2", "FLAIR": "AXFLAIR", "PD": "CORPD_FBK"}


@dataclass(frozen=True)
class SiteSpec:
    """How one synthetic site looks and which public layout it is written in.

    Args:
        name: site name (``site-1`` ...), also the raw sub-folder.
        layout: one of :data:`LAYOUTS`.
        matrix: reconstruction matrix N (image is N x N); fastMRI's public files use 320, BraTS 240.
        contrast: key of :data:`CONTRASTS` (fastMRI sites); BraTS sites write all four modalities.
        noise: complex Gaussian noise std relative to the image maximum (added in k-space / image).
        fov_fill: head width as a fraction of the field of view (smaller = larger FOV around the head).
        gain: global intensity scale (scanner-dependent units).
        gamma: contrast exponent applied to the tissue intensities (per-site contrast shift).
        bias: amplitude of the smooth multiplicative bias field.
        coils: receive coils (multi-coil k-space and the RSS reference).
        fov_mm: reconstructed field of view in mm (header and NIfTI spacing).
        slice_mm: slice thickness in mm.
        centre: BraTS centre code in case names (``BraTS19_<centre>_<id>_1``).
    """

    name: str
    layout: str
    matrix: int
    contrast: str = "T1"
    noise: float = 0.02
    fov_fill: float = 0.8
    gain: float = 1.0
    gamma: float = 1.0
    bias: float = 0.1
    coils: int = 4
    fov_mm: float = 220.0
    slice_mm: float = 5.0
    centre: str = "CBICA"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"SiteSpec.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.contrast.upper() not in CONTRASTS:
            raise ValueError(f"SiteSpec.contrast must be one of {sorted(CONTRASTS)}, got {self.contrast!r}")
        if self.matrix < 16 or self.matrix % 2:
            raise ValueError(f"SiteSpec.matrix must be an even integer >= 16, got {self.matrix!r}")
        if not 0.2 <= self.fov_fill <= 1.0:
            raise ValueError(f"SiteSpec.fov_fill must be in [0.2, 1], got {self.fov_fill!r}")
        if self.coils < 1:
            raise ValueError(f"SiteSpec.coils must be >= 1, got {self.coils!r}")


# Four sites as in the paper's setting: fastMRI brain (multi-coil, 320), BraTS 2019 (240), and two stand-ins for the
# private SMS and uMR scanners: one with raw single-coil k-space (320), one exporting magnitude NIfTI at 192.
DEFAULT_SITES: tuple[SiteSpec, ...] = (
    SiteSpec("site-1", "fastmri_multicoil", 320, "T1", noise=0.02, fov_fill=0.80, gain=1.0, gamma=1.0,
             bias=0.10, coils=4, fov_mm=220.0, slice_mm=5.0),
    SiteSpec("site-2", "brats", 240, "T1", noise=0.01, fov_fill=0.70, gain=800.0, gamma=1.2,
             bias=0.05, coils=1, fov_mm=240.0, slice_mm=1.0, centre="CBICA"),
    SiteSpec("site-3", "fastmri_singlecoil", 320, "FLAIR", noise=0.03, fov_fill=0.85, gain=1.0, gamma=0.9,
             bias=0.15, coils=4, fov_mm=230.0, slice_mm=4.0),
    SiteSpec("site-4", "brats", 192, "T2", noise=0.015, fov_fill=0.90, gain=1500.0, gamma=0.8,
             bias=0.20, coils=1, fov_mm=240.0, slice_mm=1.0, centre="TMC"),
)


# ----------------------------------------------------------------------------------------------------------------
# Phantom
# ----------------------------------------------------------------------------------------------------------------
def _case_params(rng: np.random.Generator) -> dict:
    """Random anatomy of one subject (shared by all its slices and contrasts)."""
    has_lesion = rng.random() < 0.85
    return {
        "semi_axes": (rng.uniform(0.86, 0.96), rng.uniform(0.70, 0.80)),  # (rows=anterior-posterior, cols)
        "angle": rng.uniform(-0.15, 0.15),
        "fold_phase": rng.uniform(0, 2 * np.pi, size=3),
        "fold_amp": rng.uniform(0.008, 0.02, size=3),
        "ventricle": rng.uniform(0.07, 0.12),
        "lesion": has_lesion,
        "lesion_centre": (rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3)),
        "lesion_radius": rng.uniform(0.12, 0.25),
        "lesion_enhancing": bool(rng.random() < 0.7),
        "texture_seed": int(rng.integers(0, 2**31 - 1)),
    }


def _slice_grid(n: int, params: dict, fov_fill: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotated in-plane coordinates and the cortical folds of a subject: the same for every slice."""
    coords = (np.arange(n, dtype=np.float32) - (n - 1) / 2) / (n / 2) / fov_fill
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    c, s = np.cos(params["angle"]), np.sin(params["angle"])
    y, x = c * yy - s * xx, s * yy + c * xx
    theta = np.arctan2(y, x)
    folds = sum(
        a * np.sin(k * 7 * theta + p) for k, (a, p) in enumerate(zip(params["fold_amp"], params["fold_phase"]), 1)
    )
    return y, x, folds


def brain_labels(n: int, z: float, params: dict, fov_fill: float, grid=None) -> np.ndarray:
    """Tissue label map of one axial slice of the phantom.

    Args:
        n: matrix size (the slice is n x n).
        z: slice position in [-1, 1] (0 = mid-brain); the head cross-section shrinks towards the ends.
        params: subject anatomy from ``_case_params``.
        fov_fill: head width as a fraction of the field of view.
        grid: :func:`_slice_grid` of the same (n, params, fov_fill), to reuse across the slices of a volume.

    Returns:
        uint8 ``[n, n]`` label map with the tissue classes ``BG .. NECROSIS``.
    """
    y, x, folds = grid if grid is not None else _slice_grid(n, params, fov_fill)
    scale = float(np.sqrt(max(1.0 - (0.85 * z) ** 2, 0.05)))
    ay, ax = (a * scale for a in params["semi_axes"])
    r = np.sqrt((y / ay) ** 2 + (x / ax) ** 2)  # 1 on the scalp surface

    labels = np.zeros((n, n), dtype=np.uint8)
    labels[r <= 1.0] = SCALP
    labels[r <= 0.94] = SKULL
    labels[r <= 0.88] = CSF
    labels[r <= 0.84 + 0.5 * folds] = GM
    labels[r <= 0.66 + folds] = WM
    v = params["ventricle"] * scale
    for side in (-1, 1):  # two lateral ventricles
        labels[((y / (2.2 * v)) ** 2 + ((x - side * 0.9 * v) / (0.6 * v)) ** 2) <= 1.0] = CSF
    if params["lesion"]:
        cy, cx, cz = params["lesion_centre"]
        dz = z - cz
        rad2 = params["lesion_radius"] ** 2 - dz**2
        if rad2 > 0:
            d = np.sqrt((y - cy) ** 2 + (x - cx) ** 2) / np.sqrt(rad2)
            inside_brain = labels >= GM
            labels[(d <= 1.0) & inside_brain] = EDEMA
            if params["lesion_enhancing"]:
                labels[(d <= 0.6) & inside_brain] = ENHANCING
            labels[(d <= 0.35) & inside_brain] = NECROSIS
    return labels


def render_contrast(
    labels: np.ndarray, contrast: str, spec: SiteSpec, texture_seed: int, rng: np.random.Generator
) -> np.ndarray:
    """Noise-free magnitude image of a label volume in one contrast, with site gamma, gain, bias and texture.

    Args:
        labels: ``[..., H, W]`` tissue labels.
        contrast: key of :data:`CONTRASTS`.
        spec: site appearance (``gain``, ``gamma``, ``bias``).
        texture_seed: subject-specific seed, so all contrasts of a subject share the same texture.
        rng: site/subject generator for the bias field.

    Returns:
        float32 array shaped like ``labels``, >= 0.
    """
    table = np.asarray(CONTRASTS[contrast.upper()], dtype=np.float32) ** spec.gamma
    image = table[labels]
    h, w = labels.shape[-2:]
    tex_rng = np.random.default_rng(texture_seed)
    texture = ndimage.gaussian_filter(tex_rng.standard_normal((h, w)).astype(np.float32), sigma=max(h / 80, 1.0))
    texture *= 0.08 / (texture.std() + 1e-8)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    a, b = rng.uniform(-1, 1, size=2)
    bias_field = 1.0 + spec.bias * (a * yy + b * xx).astype(np.float32)
    return np.clip(image * (1.0 + texture) * bias_field, 0.0, None).astype(np.float32) * spec.gain


def _phase_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth background phase (real MR images are complex); linear plus a low-order quadratic term."""
    h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    a, b, c = rng.uniform(-1.0, 1.0, size=3)
    return np.exp(1j * (a * yy + b * xx + c * (yy**2 + xx**2))).astype(np.complex64)


def _coil_maps(shape: tuple[int, int], n_recon: int, coils: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth complex coil sensitivities ``[coils, H, W]`` placed around the head (grid units of the recon FOV)."""
    h, w = shape
    yy = (np.arange(h) - (h - 1) / 2) / (n_recon / 2)
    xx = (np.arange(w) - (w - 1) / 2) / (n_recon / 2)
    yy, xx = np.meshgrid(yy, xx, indexing="ij")
    maps = []
    for k in range(coils):
        ang = 2 * np.pi * k / coils + rng.uniform(-0.2, 0.2)
        py, px = 1.1 * np.sin(ang), 1.1 * np.cos(ang)
        mag = np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * 0.8**2))
        maps.append(mag * np.exp(1j * (rng.uniform(0, 2 * np.pi) + 0.5 * (yy * np.cos(ang) + xx * np.sin(ang)))))
    return np.asarray(maps, dtype=np.complex64)


def _complex_noise(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    return (rng.normal(0.0, std, size=shape) + 1j * rng.normal(0.0, std, size=shape)).astype(np.complex64)


# ----------------------------------------------------------------------------------------------------------------
# fastMRI h5
# ----------------------------------------------------------------------------------------------------------------
def _sub(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
    el = ET.SubElement(parent, f"{{{ISMRMRD_NS}}}{tag}")
    if text is not None:
        el.text = str(text)
    return el


def _limit(parent: ET.Element, tag: str, maximum: int, center: int) -> None:
    el = _sub(parent, tag)
    _sub(el, "minimum", 0)
    _sub(el, "maximum", maximum)
    _sub(el, "center", center)


def ismrmrd_header_xml(
    encoded: tuple[int, int],
    recon: tuple[int, int],
    fov_mm: float,
    slice_mm: float,
    slices: int,
    coils: int,
    acquired: tuple[int, int],
    acquisition: str,
) -> bytes:
    """ISMRMRD header XML in the element order of the ISMRMRD schema, as stored in fastMRI files.

    fastMRI reads ``encoding/encodedSpace/matrixSize``, ``encoding/reconSpace/matrixSize`` and
    ``encoding/encodingLimits/kspace_encoding_step_1/{center,maximum}`` (padding_left = y // 2 - center,
    padding_right = padding_left + maximum + 1); those are filled consistently with the k-space array.

    Args:
        encoded: k-space matrix (readout x = rows, phase encoding y = columns), e.g. (640, 368).
        recon: reconstruction matrix, e.g. (320, 320).
        fov_mm: reconstructed field of view (the encoded FOV scales with the matrix ratio).
        slice_mm: slice thickness.
        slices: number of slices (``encodingLimits/slice``).
        coils: receiver channels.
        acquired: ``(first, last)`` acquired phase-encoding columns (inclusive); outside them k-space is zero.
        acquisition: protocol name (``AXT1`` ...).
    """
    ET.register_namespace("", ISMRMRD_NS)
    root = ET.Element(f"{{{ISMRMRD_NS}}}ismrmrdHeader")
    study = _sub(root, "studyInformation")
    _sub(study, "studyTime", "00:00:00")
    meas = _sub(root, "measurementInformation")
    _sub(meas, "patientPosition", "HFS")
    _sub(meas, "protocolName", acquisition)
    system = _sub(root, "acquisitionSystemInformation")
    _sub(system, "systemVendor", "SYNTHETIC")
    _sub(system, "systemModel", "phantom")
    _sub(system, "systemFieldStrength_T", "2.89362")
    _sub(system, "receiverChannels", coils)
    _sub(system, "institutionName", "synthetic")
    _sub(_sub(root, "experimentalConditions"), "H1resonanceFrequency_Hz", 123251815)
    enc = _sub(root, "encoding")
    for tag, (mx, my), (fx, fy, fz) in (
        ("encodedSpace", encoded, (fov_mm * encoded[0] / recon[0], fov_mm * encoded[1] / recon[1], slice_mm)),
        ("reconSpace", recon, (fov_mm, fov_mm, slice_mm)),
    ):
        space = _sub(enc, tag)
        size = _sub(space, "matrixSize")
        for axis, value in zip("xyz", (mx, my, 1)):
            _sub(size, axis, value)
        fov = _sub(space, "fieldOfView_mm")
        for axis, value in zip("xyz", (fx, fy, fz)):
            _sub(fov, axis, f"{value:g}")
    limits = _sub(enc, "encodingLimits")
    first, last = acquired
    _limit(limits, "kspace_encoding_step_0", encoded[0] - 1, encoded[0] // 2)
    # fastMRI: padding_left = y // 2 - center  ->  center = y // 2 - first
    _limit(limits, "kspace_encoding_step_1", last - first, encoded[1] // 2 - first)
    _limit(limits, "kspace_encoding_step_2", 0, 0)
    _limit(limits, "slice", slices - 1, 0)
    _sub(enc, "trajectory", "cartesian")
    seq = _sub(root, "sequenceParameters")
    _sub(seq, "TR", 2750)
    _sub(seq, "TE", 27)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8", xml_declaration=False)


def _patient_id(site: str, index: int) -> str:
    return hashlib.sha256(f"{site}/{index}".encode()).hexdigest()


def _write_h5(path: Path, datasets: dict[str, np.ndarray], header: bytes, attrs: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)
        f.create_dataset("ismrmrd_header", data=np.bytes_(header))
        for key, value in attrs.items():
            f.attrs[key] = value
    os.replace(tmp, path)


def _magnitude_volume(spec: SiteSpec, slices: int, params: dict, rng: np.random.Generator) -> np.ndarray:
    """``[slices, N, N]`` noise-free magnitude of one subject in the site's contrast (middle of the brain)."""
    zs = np.linspace(-0.35, 0.35, slices) if slices > 1 else np.zeros(1)
    labels = np.stack([brain_labels(spec.matrix, float(z), params, spec.fov_fill) for z in zs])
    return render_contrast(labels, spec.contrast, spec, params["texture_seed"], rng)


def write_fastmri_multicoil(path: Path, spec: SiteSpec, index: int, slices: int, rng: np.random.Generator) -> Path:
    """One fastMRI brain multi-coil training file; ``reconstruction_rss`` is the RSS of ``kspace`` cropped to N x N."""
    n = spec.matrix
    params = _case_params(rng)
    magnitude = _magnitude_volume(spec, slices, params, rng)
    encoded = (2 * n, n)  # readout oversampled twice, as in the public brain files (640 x 320)
    maps = _coil_maps(encoded, n, spec.coils, rng)
    top = (encoded[0] - n) // 2
    kspace = np.empty((slices, spec.coils, *encoded), dtype=np.complex64)
    noise_std = spec.noise * float(magnitude.max())
    for s in range(slices):
        image = np.zeros(encoded, dtype=np.complex64)
        image[top : top + n, :] = magnitude[s] * _phase_map((n, n), rng)
        kspace[s] = fft2c(maps * image[None]) + _complex_noise((spec.coils, *encoded), noise_std, rng)
    recon = center_crop(rss(ifft2c(kspace), coil_axis=1), (n, n)).astype(np.float32)
    header = ismrmrd_header_xml(encoded, (n, n), spec.fov_mm, spec.slice_mm, slices, spec.coils,
                                (0, encoded[1] - 1), ACQUISITION[spec.contrast.upper()])
    attrs = {"acquisition": ACQUISITION[spec.contrast.upper()], "max": float(recon.max()),
             "norm": float(np.linalg.norm(recon)), "patient_id": _patient_id(spec.name, index)}
    _write_h5(path, {"kspace": kspace, "reconstruction_rss": recon}, header, attrs)
    return path


def write_fastmri_singlecoil(path: Path, spec: SiteSpec, index: int, slices: int, rng: np.random.Generator) -> Path:
    """One fastMRI single-coil training file (emulated single-coil k-space, ``reconstruction_esc`` and ``_rss``).

    The phase-encoding axis is wider than the reconstruction (W = N * 1.15, like 368 vs 320 in the knee files) and
    a few edge columns are zero (not acquired), recorded in the header's ``kspace_encoding_step_1`` limits.
    """
    n = spec.matrix
    params = _case_params(rng)
    magnitude = _magnitude_volume(spec, slices, params, rng)
    width = int(round(n * 1.15 / 2)) * 2
    encoded = (2 * n, width)
    pad = max(1, int(round(0.03 * width)))
    acquired = (pad, width - pad - 1)
    maps = _coil_maps(encoded, n, spec.coils, rng)
    top, left = (encoded[0] - n) // 2, (width - n) // 2
    kspace = np.zeros((slices, *encoded), dtype=np.complex64)
    coil_images = np.empty((slices, spec.coils, *encoded), dtype=np.complex64)
    noise_std = spec.noise * float(magnitude.max())
    for s in range(slices):
        image = np.zeros(encoded, dtype=np.complex64)
        image[top : top + n, left : left + n] = magnitude[s] * _phase_map((n, n), rng)
        full = fft2c(image) + _complex_noise(encoded, noise_std, rng)
        kspace[s, :, acquired[0] : acquired[1] + 1] = full[:, acquired[0] : acquired[1] + 1]
        coil_images[s] = maps * image[None] + _complex_noise((spec.coils, *encoded), noise_std, rng)
    esc = np.abs(center_crop(ifft2c(kspace), (n, n))).astype(np.float32)
    recon_rss = center_crop(rss(coil_images, coil_axis=1), (n, n)).astype(np.float32)
    acq = ACQUISITION[spec.contrast.upper()]
    header = ismrmrd_header_xml(encoded, (n, n), spec.fov_mm, spec.slice_mm, slices, spec.coils, acquired, acq)
    attrs = {"acquisition": acq, "max": float(esc.max()), "norm": float(np.linalg.norm(esc)),
             "patient_id": _patient_id(spec.name, index)}
    _write_h5(path, {"kspace": kspace, "reconstruction_esc": esc, "reconstruction_rss": recon_rss}, header, attrs)
    return path


# ----------------------------------------------------------------------------------------------------------------
# BraTS 2019 NIfTI
# ----------------------------------------------------------------------------------------------------------------
def _brats_case_id(centre: str, index: int) -> str:
    """Case ids in the BraTS 2019 style: CBICA uses three letters, TMC five digits, 2013/TCIA numbers."""
    if centre == "CBICA":
        a, rest = divmod(index, 26 * 26)
        b, c = divmod(rest, 26)
        return "".join(chr(ord("A") + v % 26) for v in (a, b, c))
    if centre == "TMC":
        return f"{6290 + index:05d}"
    return f"{100 + index:03d}"


def _brats_affine() -> np.ndarray:
    """BraTS 2019 stores its arrays x-flipped and y-flipped (LPS-like) with a y offset, 1 mm isotropic."""
    spacing = BRATS_SPACING_MM
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[1, 3] = spacing * (BRATS_SHAPE[1] - 1)
    return affine


def write_brats_case(root: Path, spec: SiteSpec, index: int, rng: np.random.Generator) -> Path:
    """One BraTS 2019 training case (four int16 modalities and a uint8 ``seg``); returns the case folder.

    Arrays are always ``[x, y, z] = 240 x 240 x 155`` at 1 mm (:data:`BRATS_SHAPE`), as in BraTS 2019; the head
    is drawn to fit the site's ``matrix`` x ``matrix`` centre (the crop its pipeline applies at load time). LGG
    cases get no enhancing tumour (label 4), as low-grade gliomas rarely enhance. Rician-like noise (the magnitude
    of complex Gaussian noise) is drawn inside the brain only: BraTS images are skull-stripped, zero outside.
    """
    import nibabel as nib

    params = _case_params(rng)
    grade = "HGG" if params["lesion_enhancing"] else "LGG"
    case = f"BraTS19_{spec.centre}_{_brats_case_id(spec.centre, index)}_1"
    folder = root / BRATS_ROOT / grade / case
    folder.mkdir(parents=True, exist_ok=True)
    n, _, depth = BRATS_SHAPE
    fill = spec.fov_fill * min(spec.matrix, n) / n  # the head fits in the site's central matrix x matrix
    grid = _slice_grid(n, params, fill)
    zs = np.linspace(-0.9, 0.9, depth)
    labels = np.stack([brain_labels(n, float(z), params, fill, grid) for z in zs])  # [z, row, col]
    affine = _brats_affine()
    brain = labels >= CSF  # BraTS images are skull-stripped
    count = int(brain.sum())
    for modality in BRATS_MODALITIES:
        contrast = "T1CE" if modality == "t1ce" else modality.upper()
        image = render_contrast(labels, contrast, spec, params["texture_seed"], rng)
        sigma = spec.noise * float(image.max())
        out = np.zeros_like(image)
        out[brain] = image[brain] + rng.rayleigh(max(sigma, 1e-12), size=count).astype(np.float32)
        data = np.round(np.transpose(out, (2, 1, 0))).astype(np.int16)  # [z, row, col] -> [x=col, y=row, z]
        nib.save(nib.Nifti1Image(data, affine), str(folder / f"{case}_{modality}.nii.gz"))
    seg = np.zeros_like(labels)
    for tissue, value in _BRATS_LABEL.items():
        seg[labels == tissue] = value
    nib.save(nib.Nifti1Image(np.transpose(seg, (2, 1, 0)).astype(np.uint8), affine), str(folder / f"{case}_seg.nii.gz"))
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Driver and CLI
# ----------------------------------------------------------------------------------------------------------------
def generate(
    out_root: str | os.PathLike,
    sites: tuple[SiteSpec, ...] = DEFAULT_SITES,
    volumes_per_site: int = 4,
    slices: int = 3,
    seed: int = 0,
) -> dict[str, list[Path]]:
    """Write every site's raw data under ``out_root/<site>/`` in its public layout.

    Args:
        out_root: raw root; one sub-folder per site.
        sites: site specifications.
        volumes_per_site: fastMRI files or BraTS cases per site.
        slices: slices per fastMRI file (public files: 16-40). BraTS volumes always have 155 (real geometry).
        seed: base seed; every site draws from its own generator (seed, site index).

    Returns:
        ``{site: [written file or case folder, ...]}``.
    """
    if volumes_per_site < 1 or slices < 1:
        raise ValueError(f"volumes_per_site, slices must be >= 1, got {(volumes_per_site, slices)!r}")
    for spec in sites:
        if spec.layout == "brats" and spec.matrix > BRATS_SHAPE[0]:
            raise ValueError(f"{spec.name}: a BraTS-layout site's matrix (its load-time crop) must be <= "
                             f"{BRATS_SHAPE[0]}, got {spec.matrix}")
    out_root = Path(out_root)
    written: dict[str, list[Path]] = {}
    for site_index, spec in enumerate(sites):
        rng = np.random.default_rng([seed, site_index])
        site_root = out_root / spec.name
        paths = []
        for i in progress(range(volumes_per_site), f"{spec.name} ({spec.layout}, {spec.matrix})"):
            if spec.layout == "fastmri_multicoil":
                acq = ACQUISITION[spec.contrast.upper()]
                name = f"multicoil_train/file_brain_{acq}_20{1 + site_index}_{6000000 + 1000 * site_index + i}.h5"
                paths.append(write_fastmri_multicoil(site_root / name, spec, i, slices, rng))
            elif spec.layout == "fastmri_singlecoil":
                name = f"singlecoil_train/file{1000000 + 1000 * site_index + i}.h5"
                paths.append(write_fastmri_singlecoil(site_root / name, spec, i, slices, rng))
            else:
                paths.append(write_brats_case(site_root, spec, i, rng))
        written[spec.name] = paths
    return written


def sites_with_matrix(sites: tuple[SiteSpec, ...], fastmri_matrix: int | None, brats_matrix: int | None):
    """Return ``sites`` with the fastMRI / BraTS matrices overridden (tests use small ones)."""
    out = []
    for spec in sites:
        if spec.layout.startswith("fastmri") and fastmri_matrix:
            spec = replace(spec, matrix=fastmri_matrix)
        if spec.layout == "brats" and brats_matrix:
            spec = replace(spec, matrix=brats_matrix)
        out.append(spec)
    return tuple(out)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m data_prep.synthetic.fedmri", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/fedmri/raw", help="raw root; one folder per site (default: %(default)s)")
    parser.add_argument("--sites", type=int, default=len(DEFAULT_SITES),
                        help=f"number of default sites to write, 1..{len(DEFAULT_SITES)} (default: %(default)s)")
    parser.add_argument("--volumes", type=int, default=4, help="volumes per site (default: %(default)s)")
    parser.add_argument("--slices", type=int, default=3, help="slices per fastMRI file (default: %(default)s)")
    parser.add_argument("--fastmri-matrix", type=int, default=None,
                        help="override the fastMRI reconstruction matrix (public files: 320)")
    parser.add_argument("--brats-matrix", type=int, default=None,
                        help="override the load-time crop of every BraTS-layout site; files stay 240 x 240 x 155")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default: %(default)s)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    if not 1 <= args.sites <= len(DEFAULT_SITES):
        raise SystemExit(f"--sites must be in 1..{len(DEFAULT_SITES)}, got {args.sites!r}")
    sites = sites_with_matrix(DEFAULT_SITES[: args.sites], args.fastmri_matrix, args.brats_matrix)
    written = generate(args.out, sites, args.volumes, args.slices, args.seed)
    print(f"wrote {sum(len(v) for v in written.values())} volumes for {len(written)} sites under {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Generate the synthetic FedMRI raw data (also available as ``python -m data_prep.fedmri generate``)."""
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
