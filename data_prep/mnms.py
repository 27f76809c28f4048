"""M&Ms-1 converter: raw release -> preprocessed ED/ES volumes + one datalist per vendor (vendors become sites).

Raw layout (the public "OpenDataset" release)::

    <raw>/211230_M&Ms_Dataset_information_diagnosis_opendataset.csv   (or 201014_..._opendataset.csv)
        columns used: External code, Vendor (A-D), VendorName, Centre, ED, ES (0-based time indices)
    <raw>/Training/Labeled/<code>/<code>_sa.nii.gz, <code>_sa_gt.nii.gz       (H, W, Z, T); gt non-zero at ED/ES
    <raw>/Training/Unlabeled/<code>/<code>_sa.nii.gz                          skipped (no ground truth)
    <raw>/Validation/<code>/..., <raw>/Testing/<code>/...                    with ground truth
    labels 1 LV, 2 MYO, 3 RV (already the bundle's convention)

Output (``--out``, the data root of the datalists)::

    <out>/<code>/<code>_{ED,ES}.nii.gz, <code>_{ED,ES}_gt.nii.gz
    <datalist-dir>/mnms/site-1.json ... site-N.json    (site-k = k-th selected vendor in A-D order)

All labelled cases of a vendor (from Training, Validation and Testing alike) are pooled and split by subject
70/10/20 (``--fractions``) shuffled by ``--seed``; each entry records its original partition. CSV rows whose case
folder is absent are skipped with a note (the CSV lists the whole release).

    python -m data_prep.mnms generate --out data/raw/mnms
    python -m data_prep.mnms convert --raw data/raw/mnms --out data/mnms
    python -m data_prep.mnms validate --data-root data/mnms
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from data_prep.cardiac_common import (
    ALLOWED_LABELS,
    MNMS_TO_TARGET,
    TARGET_SPACING,
    CardiacFrame,
    check_image_label_pair,
    validate_datalists,
    write_frame,
)
from data_prep.cli import Command, run_cli
from data_prep.common import (
    DataValidationError,
    atomic_dir,
    check_label_values,
    check_same_grid,
    check_splits_non_empty,
    load_nifti,
    progress,
    site_names,
    split_by_fractions,
    write_datalists,
)

__all__ = ["MnmsCase", "find_info_csv", "read_info_csv", "find_cases", "validate_case", "convert", "main"]

PARTITIONS = ("Training/Labeled", "Training/Unlabeled", "Validation", "Testing")
UNLABELED = "Training/Unlabeled"
REQUIRED_COLUMNS = ("External code", "Vendor", "ED", "ES")
VENDOR_LETTERS = "ABCD"
SPLITS = ("training", "validation", "testing")
TOOL = "data_prep.mnms"


@dataclass(frozen=True)
class MnmsCase:
    """One subject: its CSV row values (0-based ``ed``/``es``) and its folder in the release."""

    code: str
    vendor: str
    vendor_name: str
    centre: str
    ed: int
    es: int
    partition: str
    folder: Path

    @property
    def image_path(self) -> Path:
        return self.folder / f"{self.code}_sa.nii.gz"

    @property
    def label_path(self) -> Path:
        return self.folder / f"{self.code}_sa_gt.nii.gz"


def find_info_csv(raw: Path) -> Path:
    """Find the release's information CSV (``*M&Ms*nformation*.csv``) in ``raw`` or its parent."""
    for folder in (raw, raw.parent):
        hits = sorted(p for p in folder.glob("*.csv") if "m&ms" in p.name.lower() and "nformation" in p.name)
        if hits:
            return hits[-1]  # the newest dated release file sorts last
    raise DataValidationError(f"info CSV: no '*M&Ms*information*.csv' in {str(raw)!r} or its parent; pass --info-csv")


def _csv_int(row: dict, column: str, path: Path, line: int) -> int:
    try:
        return int(float(row[column]))
    except (TypeError, ValueError):
        raise DataValidationError(
            f"info CSV: {str(path)!r} line {line} column {column!r} is not an integer: {row[column]!r}"
        ) from None


