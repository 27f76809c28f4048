"""Synthetic cine short-axis cardiac MRI written in the real ACDC and M&Ms raw layouts.

Each subject is a 4-D cine stack (H, W, Z, T): an LV blood pool, a myocardial ring around it and a crescent
RV on the septal side, tapering from base to apex. The cavities contract from end-diastole (ED) to end-systole
(ES) while the myocardial area is conserved (so the wall thickens), as in real cine MRI. Appearance (gain, gamma,
bias field, blur, noise, pixel spacing, matrix) differs per vendor so that M&Ms vendors form distinct domains.

Raw layouts written (checked against the data sets' documentation and public loaders):

ACDC (``<root>/training/patientXXX/``, patients numbered from 001)::

    Info.cfg                      "ED: 1" / "ES: 12" / "Group: DCM" / "Height: 184.0" / "NbFrame: 30" / "Weight: 95.0"
    patientXXX_4d.nii.gz          (H, W, Z, T) cine, int16
    patientXXX_frameYY.nii.gz     ED and ES frames, YY = the 1-based frame number from Info.cfg
    patientXXX_frameYY_gt.nii.gz  labels 0 background, 1 RV, 2 MYO, 3 LV (uint8)

M&Ms-1 (``<root>/``)::

    211230_M&Ms_Dataset_information_diagnosis_opendataset.csv   External code, VendorName, Vendor, Centre, ED, ES, ...
    Training/Labeled/<code>/<code>_sa.nii.gz, <code>_sa_gt.nii.gz
    Training/Unlabeled/<code>/<code>_sa.nii.gz                   (no ground truth, as in the real release)
    Validation/<code>/..., Testing/<code>/...                    (with ground truth)

M&Ms ED/ES are 0-based time indices into the 4-D stack; the 4-D ground truth is non-zero only at ED and ES, with
labels 1 LV, 2 MYO, 3 RV. As in the real release, vendors A and B are labelled in Training, C appears unlabelled
in Training, and every vendor appears in Validation and Testing.

The phantoms are for exercising pipelines (shapes, labels, domain shift between sites), not for judging
segmentation accuracy: anatomy is idealised (circles and crescents, no papillary muscles, trabeculae or lungs).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from data_prep.common import atomic_dir, progress

__all__ = [
    "ACDC_GROUPS",
    "MNMS_CSV_NAME",
    "MNMS_CSV_COLUMNS",
    "VENDORS",
    "Appearance",
    "HeartShape",
    "render_cine",
    "generate_acdc",
    "generate_mnms",
]

ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")
# Label values in each raw data set (the converters remap to 1 LV, 2 MYO, 3 RV).
_ACDC_RAW = {"RV": 1, "MYO": 2, "LV": 3}
_MNMS_RAW = {"LV": 1, "MYO": 2, "RV": 3}

MNMS_CSV_NAME = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
MNMS_CSV_COLUMNS = ("External code", "VendorName", "Vendor", "Centre", "ED", "ES", "Pathology", "Sex", "Age",
                    "Height", "Weight")


@dataclass(frozen=True)
class Appearance:
    """Scanner appearance of one site/vendor.

    Args:
        spacing: in-plane pixel spacing in mm.
        matrix: in-plane matrix size (square).
        slice_thickness: through-plane spacing in mm.
        gain: stored intensity of the brightest tissue (blood).
        gamma: contrast curve applied to the [0, 1] tissue image.
        bias: peak relative amplitude of the smooth multiplicative bias field.
        blur: Gaussian blur sigma in pixels (partial volume / reconstruction filter).
        noise: Rician noise sigma relative to the blood intensity.
    """

    spacing: float
    matrix: int
    slice_thickness: float
    gain: float
    gamma: float
    bias: float
    blur: float
    noise: float


# Vendor letters and names as in the M&Ms information CSV; appearance values are synthetic choices.
VENDORS: dict[str, tuple[str, tuple[int, ...], Appearance]] = {
    "A": ("Siemens", (1,), Appearance(1.32, 104, 10.0, 900.0, 1.0, 0.15, 0.6, 0.03)),
    "B": ("Philips", (2, 3), Appearance(1.25, 112, 9.0, 2500.0, 0.8, 0.30, 0.4, 0.05)),
    "C": ("GE", (4,), Appearance(1.45, 96, 10.0, 400.0, 1.3, 0.20, 0.9, 0.04)),
    "D": ("Canon", (5,), Appearance(1.20, 120, 10.0, 1200.0, 1.15, 0.40, 0.7, 0.07)),
}
ACDC_APPEARANCE = Appearance(1.5625, 96, 10.0, 600.0, 1.0, 0.20, 0.6, 0.04)


@dataclass(frozen=True)
class HeartShape:
    """Per-subject anatomy in mm at end-diastole and its systolic contraction.

    Args:
        lv_radius: LV cavity radius at the base (ED).
        wall: myocardial wall thickness at the base (ED).
        rv_width: largest thickness of the RV crescent outside the LV epicardium (ED).
        rv_span: half the angle the RV crescent wraps around the LV, radians.
        rv_angle: direction of the RV from the LV centre, radians.
        centre: (x, y) offset of the LV centre from the image centre, mm.
        lv_es_scale: LV cavity radius scale at ES (radius ratio; ejection fraction ~ 1 - scale**2).
        rv_es_scale: RV crescent thickness scale at ES.
    """

    lv_radius: float
    wall: float
    rv_width: float
    rv_span: float
    rv_angle: float
    centre: tuple[float, float]
    lv_es_scale: float
    rv_es_scale: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> HeartShape:
        return cls(
            lv_radius=float(rng.uniform(20.0, 28.0)),
            wall=float(rng.uniform(7.0, 11.0)),
            rv_width=float(rng.uniform(14.0, 22.0)),
            rv_span=float(rng.uniform(1.1, 1.5)),
            rv_angle=float(math.pi + rng.uniform(-0.35, 0.35)),
            centre=(float(rng.uniform(-8, 8)), float(rng.uniform(-8, 8))),
            lv_es_scale=float(rng.uniform(0.6, 0.8)),
            rv_es_scale=float(rng.uniform(0.75, 0.9)),
        )


def _contraction(n_frames: int, ed: int, es: int) -> np.ndarray:
    """Contraction in [0, 1] per frame: 0 at ED, 1 at ES, smooth and periodic over the cycle (0-based ed, es)."""
    phase = ((np.arange(n_frames) - ed) % n_frames) / n_frames
    p_es = ((es - ed) % n_frames) / n_frames
    return np.where(
        phase <= p_es,
        np.sin(0.5 * np.pi * phase / p_es) ** 2,
        np.cos(0.5 * np.pi * (phase - p_es) / (1.0 - p_es)) ** 2,
    )


def _systole_frames(n_frames: int, rng: np.random.Generator) -> int:
    """Frames from ED to ES: about a third to a half of the cycle, and always 1..n_frames-1."""
    low = max(1, n_frames // 3)
    high = min(n_frames - 1, max(low, n_frames // 2))
    return int(rng.integers(low, high + 1))


def _slice_labels(x: np.ndarray, y: np.ndarray, shape: HeartShape, taper: float, c: float, rv_on: bool):
    """Return boolean (lv, myo, rv) masks of one slice on mm coordinate grids ``x``, ``y`` (H, W)."""
    lv_r = shape.lv_radius * taper * (1.0 - c * (1.0 - shape.lv_es_scale))
    epi_ed = shape.lv_radius * taper + shape.wall * taper
    myo_area = math.pi * (epi_ed**2 - (shape.lv_radius * taper) ** 2)
    epi_r = math.sqrt(lv_r**2 + myo_area / math.pi)  # myocardial area is conserved, so the wall thickens at ES
    dx, dy = x - shape.centre[0], y - shape.centre[1]
    r = np.hypot(dx, dy)
    lv = r < lv_r
    myo = (r >= lv_r) & (r < epi_r)
    rv = np.zeros_like(lv)
    if rv_on:
        # crescent hugging the septum: thickest along rv_angle, thinning to zero at +-rv_span
        width = shape.rv_width * taper * (1.0 - c * (1.0 - shape.rv_es_scale))
        off = np.angle(np.exp(1j * (np.arctan2(dy, dx) - shape.rv_angle)))
        profile = np.sqrt(np.clip(np.cos(0.5 * np.pi * off / shape.rv_span), 0.0, None))
        rv = (np.abs(off) < shape.rv_span) & (r >= epi_r) & (r < epi_r + width * profile)
    return lv, myo, rv


def render_cine(
    shape: HeartShape,
    look: Appearance,
    n_slices: int,
    n_frames: int,
    ed: int,
    es: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one subject's cine stack.

    Args:
        shape: the subject's anatomy.
        look: the site's appearance.
        n_slices: short-axis slices from base (index 0) to apex.
        n_frames: time frames over one cardiac cycle.
        ed, es: 0-based ED and ES frame indices.
        rng: random generator for texture and noise.

    Returns:
        image (H, W, Z, T) int16 and labels (H, W, Z, T) uint8 with 1 LV, 2 MYO, 3 RV (every frame labelled; the
        writers keep only what the real data sets annotate).
    """
    n = look.matrix
    coords = (np.arange(n) - (n - 1) / 2.0) * look.spacing
    x, y = np.meshgrid(coords, coords, indexing="ij")
    contraction = _contraction(n_frames, ed, es)
    labels = np.zeros((n, n, n_slices, n_frames), np.uint8)
    for z in range(n_slices):
        frac = z / max(n_slices - 1, 1)
        taper = 1.0 - 0.55 * frac**1.5
        rv_on = frac < 0.8  # the RV does not reach the apex
        for t in range(n_frames):
            lv, myo, rv = _slice_labels(x, y, shape, taper, float(contraction[t]), rv_on)
            labels[..., z, t][lv] = _MNMS_RAW["LV"]
            labels[..., z, t][myo] = _MNMS_RAW["MYO"]
            labels[..., z, t][rv] = _MNMS_RAW["RV"]

    # tissue image in [0, 1]: bright blood, dark myocardium, textured surroundings inside an elliptic body
    body = (x / (0.46 * n * look.spacing)) ** 2 + (y / (0.40 * n * look.spacing)) ** 2 < 1.0
    texture = ndimage.gaussian_filter(rng.standard_normal((n, n)), 3.0)
    texture = 0.45 + 0.15 * texture / (np.abs(texture).max() + 1e-8)
    background = np.where(body, texture, 0.02)[..., None, None]
    tissue_of_label = np.array([0.0, 0.95, 0.22, 0.88])  # background (replaced below), LV, MYO, RV
    tissue = np.where(labels == 0, background, tissue_of_label[labels])
    if look.blur > 0:
        tissue = ndimage.gaussian_filter(tissue, sigma=(look.blur, look.blur, 0, 0))
    tissue = np.clip(tissue, 0.0, 1.0) ** look.gamma
    gx, gy = rng.uniform(-1, 1, size=2)
    bias = 1.0 + look.bias * (gx * x + gy * y) / (np.abs(coords).max() * math.sqrt(2))
    tissue = tissue * bias[..., None, None]
    noise = look.noise * (rng.standard_normal(tissue.shape) + 1j * rng.standard_normal(tissue.shape))
    image = np.abs(tissue + noise) * look.gain  # magnitude images carry Rician noise
    return np.round(image).astype(np.int16), labels


