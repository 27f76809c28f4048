"""ACDC converter: raw release -> preprocessed ED/ES volumes + few-shot and standard datalists.

Raw layout (the public release; ``training/`` and, in the 2020+ release, ``testing/`` with ground truth)::

    <raw>/training/patient001/Info.cfg                    ED: 1, ES: 12, Group, Height, NbFrame, Weight
    <raw>/training/patient001/patient001_4d.nii.gz        (H, W, Z, T) cine
    <raw>/training/patient001/patient001_frame01.nii.gz   ED frame (1-based number from Info.cfg), + _gt
    <raw>/training/patient001/patient001_frame12.nii.gz   ES frame, + _gt      labels 1 RV, 2 MYO, 3 LV

Output (``--out``, the data root of the datalists)::

    <out>/patient001/patient001_{ED,ES}.nii.gz, patient001_{ED,ES}_gt.nii.gz    labels 1 LV, 2 MYO, 3 RV
    <datalist-dir>/acdc_fewshot/site-1.json, <datalist-dir>/acdc_standard/site-1.json

Splits are by subject (ED and ES of a subject always share a split). When all of patient001..patient100 are
present, the reference code's lists are used (``ACDC_few_shot_cv_settings.py``): a fixed 20-subject test set;
"standard" = its fixed 70/10/20 lists; "few-shot" = ``--fewshot-subjects`` (10) subjects drawn by ``--seed`` from
its 40-subject labelled pool, validation = its list for ``--fold``. Deviation: the reference draws the 10 with
scikit-learn's ``train_test_split(random_state=fold)`` and does not exclude the fold's validation subjects, so a
validation subject can also be a training subject; we draw with numpy and exclude them (disjoint splits). With any
other subject set (e.g. synthetic data) the splits are 70/10/20 fractions shuffled by ``--seed``, and few-shot keeps
the first ``--fewshot-subjects`` of the shuffled training part.

    python -m data_prep.acdc generate --out data/raw/acdc
    python -m data_prep.acdc convert --raw data/raw/acdc --out data/acdc
    python -m data_prep.acdc validate --data-root data/acdc
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from data_prep.cardiac_common import (
    ACDC_TO_TARGET,
    ALLOWED_LABELS,
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

__all__ = [
    "AcdcSubject",
    "parse_info_cfg",
    "find_subjects",
    "validate_subject",
    "acdc_splits",
    "convert",
    "main",
]

SETTINGS = ("fewshot", "standard")
SPLITS = ("training", "validation", "testing")
TOOL = "data_prep.acdc"
SITE = site_names(1)[0]
_PID = re.compile(r"^patient\d{3}$")

# The reference code's lists (ACDC_few_shot_cv_settings.py), as 3-digit subject numbers.
PAPER_TEST = ["007", "008", "009", "010", "027", "028", "029", "030", "047", "048", "049", "050",
              "067", "068", "069", "070", "087", "088", "089", "090"]
PAPER_STANDARD_VALIDATION = ["005", "020", "023", "037", "042", "046", "066", "078", "082", "097"]
PAPER_STANDARD_TRAINING = sorted(
    set(f"{i:03d}" for i in range(1, 101)) - set(PAPER_TEST) - set(PAPER_STANDARD_VALIDATION)
)
PAPER_FEWSHOT_POOL = ["001", "002", "003", "004", "005", "006", "012", "013", "021", "022", "023", "024", "025",
                      "026", "032", "033", "041", "042", "043", "044", "045", "046", "052", "053", "061", "062",
                      "063", "064", "065", "066", "072", "073", "081", "082", "083", "084", "085", "086", "092",
                      "093"]
PAPER_FEWSHOT_VALIDATION = {0: ["062", "095", "082"], 1: ["002", "022", "095"], 2: ["002", "062", "095"],
                            3: ["022", "062", "095"], 4: ["022", "062", "082"]}
PAPER_FEWSHOT_VALIDATION_COMMON = ["011", "071"]


@dataclass(frozen=True)
class AcdcSubject:
    """One raw ACDC subject folder and its Info.cfg values (``ed``/``es`` are 1-based frame numbers)."""

    pid: str
    folder: Path
    ed: int
    es: int
    n_frames: int
    group: str

    def frame_paths(self, frame: int) -> tuple[Path, Path]:
        stem = self.folder / f"{self.pid}_frame{frame:02d}"
        return stem.with_name(stem.name + ".nii.gz"), stem.with_name(stem.name + "_gt.nii.gz")


def parse_info_cfg(path: Path) -> dict[str, str]:
    """Read ACDC's ``Info.cfg`` (``Key: value`` lines) into a dict; raise naming the file if unreadable."""
    if not path.is_file():
        raise DataValidationError(f"Info.cfg: file {str(path)!r} does not exist")
    info = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise DataValidationError(f"Info.cfg: {str(path)!r} line {n} is not 'Key: value': {line!r}")
        info[key.strip()] = value.strip()
    return info


