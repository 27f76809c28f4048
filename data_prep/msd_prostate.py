"""MSD ``Task05_Prostate`` -> per-site T2 whole-gland volumes and decathlon datalists.

Does what NVFlare's prostate tutorial conversion does, with validation first:
keep the T2 channel, merge PZ (1) and TZ (2) into one whole-gland label, split cases into sites and each
site's cases into training/validation/testing (by case, deterministic by seed, disjoint).

    python -m data_prep.msd_prostate generate --out data/raw            # synthetic Task05 layout
    python -m data_prep.msd_prostate convert --task-dir data/raw/Task05_Prostate --out data/prostate
    python -m data_prep.msd_prostate validate --data-root data/prostate

Real data: download ``Task05_Prostate.tar`` from the Medical Segmentation Decathlon and point ``--task-dir``
at the extracted folder; nothing else changes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from data_prep.cli import Command, run_cli
from data_prep.common import (
    DataValidationError,
    atomic_dir,
    check_cases_disjoint,
    check_inside_root,
    check_label_values,
    check_same_grid,
    check_splits_non_empty,
    load_nifti,
    progress,
    site_names,
    split_by_fractions,
    write_datalists,
)

DATASET = "msd_prostate"
TOOL = f"data_prep.{DATASET}"
RAW_LABELS = (0, 1, 2)
SPLITS = ("training", "validation", "testing")
#: splits the prostate job reads: it trains, scores ``val_dice`` every round, and cross-site evaluates on testing
REQUIRED_SPLITS = SPLITS
T2_CHANNEL = 0


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path
    label: Path


def read_task(task_dir: str | Path) -> list[Case]:
    """Read ``dataset.json`` and return the training cases, checking every referenced file exists."""
    task_dir = Path(task_dir)
    meta_path = task_dir / "dataset.json"
    if not meta_path.is_file():
        raise DataValidationError(f"dataset.json: {str(meta_path)!r} not found (is --task-dir a Task05 folder?)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DataValidationError(f"dataset.json: {str(meta_path)!r} is not valid JSON: {e}") from e
    entries = meta.get("training")
    if not entries:
        raise DataValidationError(f"dataset.json: {str(meta_path)!r} has no 'training' entries")
    cases = []
    for i, entry in enumerate(entries):
        for key in ("image", "label"):
            if key not in entry:
                raise DataValidationError(f"dataset.json: training[{i}] has no {key!r} field")
        image = check_inside_root(entry["image"], task_dir, f"training[{i}].image")
        label = check_inside_root(entry["label"], task_dir, f"training[{i}].label")
        cases.append(Case(image.name.replace(".nii.gz", ""), image, label))
    return cases


def validate_case(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load and check one case; return (t2, whole-gland label, affine)."""
    image, affine, _ = load_nifti(case.image, "image")
    label, label_affine, _ = load_nifti(case.label, "label")
    if image.ndim == 4:
        image = image[..., T2_CHANNEL]
    elif image.ndim != 3:
        raise DataValidationError(f"image: {str(case.image)!r} has rank {image.ndim}, expected 3 or 4 (X,Y,Z[,C])")
    if label.ndim != 3:
        raise DataValidationError(f"label: {str(case.label)!r} has rank {label.ndim}, expected 3")
    check_same_grid(image.shape, label.shape, affine, label_affine, case.image, case.label)
    check_label_values(label, RAW_LABELS, case.label)
    return image.astype(np.float32), (label > 0).astype(np.uint8), affine


def assign_sites(cases: list[Case], n_sites: int, mode: str, seed: int) -> dict[str, list[Case]]:
    """Split cases into ``site-1..site-N``: ``contiguous`` blocks of sorted ids, or ``random`` by seed."""
    if n_sites < 1 or n_sites > len(cases):
        raise DataValidationError(f"n_sites must be in 1..{len(cases)} (number of cases), got {n_sites}")
    ordered = sorted(cases, key=lambda c: c.case_id)
    if mode == "random":
        ordered = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    elif mode != "contiguous":
        raise ValueError(f"split mode must be 'contiguous' or 'random', got {mode!r}")
    return {site: list(chunk) for site, chunk in zip(site_names(n_sites), np.array_split(np.array(ordered), n_sites))}