def _affine(look: Appearance) -> np.ndarray:
    aff = np.diag([look.spacing, look.spacing, look.slice_thickness, 1.0])
    aff[:3, 3] = [-(look.matrix - 1) / 2 * look.spacing, -(look.matrix - 1) / 2 * look.spacing, 0.0]
    return aff


def _save(array: np.ndarray, affine: np.ndarray, zooms: tuple[float, ...], path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm", "msec")
    nib.save(img, str(path))


def _remap(labels: np.ndarray, raw: dict[str, int]) -> np.ndarray:
    lut = np.zeros(4, np.uint8)
    for name, value in _MNMS_RAW.items():
        lut[value] = raw[name]
    return lut[labels]


def generate_acdc(
    out_dir: str | Path,
    n_subjects: int = 20,
    n_slices: int = 8,
    n_frames: int = 10,
    seed: int = 0,
    overwrite: bool = True,
) -> Path:
    """Write ``n_subjects`` synthetic subjects in the ACDC layout under ``out_dir/training``.

    Args:
        out_dir: data set root (the folder holding ``training/``).
        n_subjects: subjects patient001..patientN.
        n_slices, n_frames: stack size per subject (real ACDC: 6-18 slices, 12-35 frames).
        seed: every subject is drawn from ``default_rng([seed, subject])``.
        overwrite: replace an existing ``out_dir``.
    """
    if n_subjects < 1 or n_slices < 2 or n_frames < 3:
        raise ValueError(f"need n_subjects>=1, n_slices>=2, n_frames>=3, got {n_subjects}, {n_slices}, {n_frames}")
    look = ACDC_APPEARANCE
    zooms = (look.spacing, look.spacing, look.slice_thickness, 25.0)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite, owner="data_prep.acdc generate", marker_beside=True) as tmp:
        for i in progress(range(1, n_subjects + 1), "ACDC subjects"):
            rng = np.random.default_rng([seed, i])
            pid = f"patient{i:03d}"
            ed = 0  # ACDC's ED is almost always the first frame
            es = ed + _systole_frames(n_frames, rng)
            image, labels = render_cine(HeartShape.random(rng), look, n_slices, n_frames, ed, es, rng)
            labels = _remap(labels, _ACDC_RAW)
            case = tmp / "training" / pid
            case.mkdir(parents=True)
            group = ACDC_GROUPS[(i - 1) % len(ACDC_GROUPS)]
            (case / "Info.cfg").write_text(
                f"ED: {ed + 1}\nES: {es + 1}\nGroup: {group}\nHeight: {rng.uniform(150, 195):.1f}\n"
                f"NbFrame: {n_frames}\nWeight: {rng.uniform(50, 110):.1f}\n"
            )
            aff = _affine(look)
            _save(image, aff, zooms, case / f"{pid}_4d.nii.gz")
            for t in (ed, es):
                _save(image[..., t], aff, zooms[:3], case / f"{pid}_frame{t + 1:02d}.nii.gz")
                _save(labels[..., t], aff, zooms[:3], case / f"{pid}_frame{t + 1:02d}_gt.nii.gz")
    return out_dir


