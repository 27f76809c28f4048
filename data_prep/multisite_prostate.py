"""Multi-site prostate T2 MRI (SAML collection, as used by IOP-FL) -> 2.5-D slices and per-site datalists.

Raw layout: ``<raw>/<SITE>/CaseXX.nii.gz`` + ``CaseXX_segmentation.nii.gz`` (capitalisation varies by site).
For every case: labels binarised (prostate > 0), intensities z-scored over the volume, then every slice ``i``
stored as ``<out>/<site>/<case>/slice_XXX_image.npy`` (3,H,W float32: slices i-1, i, i+1, edges replicated)
and ``slice_XXX_label.npy`` (1,H,W uint8). Only slices with prostate are kept (the reference's choice) unless
``--keep-empty-slices``. In-plane size is resampled to ``--size`` (the reference asserts 384x384 on real data).
Splits are by case: the reference's lists verbatim when a site holds exactly the reference's cases, otherwise
a deterministic split with the reference's proportions (60/17/23 %).

    python -m data_prep.multisite_prostate generate --out data/raw/multisite_prostate
    python -m data_prep.multisite_prostate convert --raw data/raw/multisite_prostate --out data/multisite_prostate
    python -m data_prep.multisite_prostate validate --data-root data/multisite_prostate

Deviations from the reference (``utils/data_preprocess.py``): edge slices repeat the edge slice instead of
taking (0,0,1) / (i-2,i-1,i); intensities are z-scored per volume (the reference's ``normalize`` is never called,
but its test-time noise sigma=0.5 assumes unit-scale input).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.cli import Command, run_cli
from data_prep.common import (
    DataValidationError,
    atomic_dir,
    check_cases_disjoint,
    check_label_values,
    check_same_grid,
    check_splits_non_empty,
    load_nifti,
    progress,
    split_by_fractions,
    write_datalists,
)
from src.data.slices import check_slice_pair

DATASET = "multisite_prostate"
TOOL = f"data_prep.{DATASET}"
#: raw label values accepted: background, gland, and a second zone label that the reference merges into the gland
#: (``label > 1 -> 1``); anything else (7, 255, ...) means a wrong or corrupt file and is rejected, never remapped
RAW_LABELS = (0, 1, 2)
RAW_SITES = ("BIDMC", "HK", "I2CVB", "ISBI", "ISBI_1.5", "UCL")
SPLITS = ("training", "validation", "testing")
#: the reference's case proportions per split (BIDMC 7/2/3 ... ISBI 19/5/6)
FRACTIONS = (0.6, 0.17, 0.23)
#: the reference's split lists (med-air/IOP-FL ``dataset/Prostate/preprocessed/<SITE>_{train,val,test}.txt``)
REFERENCE_SPLITS = {
    "BIDMC": ([11, 2, 6, 12, 4, 5, 0], [7, 9], [10, 8, 3]),
    "HK": ([42, 46, 40, 47, 43, 41, 39], [44, 38], [49, 45, 48]),
    "I2CVB": ([17, 16, 15, 11, 10, 9, 8, 13, 5, 3, 1, 0], [7, 4, 2], [18, 12, 6, 14]),
    "ISBI": (
        [8, 14, 9, 19, 1, 20, 16, 22, 12, 11, 24, 26, 28, 25, 6, 27, 18, 0, 21],
        [23, 10, 3, 29, 2],
        [7, 13, 17, 4, 5, 15],
    ),
    "ISBI_1.5": (
        [10, 0, 12, 9, 22, 13, 26, 15, 8, 19, 6, 5, 23, 4, 21, 1, 11, 2, 14],
        [28, 25, 7, 20, 24],
        [18, 27, 29, 16, 17, 3],
    ),
    "UCL": ([29, 31, 30, 34, 28, 27, 1, 26], [35, 32], [33, 37, 36]),
}
_IMAGE = re.compile(r"^case(\d+)\.nii(\.gz)?$", re.IGNORECASE)
_SEG = re.compile(r"^case(\d+)_segmentation\.nii(\.gz)?$", re.IGNORECASE)


def site_id(raw_site: str) -> str:
    """NVFlare client names allow ``[A-Za-z0-9_-]`` only: ``ISBI_1.5`` becomes ``ISBI_1_5``."""
    return raw_site.replace(".", "_")


@dataclass(frozen=True)
class Case:
    site: str
    case_id: str  # "Case07", canonical capitalisation
    image: Path
    label: Path


def find_cases(raw_dir: str | Path, sites: tuple[str, ...] = RAW_SITES) -> dict[str, list[Case]]:
    """Pair every ``CaseXX`` image with its segmentation (names matched case-insensitively)."""
    raw_dir = Path(raw_dir)
    out = {}
    for site in sites:
        folder = raw_dir / site
        if not folder.is_dir():
            raise DataValidationError(f"site {site!r}: folder {str(folder)!r} does not exist")
        images, segs = {}, {}
        for path in folder.iterdir():
            for pattern, table in ((_IMAGE, images), (_SEG, segs)):
                m = pattern.match(path.name)
                if m:
                    table[f"Case{int(m.group(1)):02d}"] = path
        missing = sorted(set(images) - set(segs))
        if missing:
            raise DataValidationError(f"site {site!r}: case {missing[0]!r} has no segmentation file in {str(folder)!r}")
        orphans = sorted(set(segs) - set(images))
        if orphans:
            raise DataValidationError(f"site {site!r}: segmentation of {orphans[0]!r} has no image in {str(folder)!r}")
        if not images:
            raise DataValidationError(f"site {site!r}: no CaseXX.nii.gz files in {str(folder)!r}")
        out[site] = [Case(site, c, images[c], segs[c]) for c in sorted(images)]
    return out


def split_cases(site: str, case_ids: list[str], seed: int = 0, n_test: int | None = None) -> dict[str, list[str]]:
    """The reference's lists when ``case_ids`` are exactly its cases, else a seeded split with its proportions.

    ``n_test`` fixes the number of test cases instead (more test volumes than the reference's 3-6 give a
    comparison enough paired cases); the rest is split training/validation in the reference's proportions.
    """
    if n_test is not None:
        if n_test < 1 or len(case_ids) < n_test + 2:
            raise DataValidationError(
                f"site {site!r}: n_test={n_test!r} needs at least {n_test + 2} cases (1 training, 1 validation), "
                f"got {len(case_ids)}"
            )
        order = np.random.default_rng(seed).permutation(len(case_ids))
        shuffled = [sorted(case_ids)[i] for i in order]
        test, rest = sorted(shuffled[:n_test]), shuffled[n_test:]
        train, val = split_by_fractions(rest, (FRACTIONS[0] / sum(FRACTIONS[:2]), FRACTIONS[1] / sum(FRACTIONS[:2])),
                                        seed, name=f"site {site!r} cases")
        return dict(zip(SPLITS, (train, val, test)))
    ref = REFERENCE_SPLITS.get(site)
    if ref is not None:
        ref_ids = [[f"Case{i:02d}" for i in part] for part in ref]
        if sorted(sum(ref_ids, [])) == sorted(case_ids):
            return dict(zip(SPLITS, ref_ids))
    parts = split_by_fractions(case_ids, FRACTIONS, seed, name=f"site {site!r} cases")
    return dict(zip(SPLITS, parts))


def load_case(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Load, check and binarise one case: (image[X,Y,Z] float32, label[X,Y,Z] uint8 in {0,1})."""
    image, affine, _ = load_nifti(case.image, "image")
    label, label_affine, _ = load_nifti(case.label, "label")
    if image.ndim != 3:
        raise DataValidationError(f"image: {str(case.image)!r} has rank {image.ndim}, expected 3 (X,Y,Z)")
    check_same_grid(image.shape, label.shape, affine, label_affine, case.image, case.label)
    if np.any(label < 0) or np.any(label != np.round(label)):
        raise DataValidationError(f"label: {str(case.label)!r} holds negative or non-integer values")
    check_label_values(label, RAW_LABELS, case.label)
    binary = (label > 0).astype(np.uint8)  # the reference merges every zone into the whole gland
    if not binary.any():
        raise DataValidationError(f"label: {str(case.label)!r} has no prostate voxel")
    return image.astype(np.float32), binary