def _info_int(info: dict[str, str], key: str, path: Path) -> int:
    if key not in info:
        raise DataValidationError(f"Info.cfg: {str(path)!r} has no field {key!r}")
    try:
        return int(float(info[key]))
    except ValueError:
        raise DataValidationError(f"Info.cfg: {str(path)!r} field {key!r} is not a number: {info[key]!r}") from None


def find_subjects(raw: str | Path) -> list[AcdcSubject]:
    """List ``patientXXX`` folders under ``raw/training``, ``raw/testing`` (or ``raw`` itself), reading Info.cfg."""
    raw = Path(raw)
    if not raw.is_dir():
        raise DataValidationError(f"raw: ACDC folder {str(raw)!r} does not exist")
    parents = [raw / p for p in ("training", "testing") if (raw / p).is_dir()] or [raw]
    folders = sorted((f for p in parents for f in p.iterdir() if f.is_dir() and _PID.match(f.name)),
                     key=lambda f: f.name)
    if not folders:
        raise DataValidationError(f"raw: no patientXXX folders under {str(raw)!r} (expected training/patient001/...)")
    subjects, seen = [], set()
    for folder in folders:
        if folder.name in seen:
            raise DataValidationError(f"raw: subject {folder.name!r} appears twice under {str(raw)!r}")
        seen.add(folder.name)
        cfg = folder / "Info.cfg"
        info = parse_info_cfg(cfg)
        ed, es, n_frames = (_info_int(info, k, cfg) for k in ("ED", "ES", "NbFrame"))
        for key, value in (("ED", ed), ("ES", es)):
            if not 1 <= value <= n_frames:
                raise DataValidationError(f"Info.cfg: {str(cfg)!r} field {key!r}={value} outside 1..NbFrame={n_frames}")
        if ed == es:
            raise DataValidationError(f"Info.cfg: {str(cfg)!r} has ED == ES == {ed}")
        subjects.append(AcdcSubject(folder.name, folder, ed, es, n_frames, info.get("Group", "")))
    return subjects


def validate_subject(subject: AcdcSubject) -> None:
    """Load and check the subject's ED/ES frames and labels (existence, NaN, rank, shape, spacing, affine, labels)."""
    shapes = set()
    for frame in (subject.ed, subject.es):
        img_path, lab_path = subject.frame_paths(frame)
        image, iaffine, izooms = load_nifti(img_path, "image")
        label, laffine, lzooms = load_nifti(lab_path, "label")
        check_image_label_pair(image.shape, label.shape, izooms, lzooms, img_path, lab_path, ndim=3)
        check_same_grid(image.shape, label.shape, iaffine, laffine, img_path, lab_path)
        check_label_values(label, ALLOWED_LABELS, lab_path)
        shapes.add(image.shape)
    cine = subject.folder / f"{subject.pid}_4d.nii.gz"
    if cine.is_file():  # not needed for conversion, but a mismatch means the folder is inconsistent
        shape = nib.load(str(cine)).shape
        if len(shape) != 4 or shape[:3] not in shapes or shape[3] != subject.n_frames:
            raise DataValidationError(
                f"shape: {str(cine)!r} has shape {shape}, expected frames {sorted(shapes)} x NbFrame={subject.n_frames}"
            )