def read_info_csv(path: Path) -> dict[str, dict]:
    """Read the information CSV into ``{code: {"vendor", "vendor_name", "centre", "ed", "es"}}``."""
    if not path.is_file():
        raise DataValidationError(f"info CSV: file {str(path)!r} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataValidationError(f"info CSV: {str(path)!r} lacks column(s) {missing}; has {reader.fieldnames}")
        rows = {}
        for line, row in enumerate(reader, 2):
            code = (row["External code"] or "").strip()
            if not code:
                raise DataValidationError(f"info CSV: {str(path)!r} line {line} has an empty 'External code'")
            if code in rows:
                raise DataValidationError(f"info CSV: {str(path)!r} line {line} repeats External code {code!r}")
            vendor = (row["Vendor"] or "").strip()
            if vendor not in VENDOR_LETTERS or len(vendor) != 1:
                raise DataValidationError(
                    f"info CSV: {str(path)!r} line {line} column 'Vendor' must be one of {list(VENDOR_LETTERS)}, "
                    f"got {vendor!r}"
                )
            rows[code] = {
                "vendor": vendor,
                "vendor_name": (row.get("VendorName") or "").strip(),
                "centre": (row.get("Centre") or "").strip(),
                "ed": _csv_int(row, "ED", path, line),
                "es": _csv_int(row, "ES", path, line),
            }
    if not rows:
        raise DataValidationError(f"info CSV: {str(path)!r} has no rows")
    return rows


def find_cases(raw: str | Path, info_csv: str | Path | None = None) -> tuple[list[MnmsCase], list[str]]:
    """Match case folders to CSV rows; return (labelled cases, notes about skipped ones)."""
    raw = Path(raw)
    if not raw.is_dir():
        raise DataValidationError(f"raw: M&Ms folder {str(raw)!r} does not exist")
    csv_path = Path(info_csv) if info_csv else find_info_csv(raw)
    rows = read_info_csv(csv_path)
    cases, notes, seen = [], [], {}
    for partition in PARTITIONS:
        folder = raw / partition
        if not folder.is_dir():
            continue
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            code = case_dir.name
            if code in seen:
                raise DataValidationError(f"raw: case {code!r} is in both {seen[code]!r} and {partition!r}")
            seen[code] = partition
            if code not in rows:
                raise DataValidationError(
                    f"raw: case folder {str(case_dir)!r} has no row in {str(csv_path)!r} (ED/ES unknown)"
                )
            if partition == UNLABELED:
                continue
            r = rows[code]
            cases.append(MnmsCase(code, r["vendor"], r["vendor_name"], r["centre"], r["ed"], r["es"], partition,
                                  case_dir))
    if not seen:
        raise DataValidationError(f"raw: no case folders under {str(raw)!r} in any of {list(PARTITIONS)}")
    n_unlabeled = sum(p == UNLABELED for p in seen.values())
    if n_unlabeled:
        notes.append(f"skipped {n_unlabeled} unlabelled case(s) in {UNLABELED}")
    absent = sorted(set(rows) - set(seen))
    if absent:
        notes.append(f"{len(absent)} CSV row(s) have no case folder (e.g. {absent[0]}); skipped")
    return cases, notes


def validate_case(case: MnmsCase) -> None:
    """Load and check one case: files, NaNs, 4-D rank, shape, spacing and affine match, ED/ES in range, labels."""
    image, iaffine, izooms = load_nifti(case.image_path, "image")
    label, laffine, lzooms = load_nifti(case.label_path, "label")
    check_image_label_pair(image.shape, label.shape, izooms, lzooms, case.image_path, case.label_path, ndim=4)
    check_same_grid(image.shape, label.shape, iaffine, laffine, case.image_path, case.label_path)
    n_frames = label.shape[3]
    for name, t in (("ED", case.ed), ("ES", case.es)):
        if not 0 <= t < n_frames:
            raise DataValidationError(
                f"info CSV: case {case.code!r} column {name!r}={t} outside 0..{n_frames - 1} "
                f"of {str(case.image_path)!r}"
            )
        if not np.any(label[..., t]):
            raise DataValidationError(
                f"label: {str(case.label_path)!r} is empty at {name} time point {t} (wrong ED/ES in the CSV?)"
            )
    if case.ed == case.es:
        raise DataValidationError(f"info CSV: case {case.code!r} has ED == ES == {case.ed}")
    check_label_values(label, ALLOWED_LABELS, case.label_path)


def _load_frame(path: Path, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Return time point ``t`` of a 4-D NIfTI and its (spatial) affine."""
    img = nib.load(str(path))
    return np.asarray(img.dataobj[..., t]), img.affine


def convert(
    raw: str | Path,
    out: str | Path,
    datalist_dir: str | Path = "datalists",
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    vendors: str | None = None,
    info_csv: str | Path | None = None,
    spacing: float = TARGET_SPACING,
) -> dict[str, Path]:
    """Validate every labelled case, then write preprocessed ED/ES volumes and one datalist per vendor.

    Args:
        vendors: vendor letters to make sites of (default: every vendor with labelled cases, A-D order).

    Returns:
        ``{site name: datalist path}``.
    """
    cases, notes = find_cases(raw, info_csv)
    for note in notes:
        print(f"  note: {note}", flush=True)
    for case in progress(cases, "M&Ms validate"):
        validate_case(case)
    present = sorted({c.vendor for c in cases})
    chosen = sorted(vendors) if vendors else present
    bad = [v for v in chosen if v not in VENDOR_LETTERS]
    if bad:
        raise ValueError(f"vendors must be letters from {VENDOR_LETTERS}, got {vendors!r}")
    sites = dict(zip(chosen, site_names(len(chosen))))
    splits = {}
    for vendor, site in sites.items():
        codes = [c.code for c in cases if c.vendor == vendor]
        if not codes:
            raise DataValidationError(f"site {site!r} (vendor {vendor!r}) has no labelled cases: empty site")
        parts = split_by_fractions(codes, list(fractions), seed, name=f"vendor {vendor} cases")
        splits[vendor] = dict(zip(SPLITS, (sorted(p) for p in parts)))
    check_splits_non_empty({sites[v]: parts for v, parts in splits.items()}, SPLITS, Path(datalist_dir) / "mnms")
    out = Path(out)
    frames: dict[str, list[CardiacFrame]] = {}
    selected = [c for c in cases if c.vendor in sites]
    with atomic_dir(out, owner=f"{TOOL} convert", protect=[raw]) as tmp:
        for case in progress(selected, "M&Ms convert"):
            frames[case.code] = []
            for phase, t in (("ED", case.ed), ("ES", case.es)):
                image, affine = _load_frame(case.image_path, t)
                label, _ = _load_frame(case.label_path, t)
                meta = {"vendor": case.vendor, "vendor_name": case.vendor_name, "centre": case.centre,
                        "partition": case.partition, "time_index": t}
                frame = CardiacFrame(case.code, phase, meta)
                write_frame(tmp, frame, image, label, affine, MNMS_TO_TARGET, spacing, str(case.label_path))
                frames[case.code].append(frame)
    lists, descriptions = {}, {}
    for vendor, site in sites.items():
        lists[site] = {k: [f.entry() for code in v for f in frames[code]] for k, v in splits[vendor].items()}
        name = next((c.vendor_name for c in cases if c.vendor == vendor and c.vendor_name), "")
        descriptions[site] = f"M&Ms vendor {vendor} {name} (seed {seed}); labels 1 LV, 2 MYO, 3 RV"
    written = write_datalists(Path(datalist_dir) / "mnms", out, lists, f"{TOOL} convert", descriptions,
                              case_key=lambda item: item["subject"], require=SPLITS)
    for vendor, site in sites.items():
        print(f"  wrote {written[site]} (vendor {vendor}): "
              + ", ".join(f"{k} {len(v)} subjects" for k, v in splits[vendor].items()), flush=True)
    return written


def _fractions(text: str) -> tuple[float, float, float]:
    parts = [float(x) for x in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"need three comma-separated fractions, got {text!r}")
    return tuple(parts)


def _generate_arguments(gen) -> None:
    gen.add_argument("--out", default="data/raw/mnms", help="raw data set root (default: %(default)s)")
    gen.add_argument("--subjects-per-vendor", type=int, default=4, help="labelled subjects per vendor (default: 4)")
    gen.add_argument("--vendors", default="ABCD", help="vendor letters (default: %(default)s)")
    gen.add_argument("--unlabeled", type=int, default=1, help="unlabelled vendor-C cases in Training/Unlabeled")
    gen.add_argument("--slices", type=int, default=8, help="short-axis slices per volume (default: %(default)s)")
    gen.add_argument("--frames", type=int, default=10, help="cine frames per subject (default: %(default)s)")
    gen.add_argument("--seed", type=int, default=0)


def _generate(a) -> None:
    from data_prep.synthetic.cardiac import generate_mnms

    generate_mnms(a.out, a.subjects_per_vendor, a.vendors, a.unlabeled, a.slices, a.frames, a.seed)
    print(f"synthetic M&Ms written to {a.out}")


def _convert_arguments(conv) -> None:
    conv.add_argument("--raw", default="data/raw/mnms", help="folder holding Training/ (default: %(default)s)")
    conv.add_argument("--out", default="data/mnms", help="output data root (default: %(default)s)")
    conv.add_argument("--datalist-dir", default="datalists", help="datalists go to DIR/mnms/site-k.json")
    conv.add_argument("--info-csv", default=None, help="information CSV (default: found in --raw or its parent)")
    conv.add_argument("--vendors", default=None, help="vendor letters to make sites of (default: all present)")
    conv.add_argument("--fractions", type=_fractions, default=(0.7, 0.1, 0.2), help="train,val,test per vendor")
    conv.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    conv.add_argument("--spacing", type=float, default=TARGET_SPACING, help="in-plane spacing in mm")


def _convert(a) -> None:
    convert(a.raw, a.out, a.datalist_dir, a.seed, a.fractions, a.vendors, a.info_csv, a.spacing)


def _validate_arguments(val) -> None:
    val.add_argument("--data-root", default="data/mnms", help="converted data root (default: %(default)s)")
    val.add_argument("--datalist-dir", default="datalists")
    val.add_argument("--spacing", type=float, default=TARGET_SPACING)


def _validate(a) -> None:
    files = sorted((Path(a.datalist_dir) / "mnms").glob("*.json"))
    n = validate_datalists(files, a.data_root, a.spacing)
    print(f"mnms: {len(files)} datalist(s), {n} entries OK")


COMMANDS = (
    Command("generate", "write a synthetic data set in the raw M&Ms-1 layout", _generate_arguments, _generate),
    Command("convert", "validate a raw M&Ms copy, write ED/ES volumes and per-vendor datalists", _convert_arguments,
            _convert),
    Command("validate", "check converted volumes and datalists", _validate_arguments, _validate),
)


def main(argv=None) -> int:
    return run_cli(f"python -m {TOOL}", __doc__.split("\n\n")[0], COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