def convert(
    task_dir: str | Path,
    out_root: str | Path,
    n_sites: int = 3,
    datalist_dir: str | Path = f"datalists/{DATASET}",
    split_mode: str = "contiguous",
    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25),
    seed: int = 0,
) -> dict[str, Path]:
    """Validate every case, then write ``out_root/<site>/{images,labels}`` and one datalist per site."""
    cases = read_task(task_dir)
    print(f"validating {len(cases)} cases in {task_dir}", flush=True)
    for case in progress(cases, "validated"):
        validate_case(case)
    sites = assign_sites(cases, n_sites, split_mode, seed)
    splits = {}
    for s, (site, site_cases) in enumerate(sites.items()):
        by_id = {c.case_id: c for c in site_cases}
        parts = split_by_fractions(list(by_id), fractions, seed + s, name=f"{site} cases")
        splits[site] = {name: [by_id[i] for i in ids] for name, ids in zip(SPLITS, parts)}
    check_splits_non_empty(splits, REQUIRED_SPLITS, datalist_dir)

    out_root = Path(out_root)
    with atomic_dir(out_root, owner=f"{TOOL} convert", protect=[task_dir]) as tmp:
        for site, site_splits in splits.items():
            for sub in ("images", "labels"):
                (tmp / site / sub).mkdir(parents=True)
            for case in progress([c for part in site_splits.values() for c in part], f"{site} written"):
                t2, gland, affine = validate_case(case)
                nib.save(nib.Nifti1Image(t2, affine), tmp / site / "images" / f"{case.case_id}.nii.gz")
                nib.save(nib.Nifti1Image(gland, affine), tmp / site / "labels" / f"{case.case_id}.nii.gz")
    items = {
        site: {
            split: [
                {"image": f"{site}/images/{c.case_id}.nii.gz", "label": f"{site}/labels/{c.case_id}.nii.gz"}
                for c in part
            ]
            for split, part in site_splits.items()
        }
        for site, site_splits in splits.items()
    }
    descriptions = {site: f"MSD Task05 prostate T2 whole gland, {site}" for site in items}
    return write_datalists(datalist_dir, out_root, items, f"{TOOL} convert", descriptions, require=REQUIRED_SPLITS)


def validate(data_root: str | Path, datalist_dir: str | Path = f"datalists/{DATASET}") -> int:
    """Check every converted case listed in the datalists, and that no case is in two splits or sites;
    return the number of cases checked."""
    from src.data.datalist import load_site_datalist

    lists = sorted(Path(datalist_dir).glob("*.json"))
    if not lists:
        raise DataValidationError(f"datalist dir {str(datalist_dir)!r} holds no <site>.json")
    n = 0
    loaded = {}
    for path in lists:
        loaded[path.name] = load_site_datalist(path, data_root)
        for items in loaded[path.name].values():
            for item in items:
                validate_case(Case(Path(item["image"]).name, Path(item["image"]), Path(item["label"])))
                n += 1
        print(f"  {path.name}: ok", flush=True)
    check_cases_disjoint(loaded, lambda item: item["image"], str(datalist_dir))  # no case in two sites
    return n


def _generate_arguments(g) -> None:
    g.add_argument("--out", default="data/raw", help="parent folder of Task05_Prostate/ (default: %(default)s)")
    g.add_argument("--n-train", type=int, default=12, help="training cases (default: %(default)s)")
    g.add_argument("--n-test", type=int, default=2, help="imagesTs cases (default: %(default)s)")
    g.add_argument("--n-scanners", type=int, default=3, help="distinct acquisition profiles (default: %(default)s)")
    g.add_argument("--scale", type=float, default=1.0, help="field-of-view scale, 1.0 ~ 64x64x18 voxels")
    g.add_argument("--seed", type=int, default=0)


def _generate(a) -> None:
    from data_prep.synthetic.msd_prostate import generate

    print(f"wrote {generate(a.out, a.n_train, a.n_test, a.n_scanners, a.seed, a.scale)}")


def _convert_arguments(c) -> None:
    c.add_argument("--task-dir", default="data/raw/Task05_Prostate", help="(default: %(default)s)")
    c.add_argument("--out", default="data/prostate", help="data root to write (default: %(default)s)")
    c.add_argument("--n-sites", type=int, default=3, help="(default: %(default)s)")
    c.add_argument("--datalist-dir", default=f"datalists/{DATASET}", help="(default: %(default)s)")
    c.add_argument("--split-mode", choices=("contiguous", "random"), default="contiguous",
                   help="how cases go to sites; contiguous keeps each synthetic scanner on one site")
    c.add_argument("--fractions", type=float, nargs=3, default=(0.5, 0.25, 0.25),
                   metavar=("TRAIN", "VAL", "TEST"), help="per-site case fractions (default: 0.5 0.25 0.25)")
    c.add_argument("--seed", type=int, default=0)


def _convert(a) -> None:
    written = convert(a.task_dir, a.out, a.n_sites, a.datalist_dir, a.split_mode, tuple(a.fractions), a.seed)
    print("datalists: " + ", ".join(str(p) for p in written.values()))


def _validate_arguments(v) -> None:
    v.add_argument("--data-root", default="data/prostate")
    v.add_argument("--datalist-dir", default=f"datalists/{DATASET}")


COMMANDS = (
    Command("generate", "write synthetic data in the real Task05_Prostate layout", _generate_arguments, _generate),
    Command("convert", "Task05 folder -> per-site T2 whole-gland volumes + datalists", _convert_arguments, _convert),
    Command("validate", "re-check converted data against its datalists", _validate_arguments,
            lambda a: print(f"validated {validate(a.data_root, a.datalist_dir)} cases")),
)


def main(argv=None) -> int:
    return run_cli(f"python -m {TOOL}", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
