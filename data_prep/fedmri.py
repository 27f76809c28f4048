"""FedMRI converter: fastMRI h5 and BraTS 2019 NIfTI per site -> single-coil slices + slice-level datalists.

Each site's raw folder holds one public layout (a hospital drops its own copy in): fastMRI single-coil or
multi-coil ``.h5`` files (any sub-folders), or the BraTS 2019 tree ``{HGG,LGG}/BraTS19_*_1/``. Every volume becomes
one h5 under ``<out>/<site>/<volume>.h5`` with

* ``kspace`` complex64 ``[slices, N, N]``: centred, orthonormal single-coil k-space (``fft2c`` of the image);
* ``target`` float32 ``[slices, N, N]``: the fully sampled magnitude ``|ifft2c(kspace)|``;
* attributes ``source_type``, ``source_file``, ``site``, ``volume``, ``slice_indices``, ``max``, ``norm``.

Which path a volume took is recorded in ``source_type`` (in the file and in every datalist entry):

* ``fastmri_singlecoil_kspace``: measured (emulated single-coil) k-space; the complex image is centre-cropped to the
  reconstruction size of the header and re-transformed, so ``target`` equals ``reconstruction_esc``.
* ``fastmri_multicoil_rss_simulated``: magnitude only, as in the paper: ``reconstruction_rss`` is the target and its
  k-space is simulated as ``fft2c(magnitude)``.
* ``brats_nifti_simulated``: magnitude only, as in the paper: one modality's axial slices with foreground, k-space
  simulated as ``fft2c(magnitude)``.

Per site, volumes are split into training/validation/testing (deterministic by seed, no volume in two splits) and
a MONAI decathlon datalist with one entry per slice (``image`` = converted file, ``slice`` = index in it) is written
to ``<datalist-dir>/<site>.json``, paths relative to ``<out>`` (the data root). All input is validated before anything
is written, and the converted tree is written atomically.

CLI: ``python -m data_prep.fedmri {generate,convert,validate} --help``.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from data_prep._mri_fft import center_crop, fft2c, ifft2c, rss
from data_prep.cli import Command, run_cli
from data_prep.common import (
    DataValidationError,
    atomic_dir,
    check_inside_root,
    check_label_values,
    check_splits_non_empty,
    load_nifti,
    progress,
    split_by_fractions,
    write_datalists,
)

__all__ = [
    "SOURCE_TYPES",
    "SourceVolume",
    "find_site_volumes",
    "inspect_fastmri_file",
    "inspect_brats_case",
    "load_volume",
    "convert",
    "validate_datalists",
    "main",
]

SOURCE_TYPES = {
    "fastmri_singlecoil": "fastmri_singlecoil_kspace",
    "fastmri_multicoil": "fastmri_multicoil_rss_simulated",
    "brats": "brats_nifti_simulated",
}
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_LABELS = (0, 1, 2, 4)
BRATS_CASE = re.compile(r"^BraTS19_[A-Za-z0-9]+_[A-Za-z0-9]+_1$")
ISMRMRD_NS = "{http://www.ismrm.org/ISMRMRD}"
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
#: axial slices of every BraTS volume the reference reads (40..119, half-open here)
BRATS_SLICE_RANGE = (40, 120)
SPLITS = ("training", "validation", "testing")
TOOL = "data_prep.fedmri"


@dataclass
class SourceVolume:
    """One validated raw volume of a site.

    Attributes:
        site: site name.
        layout: ``fastmri_singlecoil``, ``fastmri_multicoil`` or ``brats``.
        path: the h5 file or the BraTS case folder.
        volume: volume id (file stem or BraTS case name), unique within the site.
        source_file: path of the file actually read, relative to the site's raw folder.
        slice_indices: raw slice indices that will be converted.
        matrix: (H, W) of the converted slices.
    """

    site: str
    layout: str
    path: Path
    volume: str
    source_file: str
    slice_indices: list[int]
    matrix: tuple[int, int]
    extra: dict = field(default_factory=dict)

    @property
    def source_type(self) -> str:
        return SOURCE_TYPES[self.layout]


# ----------------------------------------------------------------------------------------------------------------
# fastMRI h5
# ----------------------------------------------------------------------------------------------------------------
def _header_matrix(header: bytes, space: str, path: Path) -> tuple[int, int]:
    """``(x, y)`` of ``encoding/<space>/matrixSize`` in an ISMRMRD header (fastMRI's ``et_query`` paths)."""
    try:
        root = ET.fromstring(header)
    except ET.ParseError as e:
        raise DataValidationError(f"ismrmrd_header: {str(path)!r} is not valid XML: {e}") from e
    values = []
    for axis in ("x", "y"):
        node = root.find(f"./{ISMRMRD_NS}encoding/{ISMRMRD_NS}{space}/{ISMRMRD_NS}matrixSize/{ISMRMRD_NS}{axis}")
        if node is None or not (node.text or "").strip().isdigit():
            raise DataValidationError(
                f"ismrmrd_header: {str(path)!r} lacks an integer encoding/{space}/matrixSize/{axis}"
            )
        values.append(int(node.text))
    return values[0], values[1]


def _dataset(f: h5py.File, key: str, path: Path, hint: str = "") -> h5py.Dataset:
    if key not in f or not isinstance(f[key], h5py.Dataset):
        raise DataValidationError(f"{key}: dataset missing in {str(path)!r}{hint}")
    return f[key]


def _relative_error(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(estimate - reference) / (np.linalg.norm(reference) + 1e-30))


def inspect_fastmri_file(path: str | os.PathLike, consistency_rtol: float = 0.05) -> dict:
    """Validate one fastMRI training/validation h5 file and return its layout, slice count and matrix.

    Checks: the file opens; ``kspace`` exists, is complex, rank 3 (single-coil) or 4 (multi-coil) and finite;
    the reconstruction (``reconstruction_esc`` for single-coil, ``reconstruction_rss`` for multi-coil) exists, is
    real floating point, ``[slices, H, W]``, finite and non-negative; ``ismrmrd_header`` parses and its reconSpace
    matrix equals the reconstruction's shape; and, when ``consistency_rtol > 0``, the reconstruction agrees with
    ``kspace`` (relative L2 error <= ``consistency_rtol``, computed slice by slice to bound memory).

    Raises:
        DataValidationError: naming the file and the field.
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataValidationError(f"file: cannot open {str(path)!r} as HDF5: {e}") from e
    with f:
        kspace = _dataset(f, "kspace", path)
        if kspace.dtype.kind != "c":
            raise DataValidationError(f"kspace: {str(path)!r} must be complex (complex64), got dtype {kspace.dtype}")
        if kspace.ndim not in (3, 4):
            raise DataValidationError(
                f"kspace: {str(path)!r} must be [slices, H, W] or [slices, coils, H, W], got shape {kspace.shape}"
            )
        layout = "fastmri_singlecoil" if kspace.ndim == 3 else "fastmri_multicoil"
        recon_key = "reconstruction_esc" if layout == "fastmri_singlecoil" else "reconstruction_rss"
        hint = " (an undersampled test/challenge file with 'mask' has no reference)" if "mask" in f else ""
        recon = _dataset(f, recon_key, path, hint)
        if recon.dtype.kind != "f":
            raise DataValidationError(f"{recon_key}: {str(path)!r} must be float, got dtype {recon.dtype}")
        if recon.ndim != 3 or recon.shape[0] != kspace.shape[0]:
            raise DataValidationError(
                f"{recon_key}: {str(path)!r} must be [slices={kspace.shape[0]}, H, W], got shape {recon.shape}"
            )
        if kspace.shape[0] == 0:
            raise DataValidationError(f"kspace: {str(path)!r} has no slices, shape {kspace.shape}")
        header = _dataset(f, "ismrmrd_header", path)[()]
        if isinstance(header, str):
            header = header.encode()
        recon_size = _header_matrix(bytes(header), "reconSpace", path)
        if tuple(recon.shape[-2:]) != recon_size:
            raise DataValidationError(
                f"{recon_key}: {str(path)!r} shape {recon.shape[-2:]} differs from the header's reconSpace "
                f"matrixSize {recon_size}"
            )
        if layout == "fastmri_singlecoil" and min(kspace.shape[-2:][i] - recon_size[i] for i in (0, 1)) < 0:
            raise DataValidationError(
                f"kspace: {str(path)!r} matrix {kspace.shape[-2:]} is smaller than the reconstruction {recon_size}"
            )
        for s in range(kspace.shape[0]):
            k = kspace[s]
            r = recon[s]
            if not np.all(np.isfinite(k)):
                raise DataValidationError(f"kspace: {str(path)!r} slice {s} contains NaN or Inf")
            if not np.all(np.isfinite(r)) or r.min() < 0:
                raise DataValidationError(f"{recon_key}: {str(path)!r} slice {s} contains NaN, Inf or negatives")
            if consistency_rtol > 0:
                image = ifft2c(k)
                estimate = np.abs(image) if layout == "fastmri_singlecoil" else rss(image, coil_axis=0)
                estimate = center_crop(estimate, recon_size)
                err = _relative_error(estimate, center_crop(r, estimate.shape))
                if err > consistency_rtol:
                    raise DataValidationError(
                        f"{recon_key}: {str(path)!r} slice {s} disagrees with kspace (relative error {err:.3g} > "
                        f"{consistency_rtol}); pass a larger --consistency-rtol or 0 to skip this check"
                    )
        return {"layout": layout, "slices": int(kspace.shape[0]), "matrix": recon_size,
                "acquisition": str(f.attrs.get("acquisition", ""))}


def _read_dataset(path: Path, key: str) -> np.ndarray:
    """Read one dataset of a fastMRI file.

    MONAI's ``FastMRIReader.read`` loads every dataset of the file; the RSS path needs only
    ``reconstruction_rss``, and loading a public multi-coil k-space (about 0.5 GB a volume) just to drop it is
    wasteful, so the converter reads the one dataset it needs with h5py. Tests read the same files through
    ``FastMRIReader`` to show that they are what MONAI users get.
    """
    with h5py.File(path, "r") as f:
        return f[key][()]


# ----------------------------------------------------------------------------------------------------------------
# BraTS 2019 NIfTI
# ----------------------------------------------------------------------------------------------------------------
def _foreground_slices(volume: np.ndarray, min_foreground: float) -> list[int]:
    """Axial slices (last axis) whose non-zero fraction is at least ``min_foreground``."""
    fraction = (volume != 0).reshape(-1, volume.shape[-1]).mean(axis=0)
    return [int(z) for z in np.flatnonzero(fraction >= min_foreground)]


def inspect_brats_case(case_dir: str | os.PathLike, modality: str = "t1", min_foreground: float = 0.05,
                       slice_range: tuple[int, int] | None = BRATS_SLICE_RANGE, crop: int | None = None) -> dict:
    """Validate one BraTS 2019 case folder and return the slices to convert and the in-plane matrix.

    ``slice_range`` (half-open, default the reference's 40..119) restricts the axial slices; ``None`` takes all.
    With ``crop``, the foreground fraction is measured in the central ``crop`` x ``crop`` region the site keeps.

    Checks: the folder name ``BraTS19_<centre>_<id>_1``; ``<case>_<modality>.nii.gz`` exists, loads, is 3-D and
    finite; every other modality and ``seg`` present have the same shape, spacing and affine; ``seg`` values are
    in {0, 1, 2, 4}; at least one axial slice has ``min_foreground`` non-zero pixels.
    """
    import nibabel as nib

    case_dir = Path(case_dir)
    case = case_dir.name
    if not BRATS_CASE.match(case):
        raise DataValidationError(f"case: folder {str(case_dir)!r} is not named BraTS19_<centre>_<id>_1")
    if modality not in BRATS_MODALITIES:
        raise ValueError(f"modality must be one of {BRATS_MODALITIES}, got {modality!r}")
    image, affine, zooms = load_nifti(case_dir / f"{case}_{modality}.nii.gz", field=modality)
    if image.ndim != 3:
        raise DataValidationError(f"{modality}: {str(case_dir)!r} image must be 3-D [x, y, z], got shape {image.shape}")
    for other in (*BRATS_MODALITIES, "seg"):
        other_path = case_dir / f"{case}_{other}.nii.gz"
        if other == modality or not other_path.exists():
            continue
        try:
            other_image = nib.load(str(other_path))
            header = other_image.header
        except Exception as e:  # nibabel raises several types for broken headers
            raise DataValidationError(f"{other}: cannot read NIfTI {str(other_path)!r}: {e}") from e
        if tuple(header.get_data_shape()) != image.shape:
            raise DataValidationError(
                f"{other}: {str(other_path)!r} shape {tuple(header.get_data_shape())} differs from "
                f"{modality} {image.shape}"
            )
        if not np.allclose(header.get_zooms()[:3], zooms[:3], atol=1e-3):
            raise DataValidationError(
                f"{other}: {str(other_path)!r} spacing {tuple(header.get_zooms())} differs from {modality} {zooms}"
            )
        diff = float(np.abs(np.asarray(other_image.affine) - np.asarray(affine)).max())
        if diff > 1e-3:  # a shifted or flipped grid: the file lies elsewhere in the patient
            raise DataValidationError(
                f"{other}: {str(other_path)!r} affine differs from {modality} by up to {diff:.4g} (tolerance 0.001)"
            )
        if other == "seg":
            seg, _, _ = load_nifti(other_path, field="seg")
            check_label_values(seg, BRATS_LABELS, other_path)
    region = image
    if crop is not None and crop < min(image.shape[:2]):
        top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
        region = image[top : top + crop, left : left + crop]
    slices = _foreground_slices(region, min_foreground)
    if slice_range is not None:
        start, stop = slice_range
        if image.shape[2] < stop:
            raise DataValidationError(
                f"{modality}: {str(case_dir)!r} has {image.shape[2]} axial slices; the slice range {start}..{stop - 1} "
                f"(the reference's, for BraTS 2019's 155) needs at least {stop}"
            )
        slices = [z for z in slices if start <= z < stop]
    if not slices:
        raise DataValidationError(
            f"{modality}: {str(case_dir)!r} has no axial slice with >= {min_foreground:.0%} non-zero pixels"
            + (f" in the slice range {slice_range[0]}..{slice_range[1] - 1}" if slice_range else "")
        )
    return {"slices": slices, "matrix": (int(image.shape[1]), int(image.shape[0])), "spacing": zooms}


# ----------------------------------------------------------------------------------------------------------------
# Site discovery, conversion
# ----------------------------------------------------------------------------------------------------------------
def find_site_volumes(
    site: str,
    site_dir: str | os.PathLike,
    modality: str = "t1",
    min_foreground: float = 0.05,
    consistency_rtol: float = 0.05,
    slice_range: tuple[int, int] | None = BRATS_SLICE_RANGE,
    max_slices: int | None = None,
    crop: int | None = None,
) -> list[SourceVolume]:
    """Find and validate every volume of one site: ``*.h5`` files anywhere below, and BraTS case folders.

    Load-time reductions (the raw files are never changed): BraTS slices within ``slice_range``; at most
    ``max_slices`` evenly spaced slices per volume (``None``: all); in-plane centre crop to ``crop`` x ``crop``
    (``None``: the volume's own matrix).

    Raises:
        DataValidationError: missing folder, an empty site, duplicate volume ids, or any invalid volume.
    """
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise DataValidationError(f"site {site!r}: raw folder {str(site_dir)!r} does not exist")
    volumes: list[SourceVolume] = []
    for path in sorted(site_dir.rglob("*.h5")):
        info = inspect_fastmri_file(path, consistency_rtol)
        volumes.append(SourceVolume(site, info["layout"], path, path.stem, str(path.relative_to(site_dir)),
                                    _subsample(list(range(info["slices"])), max_slices),
                                    _cropped(info["matrix"], crop, path), {"acquisition": info["acquisition"]}))
    for grade in ("HGG", "LGG"):
        for case_dir in sorted(p for p in site_dir.rglob(grade) if p.is_dir()):
            for case in sorted(p for p in case_dir.iterdir() if p.is_dir()):
                info = inspect_brats_case(case, modality, min_foreground, slice_range, crop)
                source = case / f"{case.name}_{modality}.nii.gz"
                volumes.append(SourceVolume(site, "brats", case, case.name, str(source.relative_to(site_dir)),
                                            _subsample(info["slices"], max_slices),
                                            _cropped(info["matrix"], crop, source),
                                            {"modality": modality, "grade": grade}))
    if not volumes:
        raise DataValidationError(
            f"site {site!r}: no fastMRI .h5 files or BraTS {{HGG,LGG}}/BraTS19_* case folders under {str(site_dir)!r}"
        )
    seen: dict[str, Path] = {}
    for vol in volumes:
        if vol.volume in seen:
            raise DataValidationError(
                f"site {site!r}: volume id {vol.volume!r} appears twice ({str(seen[vol.volume])!r}, {str(vol.path)!r})"
            )
        seen[vol.volume] = vol.path
    return volumes


def _subsample(slices: list[int], max_slices: int | None) -> list[int]:
    """At most ``max_slices`` evenly spaced entries of ``slices`` (all when ``None``)."""
    if max_slices is None or len(slices) <= max_slices:
        return list(slices)
    if max_slices < 1:
        raise ValueError(f"max_slices must be >= 1, got {max_slices!r}")
    picks = np.linspace(0, len(slices) - 1, max_slices).round().astype(int)
    return [slices[i] for i in picks]


def _cropped(matrix: tuple[int, int], crop: int | None, path: Path) -> tuple[int, int]:
    if crop is None:
        return tuple(matrix)
    if crop < 2 or crop > min(matrix):
        raise DataValidationError(f"crop: {crop} does not fit the {matrix[0]} x {matrix[1]} slices of {str(path)!r}")
    return (crop, crop)


def load_volume(vol: SourceVolume) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(kspace complex64 [S, N, N], target float32 [S, N, N])`` for the volume's selected slices.

    The image is centre-cropped to ``vol.matrix`` at load time (the raw file keeps its geometry).
    """
    if vol.layout == "brats":
        data, _, _ = load_nifti(vol.path / f"{vol.volume}_{vol.extra['modality']}.nii.gz", field=vol.extra["modality"])
        # NIfTI [x, y, z] -> slices [z, y, x] (rows = y), the orientation the generator drew.
        target = np.transpose(data[..., vol.slice_indices].astype(np.float32), (2, 1, 0))
        target = np.ascontiguousarray(center_crop(target, vol.matrix))
        return fft2c(target.astype(np.complex64)).astype(np.complex64), target
    if vol.layout == "fastmri_singlecoil":
        image = center_crop(ifft2c(_read_dataset(vol.path, "kspace")[vol.slice_indices]), vol.matrix)
        return fft2c(image).astype(np.complex64), np.abs(image).astype(np.float32)
    target = np.asarray(_read_dataset(vol.path, "reconstruction_rss")[vol.slice_indices], dtype=np.float32)
    target = np.ascontiguousarray(center_crop(target, vol.matrix))
    return fft2c(target.astype(np.complex64)).astype(np.complex64), target


def _write_converted(path: Path, vol: SourceVolume, kspace: np.ndarray, target: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("target", data=target)
        f.attrs.update({
            "source_type": vol.source_type, "source_file": vol.source_file, "site": vol.site, "volume": vol.volume,
            "slice_indices": np.asarray(vol.slice_indices, dtype=np.int64), "max": float(target.max()),
            "norm": float(np.linalg.norm(target)), **{k: str(v) for k, v in vol.extra.items()},
        })


def _entries(vol: SourceVolume, relative: str) -> list[dict]:
    return [
        {"image": relative, "slice": i, "volume": vol.volume, "source_type": vol.source_type,
         "source_file": vol.source_file, "source_slice": raw}
        for i, raw in enumerate(vol.slice_indices)
    ]


def convert(
    raw_sites: dict[str, str | os.PathLike],
    out_root: str | os.PathLike,
    datalist_dir: str | os.PathLike,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    modalities: dict[str, str] | None = None,
    min_foreground: float = 0.05,
    consistency_rtol: float = 0.05,
    slice_range: tuple[int, int] | None = BRATS_SLICE_RANGE,
    max_slices: int | None = None,
    crops: dict[str, int] | None = None,
) -> dict[str, dict[str, int]]:
    """Validate every site, then write the converted tree atomically and one datalist per site.

    Args:
        raw_sites: ``{site name: raw folder}``.
        out_root: converted data root (replaced as a whole); datalist paths are relative to it.
        datalist_dir: where ``<site>.json`` go.
        fractions: training/validation/testing fractions of each site's volumes.
        seed: split seed (the same seed gives the same split).
        modalities: BraTS modality per site (default ``t1``).
        min_foreground: BraTS slices with fewer non-zero pixels are skipped.
        consistency_rtol: tolerance of the k-space/reconstruction agreement check of fastMRI files (0 skips it).
        slice_range: BraTS axial slices read (half-open; default the reference's 40..119; None: all).
        max_slices: at most this many evenly spaced slices per volume (cheap settings; None: all).
        crops: per site, the in-plane centre crop applied at load time (e.g. ``{"site-4": 192}``).

    Returns:
        ``{site: {"training": n_slices, "validation": ..., "testing": ..., "volumes": n}}``.
    """
    if not raw_sites:
        raise DataValidationError("no sites given: pass --raw-root with one folder per site or --site NAME=PATH")
    modalities, crops = modalities or {}, crops or {}
    for what, mapping in (("modalities", modalities), ("crops", crops)):
        unknown = sorted(set(mapping) - set(raw_sites))
        if unknown:
            raise ValueError(f"{what} name unknown sites {unknown}; sites are {sorted(raw_sites)}")
    print("validating raw input ...", flush=True)
    site_volumes = {
        site: find_site_volumes(site, path, modalities.get(site, "t1"), min_foreground, consistency_rtol,
                                slice_range, max_slices, crops.get(site))
        for site, path in raw_sites.items()
    }
    site_splits = {}
    for site, volumes in site_volumes.items():
        parts = split_by_fractions([v.volume for v in volumes], fractions, seed, name=f"site {site!r} volumes")
        site_splits[site] = dict(zip(SPLITS, parts))
    check_splits_non_empty(site_splits, SPLITS, datalist_dir)
    out_root = Path(out_root)
    summary: dict[str, dict[str, int]] = {}
    datalists: dict[str, dict[str, list[dict]]] = {}
    with atomic_dir(out_root, owner=f"{TOOL} convert", protect=list(raw_sites.values())) as tmp:
        for site, volumes in site_volumes.items():
            (tmp / site).mkdir()
            by_id = {v.volume: v for v in volumes}
            datalists[site] = {split: [] for split in SPLITS}
            for vol in progress(volumes, f"converting {site}"):
                kspace, target = load_volume(vol)
                relative = f"{site}/{vol.volume}.h5"
                _write_converted(tmp / relative, vol, kspace, target)
            for split, ids in site_splits[site].items():
                for vid in ids:
                    datalists[site][split].extend(_entries(by_id[vid], f"{site}/{vid}.h5"))
            summary[site] = {split: len(items) for split, items in datalists[site].items()}
            summary[site]["volumes"] = len(volumes)
    descriptions = {
        site: f"FedMRI {site}: slice-level, volume-level splits (seed {seed}); source types "
              f"{sorted({v.source_type for v in site_volumes[site]})}; paths relative to the converted data root"
        for site in datalists
    }
    write_datalists(datalist_dir, out_root, datalists, f"{TOOL} convert", descriptions, require=SPLITS)
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Validation of converted data and datalists
# ----------------------------------------------------------------------------------------------------------------
def validate_datalists(datalist_dir: str | os.PathLike, data_root: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Check every ``<site>.json`` in ``datalist_dir`` against the converted data under ``data_root``.

    Checks: paths stay inside the root and exist; each file has ``kspace`` complex ``[S, N, N]`` and ``target``
    float of the same shape with ``|ifft2c(kspace)| == target``; ``slice`` indexes an existing slice;
    ``source_type`` is known; no volume appears in two splits or in two sites; ``training`` is non-empty.
    """
    datalist_dir = Path(datalist_dir)
    files = sorted(datalist_dir.glob("*.json"))
    if not files:
        raise DataValidationError(f"datalist_dir: no <site>.json in {str(datalist_dir)!r}")
    owner: dict[str, str] = {}
    checked: dict[str, tuple[int, ...]] = {}
    summary = {}
    for dl in files:
        site = dl.stem
        try:
            payload = json.loads(dl.read_text())
        except json.JSONDecodeError as e:
            raise DataValidationError(f"datalist: {str(dl)!r} is not valid JSON: {e}") from e
        if not payload.get("training"):
            raise DataValidationError(f"datalist: {str(dl)!r} has no training entries (empty site)")
        split_of: dict[str, str] = {}
        for split in SPLITS:
            for i, item in enumerate(payload.get(split, [])):
                where = f"{dl.name}:{split}[{i}]"
                for key in ("image", "slice", "volume", "source_type"):
                    if key not in item:
                        raise DataValidationError(f"{where}: field {key!r} missing")
                if item["source_type"] not in SOURCE_TYPES.values():
                    raise DataValidationError(f"{where}.source_type: unknown value {item['source_type']!r}")
                full = check_inside_root(item["image"], data_root, f"{where}.image")
                if not full.is_file():
                    raise DataValidationError(f"{where}.image: {str(full)!r} does not exist")
                if str(full) not in checked:
                    checked[str(full)] = _check_converted_file(full)
                n_slices = checked[str(full)][0]
                if not isinstance(item["slice"], int) or not 0 <= item["slice"] < n_slices:
                    raise DataValidationError(f"{where}.slice: {item['slice']!r} outside [0, {n_slices})")
                key = f"{site}/{item['volume']}"
                if split_of.setdefault(key, split) != split:
                    raise DataValidationError(f"{where}: volume {item['volume']!r} in both {split_of[key]} and {split}")
                if owner.setdefault(str(full), site) != site:
                    raise DataValidationError(f"{where}: {item['image']!r} also listed by site {owner[str(full)]!r}")
        summary[site] = {split: len(payload.get(split, [])) for split in SPLITS}
    return summary


def _check_converted_file(path: Path) -> tuple[int, ...]:
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataValidationError(f"file: cannot open {str(path)!r} as HDF5: {e}") from e
    with f:
        kspace = _dataset(f, "kspace", path)
        target = _dataset(f, "target", path)
        if kspace.dtype.kind != "c" or kspace.ndim != 3:
            raise DataValidationError(
                f"kspace: {str(path)!r} must be complex [S, N, N], got {kspace.dtype} {kspace.shape}"
            )
        if target.dtype.kind != "f" or target.shape != kspace.shape:
            raise DataValidationError(
                f"target: {str(path)!r} must be float shaped like kspace {kspace.shape}, "
                f"got {target.dtype} {target.shape}"
            )
        k, t = kspace[()], target[()]
        if not (np.all(np.isfinite(k)) and np.all(np.isfinite(t))):
            raise DataValidationError(f"kspace/target: {str(path)!r} contains NaN or Inf")
        err = _relative_error(np.abs(ifft2c(k)), t)
        if err > 1e-3:
            raise DataValidationError(f"target: {str(path)!r} differs from |ifft2c(kspace)| (relative error {err:.3g})")
        return tuple(kspace.shape)


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def _site_pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    pairs = {}
    for value in values or []:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"{flag} expects NAME=VALUE, got {value!r}")
        pairs[name] = rest
    return pairs


def _raw_sites(raw_root: str | None, sites: list[str] | None) -> dict[str, str]:
    found: dict[str, str] = {}
    if raw_root:
        root = Path(raw_root)
        if not root.is_dir():
            raise DataValidationError(f"--raw-root: {str(root)!r} is not a folder")
        found = {p.name: str(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    found.update(_site_pairs(sites, "--site"))
    return found


def _generate_arguments(g) -> None:
    from data_prep.synthetic import fedmri as synthetic

    synthetic.build_parser(g)


def _generate(a) -> int:
    from data_prep.synthetic import fedmri as synthetic

    return synthetic.run_from_args(a)


def _convert_arguments(conv) -> None:
    conv.add_argument("--raw-root", default="data/fedmri/raw", help="folder with one sub-folder per site")
    conv.add_argument("--site", action="append", metavar="NAME=PATH", help="add/override a site's raw folder")
    conv.add_argument("--out", default="data/fedmri/converted", help="converted data root (default: %(default)s)")
    conv.add_argument("--datalist-dir", default="datalists/fedmri", help="(default: %(default)s)")
    conv.add_argument("--fractions", type=float, nargs=3, default=list(DEFAULT_FRACTIONS),
                      metavar=("TRAIN", "VAL", "TEST"), help="volume fractions per split (default: %(default)s)")
    conv.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    conv.add_argument("--modality", action="append", metavar="SITE=MOD",
                      help=f"BraTS modality of a site, one of {BRATS_MODALITIES} (default t1)")
    conv.add_argument("--min-foreground", type=float, default=0.05,
                      help="skip BraTS slices with a smaller non-zero fraction (default: %(default)s)")
    conv.add_argument("--consistency-rtol", type=float, default=0.05,
                      help="max relative error between fastMRI kspace and its reconstruction; 0 skips")
    conv.add_argument("--brats-slices", type=int, nargs=2, default=list(BRATS_SLICE_RANGE), metavar=("START", "STOP"),
                      help="BraTS axial slices read, half-open (default: the reference's %(default)s)")
    conv.add_argument("--max-slices", type=int, default=None,
                      help="at most this many evenly spaced slices per volume (cheap runs; default: all)")
    conv.add_argument("--crop", action="append", metavar="SITE=N",
                      help="in-plane centre crop of a site at load time, e.g. site-4=192 (the files keep their size)")


def _validate_arguments(val) -> None:
    val.add_argument("--raw-root", default=None, help="validate raw sites under this folder instead")
    val.add_argument("--site", action="append", metavar="NAME=PATH", help="validate this raw site folder")
    val.add_argument("--modality", action="append", metavar="SITE=MOD")
    val.add_argument("--crop", action="append", metavar="SITE=N", help="as for convert (foreground is measured there)")
    val.add_argument("--data-root", default="data/fedmri/converted", help="(default: %(default)s)")
    val.add_argument("--datalist-dir", default="datalists/fedmri", help="(default: %(default)s)")


def _print_summary(summary: dict[str, dict[str, int]]) -> None:
    for site, counts in summary.items():
        print(f"{site}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _convert(a) -> None:
    _print_summary(convert(_raw_sites(a.raw_root, a.site), a.out, a.datalist_dir, a.fractions, a.seed,
                           _site_pairs(a.modality, "--modality"), a.min_foreground, a.consistency_rtol,
                           tuple(a.brats_slices), a.max_slices,
                           {k: int(v) for k, v in _site_pairs(a.crop, "--crop").items()}))


def _validate(a) -> None:
    if a.raw_root or a.site:
        modalities = _site_pairs(a.modality, "--modality")
        crops = {k: int(v) for k, v in _site_pairs(a.crop, "--crop").items()}
        summary = {site: {"volumes": len(find_site_volumes(site, path, modalities.get(site, "t1"),
                                                           crop=crops.get(site)))}
                   for site, path in _raw_sites(a.raw_root, a.site).items()}
        if not summary:
            raise DataValidationError(f"--raw-root {a.raw_root!r}: no site folders found")
    else:
        summary = validate_datalists(a.datalist_dir, a.data_root)
    _print_summary(summary)


COMMANDS = (
    Command("generate", "write synthetic raw data in the public layouts", _generate_arguments, _generate),
    Command("convert", "validate raw sites, write converted volumes and per-site datalists", _convert_arguments,
            _convert),
    Command("validate", "check raw sites (--raw-root/--site) or converted data and datalists", _validate_arguments,
            _validate),
)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (2 on invalid data, with the reason on stderr)."""
    return run_cli(f"python -m {TOOL}", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