def acdc_splits(pids: list[str], setting: str, seed: int, fold: int = 0, fewshot_subjects: int = 10) -> dict:
    """Return ``{"training", "validation", "testing"}`` lists of subject ids for one setting (see module doc)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    if fold not in PAPER_FEWSHOT_VALIDATION:
        raise ValueError(f"fold must be one of {sorted(PAPER_FEWSHOT_VALIDATION)}, got {fold!r}")
    if fewshot_subjects < 1:
        raise ValueError(f"fewshot_subjects must be >= 1, got {fewshot_subjects!r}")
    paper = {f"patient{i:03d}" for i in range(1, 101)}
    p = "patient{}".format
    if paper <= set(pids):
        test = [p(s) for s in PAPER_TEST]
        if setting == "standard":
            return {"training": [p(s) for s in PAPER_STANDARD_TRAINING],
                    "validation": [p(s) for s in PAPER_STANDARD_VALIDATION], "testing": test}
        val = PAPER_FEWSHOT_VALIDATION_COMMON + PAPER_FEWSHOT_VALIDATION[fold]
        pool = [s for s in PAPER_FEWSHOT_POOL if s not in val]
        if fewshot_subjects > len(pool):
            raise ValueError(f"fewshot_subjects must be <= {len(pool)} (the paper's pool), got {fewshot_subjects}")
        pick = np.random.default_rng(seed).permutation(len(pool))[:fewshot_subjects]
        return {"training": sorted(p(pool[i]) for i in pick), "validation": [p(s) for s in val], "testing": test}
    train, val, test = split_by_fractions(pids, [0.7, 0.1, 0.2], seed, name="ACDC subjects")
    if setting == "fewshot":
        if len(train) < fewshot_subjects:
            print(f"  note: only {len(train)} training subjects available for the {fewshot_subjects}-subject "
                  "few-shot setting; using all of them", flush=True)
        train = train[:fewshot_subjects]
    return {"training": sorted(train), "validation": sorted(val), "testing": sorted(test)}


def convert(
    raw: str | Path,
    out: str | Path,
    datalist_dir: str | Path = "datalists",
    seed: int = 0,
    fold: int = 0,
    fewshot_subjects: int = 10,
    spacing: float = TARGET_SPACING,
) -> dict[str, Path]:
    """Validate every raw subject, then write preprocessed ED/ES volumes and both settings' datalists.

    Returns:
        ``{setting: datalist path}``.
    """
    subjects = find_subjects(raw)
    for subject in progress(subjects, "ACDC validate"):
        validate_subject(subject)
    pids = [s.pid for s in subjects]
    splits = {setting: acdc_splits(pids, setting, seed, fold, fewshot_subjects) for setting in SETTINGS}
    for setting, split in splits.items():
        check_splits_non_empty({SITE: split}, SPLITS, Path(datalist_dir) / f"acdc_{setting}")
    out = Path(out)
    frames: dict[str, list[CardiacFrame]] = {}
    with atomic_dir(out, owner=f"{TOOL} convert", protect=[raw]) as tmp:
        for subject in progress(subjects, "ACDC convert"):
            frames[subject.pid] = []
            for phase, number in (("ED", subject.ed), ("ES", subject.es)):
                img_path, lab_path = subject.frame_paths(number)
                image, affine, _ = load_nifti(img_path, "image")
                label, _, _ = load_nifti(lab_path, "label")
                frame = CardiacFrame(subject.pid, phase, {"group": subject.group, "frame": number})
                write_frame(tmp, frame, image, label, affine, ACDC_TO_TARGET, spacing, str(lab_path))
                frames[subject.pid].append(frame)
    written = {}
    for setting, split in splits.items():
        lists = {k: [f.entry() for pid in v for f in frames[pid]] for k, v in split.items()}
        description = f"ACDC {setting} split (seed {seed}, fold {fold}); labels 1 LV, 2 MYO, 3 RV"
        path = write_datalists(Path(datalist_dir) / f"acdc_{setting}", out, {SITE: lists}, f"{TOOL} convert",
                               {SITE: description}, case_key=lambda item: item["subject"], require=SPLITS)[SITE]
        written[setting] = path
        print(f"  wrote {path}: " + ", ".join(f"{k} {len(v)} subjects" for k, v in split.items()), flush=True)
    return written


def _generate_arguments(gen) -> None:
    gen.add_argument("--out", default="data/raw/acdc", help="raw data set root (default: %(default)s)")
    gen.add_argument("--subjects", type=int, default=20, help="number of subjects (default: %(default)s)")
    gen.add_argument("--slices", type=int, default=8, help="short-axis slices per volume (default: %(default)s)")
    gen.add_argument("--frames", type=int, default=10, help="cine frames per subject (default: %(default)s)")
    gen.add_argument("--seed", type=int, default=0)


def _generate(a) -> None:
    from data_prep.synthetic.cardiac import generate_acdc

    generate_acdc(a.out, a.subjects, a.slices, a.frames, a.seed)
    print(f"synthetic ACDC written to {a.out}")


def _convert_arguments(conv) -> None:
    conv.add_argument("--raw", default="data/raw/acdc", help="folder holding training/ (default: %(default)s)")
    conv.add_argument("--out", default="data/acdc", help="output data root (default: %(default)s)")
    conv.add_argument("--datalist-dir", default="datalists", help="datalists go to DIR/acdc_{fewshot,standard}/")
    conv.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    conv.add_argument("--fold", type=int, default=0, help="the reference's few-shot validation fold 0-4")
    conv.add_argument("--fewshot-subjects", type=int, default=10, help="few-shot training subjects (default: 10)")
    conv.add_argument("--spacing", type=float, default=TARGET_SPACING, help="in-plane spacing in mm")


def _convert(a) -> None:
    convert(a.raw, a.out, a.datalist_dir, a.seed, a.fold, a.fewshot_subjects, a.spacing)


def _validate_arguments(val) -> None:
    val.add_argument("--data-root", default="data/acdc", help="converted data root (default: %(default)s)")
    val.add_argument("--datalist-dir", default="datalists")
    val.add_argument("--spacing", type=float, default=TARGET_SPACING)


def _validate(a) -> None:
    for setting in SETTINGS:
        files = sorted((Path(a.datalist_dir) / f"acdc_{setting}").glob("*.json"))
        n = validate_datalists(files, a.data_root, a.spacing)
        print(f"acdc_{setting}: {len(files)} datalist(s), {n} entries OK")


COMMANDS = (
    Command("generate", "write a synthetic data set in the raw ACDC layout", _generate_arguments, _generate),
    Command("convert", "validate a raw ACDC copy, write ED/ES volumes and datalists", _convert_arguments, _convert),
    Command("validate", "check converted volumes and datalists", _validate_arguments, _validate),
)


def main(argv=None) -> int:
    return run_cli(f"python -m {TOOL}", __doc__.split("\n\n")[0], COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