def _mnms_codes(n: int, rng: np.random.Generator) -> list[str]:
    """Unique 6-character external codes shaped like the real ones (e.g. ``A0S9V9``)."""
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    codes: list[str] = []
    while len(codes) < n:
        code = rng.choice(alphabet[:26]) + "".join(rng.choice(alphabet, 5))
        if code not in codes:
            codes.append(code)
    return codes


def _mnms_partition(vendor: str, index: int) -> str:
    """Mirror the real release: A/B labelled in Training, C/D only in Validation/Testing."""
    if vendor in ("A", "B"):
        return ("Training/Labeled", "Training/Labeled", "Validation", "Testing")[index % 4]
    return ("Validation", "Testing")[index % 2]


def generate_mnms(
    out_dir: str | Path,
    subjects_per_vendor: int = 4,
    vendors: str = "ABCD",
    unlabeled: int = 1,
    n_slices: int = 8,
    n_frames: int = 10,
    seed: int = 0,
    overwrite: bool = True,
) -> Path:
    """Write a synthetic M&Ms-1 release under ``out_dir`` (partition folders + information CSV).

    Args:
        out_dir: data set root (holds ``Training/``, ``Validation/``, ``Testing/`` and the CSV).
        subjects_per_vendor: labelled subjects per vendor.
        vendors: vendor letters to include, from ``ABCD``.
        unlabeled: extra vendor-C subjects in ``Training/Unlabeled`` (image only), as in the real release.
        n_slices, n_frames: stack size per subject (real M&Ms: ~10-13 slices, 20-35 frames).
        seed: subject k is drawn from ``default_rng([seed, k])``.
        overwrite: replace an existing ``out_dir``.
    """
    bad = sorted(set(vendors) - set(VENDORS))
    if bad or not vendors:
        raise ValueError(f"vendors must be letters from {''.join(VENDORS)}, got {vendors!r}")
    if subjects_per_vendor < 1 or n_slices < 2 or n_frames < 3 or unlabeled < 0:
        raise ValueError(
            f"need subjects_per_vendor>=1, n_slices>=2, n_frames>=3, unlabeled>=0, got "
            f"{subjects_per_vendor}, {n_slices}, {n_frames}, {unlabeled}"
        )
    plan = [(v, i, _mnms_partition(v, i)) for v in sorted(vendors) for i in range(subjects_per_vendor)]
    plan += [("C", subjects_per_vendor + j, "Training/Unlabeled") for j in range(unlabeled)]
    codes = _mnms_codes(len(plan), np.random.default_rng([seed, 10**6]))
    out_dir = Path(out_dir)
    rows = []
    with atomic_dir(out_dir, overwrite=overwrite, owner="data_prep.mnms generate", marker_beside=True) as tmp:
        for k, ((vendor, index, partition), code) in enumerate(progress(list(zip(plan, codes)), "M&Ms subjects")):
            rng = np.random.default_rng([seed, k])
            name, centres, look = VENDORS[vendor]
            # some vendors start the cine at end-systole's far side: ED is then the last frame
            ed = n_frames - 1 if vendor == "B" and index % 2 else 0
            es = (ed + _systole_frames(n_frames, rng)) % n_frames
            image, labels = render_cine(HeartShape.random(rng), look, n_slices, n_frames, ed, es, rng)
            keep = np.zeros(n_frames, bool)
            keep[[ed, es]] = True
            labels[..., ~keep] = 0  # the real 4-D ground truth is annotated at ED and ES only
            case = tmp / partition / code
            case.mkdir(parents=True)
            aff = _affine(look)
            zooms = (look.spacing, look.spacing, look.slice_thickness, 30.0)
            _save(image, aff, zooms, case / f"{code}_sa.nii.gz")
            if partition != "Training/Unlabeled":
                _save(labels, aff, zooms, case / f"{code}_sa_gt.nii.gz")
            rows.append({
                "External code": code, "VendorName": name, "Vendor": vendor, "Centre": centres[index % len(centres)],
                "ED": ed, "ES": es, "Pathology": "NOR", "Sex": "FM"[k % 2], "Age": int(rng.integers(20, 80)),
                "Height": round(float(rng.uniform(150, 195)), 1), "Weight": round(float(rng.uniform(50, 110)), 1),
            })
        with open(tmp / MNMS_CSV_NAME, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(MNMS_CSV_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
    return out_dir