def zscore(volume: np.ndarray) -> np.ndarray:
    std = float(volume.std())
    return ((volume - volume.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def resize_inplane(volume: np.ndarray, size: int | None, order: int) -> np.ndarray:
    """Resample (X,Y,Z) to (size,size,Z); ``order`` 1 for images, 0 for labels."""
    if size is None or volume.shape[:2] == (size, size):
        return volume
    from scipy.ndimage import zoom

    factors = (size / volume.shape[0], size / volume.shape[1], 1.0)
    return zoom(volume, factors, order=order, grid_mode=True, mode="nearest").astype(volume.dtype)


def slices_2p5d(image: np.ndarray, label: np.ndarray, keep_empty: bool = False):
    """Yield (index, image[3,H,W], label[1,H,W]) for every (prostate) slice along Z, neighbours as channels."""
    n = image.shape[2]
    for i in range(n):
        if not keep_empty and not label[:, :, i].any():
            continue
        idx = [max(i - 1, 0), i, min(i + 1, n - 1)]
        stack = np.stack([image[:, :, j] for j in idx]).astype(np.float32)
        yield i, stack, label[None, :, :, i].astype(np.uint8)


def convert(
    raw_dir: str | Path,
    out_root: str | Path,
    datalist_dir: str | Path = f"datalists/{DATASET}",
    sites: tuple[str, ...] = RAW_SITES,
    size: int | None = 64,
    keep_empty_slices: bool = False,
    seed: int = 0,
    n_test: int | None = None,
) -> dict[str, Path]:
    """Validate every case of every site, then write slices and one datalist per site (named by :func:`site_id`).

    ``n_test``: test cases per site instead of the reference's split (see :func:`split_cases`).
    """
    cases = find_cases(raw_dir, sites)
    for site_cases in cases.values():
        for case in progress(site_cases, f"validated {site_cases[0].site}"):
            load_case(case)
    splits = {site: split_cases(site, [c.case_id for c in cs], seed, n_test) for site, cs in cases.items()}
    check_splits_non_empty({site_id(s): parts for s, parts in splits.items()}, SPLITS, datalist_dir)
    out_root = Path(out_root)
    items: dict[str, dict[str, list[dict]]] = {}
    with atomic_dir(out_root, owner=f"{TOOL} convert", protect=[raw_dir]) as tmp:
        for site, site_cases in cases.items():
            sid = site_id(site)
            split_of = {c: split for split, ids in splits[site].items() for c in ids}
            items[sid] = {split: [] for split in SPLITS}
            for case in progress(site_cases, f"{sid} written"):
                image, label = load_case(case)
                image = resize_inplane(zscore(image), size, order=1)
                label = resize_inplane(label, size, order=0)
                folder = tmp / sid / case.case_id
                folder.mkdir(parents=True)
                for i, x, y in slices_2p5d(image, label, keep_empty_slices):
                    stem = f"{sid}/{case.case_id}/slice_{i:03d}"
                    np.save(tmp / f"{stem}_image.npy", x)
                    np.save(tmp / f"{stem}_label.npy", y)
                    items[sid][split_of[case.case_id]].append(
                        {"image": f"{stem}_image.npy", "label": f"{stem}_label.npy", "case": case.case_id, "slice": i}
                    )
    descriptions = {sid: f"multi-site prostate T2, {sid}, 2.5-D slices" for sid in items}
    return write_datalists(datalist_dir, out_root, items, f"{TOOL} convert", descriptions,
                           case_key=lambda item: f"{Path(item['image']).parent.as_posix()}", require=SPLITS)


def validate(data_root: str | Path, datalist_dir: str | Path = f"datalists/{DATASET}") -> int:
    """Re-check converted slices against their datalists (shapes, dtypes, labels, case-disjoint splits)."""
    from src.data.datalist import load_site_datalist

    lists = sorted(Path(datalist_dir).glob("*.json"))
    if not lists:
        raise DataValidationError(f"datalist dir {str(datalist_dir)!r} holds no <site>.json")
    n = 0
    loaded = {}
    for path in lists:
        splits = loaded[path.name] = load_site_datalist(path, data_root)
        cases = {split: {item["case"] for item in items} for split, items in splits.items()}
        for a, b in (("training", "validation"), ("training", "testing"), ("validation", "testing")):
            if cases[a] & cases[b]:
                raise DataValidationError(f"{path.name}: cases {sorted(cases[a] & cases[b])} in both {a} and {b}")
        for items in splits.values():
            for item in items:
                check_slice_pair(item["image"], item["label"])
                n += 1
        print(f"  {path.name}: ok", flush=True)
    check_cases_disjoint(loaded, lambda item: str(Path(item["image"]).parent), str(datalist_dir))  # across sites
    return n


def _generate_arguments(g) -> None:
    g.add_argument("--out", default=f"data/raw/{DATASET}", help="(default: %(default)s)")
    g.add_argument("--n-cases", type=int, default=6, help="cases per site (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--shift-strength", type=float, default=1.0,
                   help="scales every site shift; 0 = identical sites (default: %(default)s)")
    g.add_argument("--matrix", type=int, default=384, help="in-plane matrix (real: 384) (default: %(default)s)")


def _generate(a) -> None:
    from data_prep.synthetic.multisite_prostate import generate

    print(f"wrote {generate(a.out, a.n_cases, a.seed, shift_strength=a.shift_strength, matrix=a.matrix)}")


def _convert_arguments(c) -> None:
    c.add_argument("--raw", default=f"data/raw/{DATASET}", help="(default: %(default)s)")
    c.add_argument("--out", default=f"data/{DATASET}", help="data root to write (default: %(default)s)")
    c.add_argument("--datalist-dir", default=f"datalists/{DATASET}", help="(default: %(default)s)")
    c.add_argument("--sites", nargs="+", default=list(RAW_SITES), help="raw site folders to convert")
    c.add_argument("--size", type=int, default=64, help="in-plane size after resampling; 0 keeps native (real: 384)")
    c.add_argument("--keep-empty-slices", action="store_true", help="also keep slices without prostate")
    c.add_argument("--seed", type=int, default=0, help="seed of the proportional split (non-reference case sets)")
    c.add_argument("--n-test", type=int, default=None, help="test cases per site instead of the reference split")


def _convert(a) -> None:
    written = convert(a.raw, a.out, a.datalist_dir, tuple(a.sites), a.size or None, a.keep_empty_slices, a.seed,
                      a.n_test)
    print("datalists: " + ", ".join(str(p) for p in written.values()))


def _validate_arguments(v) -> None:
    v.add_argument("--data-root", default=f"data/{DATASET}")
    v.add_argument("--datalist-dir", default=f"datalists/{DATASET}")


COMMANDS = (
    Command("generate", "write synthetic data in the real six-site raw layout", _generate_arguments, _generate),
    Command("convert", "raw six-site folders -> 2.5-D slices + datalists", _convert_arguments, _convert),
    Command("validate", "re-check converted data against its datalists", _validate_arguments,
            lambda a: print(f"validated {validate(a.data_root, a.datalist_dir)} slices")),
)


def main(argv=None) -> int:
    return run_cli(f"python -m {TOOL}", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
