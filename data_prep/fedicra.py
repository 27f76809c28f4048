"""FedICRA FAZ / fundus optic disc-cup release -> per-site decathlon datalists (site-k = Domain{k}).

Reads either published layout (``{FAZ,ODOC}_h5/Domain{k}/{train,test}/*.h5`` or the PNG tree
``{FAZ,ODOC}/Domain{k}/{train,test}/{imgs,mask,...}``) in place, checks every file, holds a validation
split out of each site's *train* folder (the reference code selects checkpoints on the test folder; we do
not), and writes ``datalists/fedicra_<task>/site-k.json``. Training entries point at the site's sparse
form (the paper's assignment by default, ``--sup-types code`` for the reference code's, or a list);
validation and test entries point at the dense ``mask``. Paths are relative to the data root.

    python -m data_prep.fedicra generate --out data/fedicra                  # synthetic, both layouts
    python -m data_prep.fedicra convert --task faz --data-root data/fedicra/FAZ_h5
    python -m data_prep.fedicra validate --task faz --data-root data/fedicra/FAZ_h5

Real data: point ``--data-root`` at the folder that holds ``Domain1..Domain5`` of your copy
(h5 or PNG tree, detected); nothing else changes. See docs/data_fedicra.md.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from data_prep.cli import Command, run_cli
from data_prep.common import (
    DataValidationError,
    check_inside_root,
    progress,
    split_by_fractions,
    write_datalists,
)
from data_prep.fedicra_layout import (
    TASKS,
    RawCase,
    detect_layout,
    discover_domains,
    list_cases,
    load_case,
    read_raw_case,
    resolve_sup_types,
)

__all__ = ["scan", "convert", "validate", "main"]

TOOL = "data_prep.fedicra"


def _default_datalist_dir(task: str) -> Path:
    return Path("datalists") / f"fedicra_{task}"


def scan(
    data_root: str | os.PathLike, task: str, layout: str = "auto", sup_types: str | Sequence[str] = "paper"
) -> tuple[str, dict[int, str], dict[int, dict[str, list[RawCase]]]]:
    """List and check every case of every domain; nothing is written.

    Returns:
        (layout, {domain: sparse form}, {domain: {"train": cases, "test": cases}}).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    root = Path(data_root)
    domains = discover_domains(root)
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in ("h5", "png"):
        raise ValueError(f"layout must be 'auto', 'h5' or 'png', got {layout!r}")
    forms = dict(zip(domains, resolve_sup_types(sup_types, task, len(domains))))
    cases = {k: {split: list_cases(root, k, split, layout, forms[k]) for split in ("train", "test")} for k in domains}
    for k, splits in cases.items():
        shared = sorted({c.case_id for c in splits["train"]} & {c.case_id for c in splits["test"]})
        if shared:
            raise DataValidationError(f"Domain{k}: case(s) {shared[:5]} appear in both train and test (leakage)")

    print(f"validating {sum(len(s['train']) + len(s['test']) for s in cases.values())} {task} cases "
          f"({layout}) in {root}", flush=True)
    first_shape, first_path = None, None
    for case in progress([c for s in cases.values() for part in s.values() for c in part], "validated"):
        shape = read_raw_case(case, task)["image"].shape
        if first_shape is None:
            first_shape, first_path = shape, case.image
        elif shape != first_shape:
            raise DataValidationError(
                f"image: {str(case.image)!r} has shape {shape}, but {str(first_path)!r} has {first_shape}; "
                "all images of a task must share one size"
            )
    return layout, forms, cases


def _entry(case: RawCase, root: Path, site: str, sup_type: str) -> dict:
    rel = lambda p: Path(os.path.relpath(p, root)).as_posix()  # noqa: E731
    return {
        "image": rel(case.image),
        "label": rel(case.label),
        "format": case.layout,
        "label_key": case.label_key,
        "sup_type": sup_type,
        "case_id": case.case_id,
        "site": site,
    }


def convert(
    data_root: str | os.PathLike,
    task: str,
    layout: str = "auto",
    sup_types: str | Sequence[str] = "paper",
    val_fraction: float = 0.2,
    seed: int = 0,
    datalist_dir: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Validate the whole release, then write one datalist per site; return ``{site: path}``.

    Args:
        data_root: folder holding ``Domain1..DomainN`` (h5 or PNG tree).
        task: ``faz`` or ``odoc``.
        sup_types: ``paper`` (default), ``code`` or one sparse form per site.
        val_fraction: share of each site's train folder held out for validation (by case; 0 = none).
        datalist_dir: default ``datalists/fedicra_<task>``; replaced as a whole, atomically.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    root = Path(data_root)
    layout, forms, cases = scan(root, task, layout, sup_types)
    payloads = {}
    for k, splits in cases.items():
        site = f"site-{k}"
        by_id = {c.case_id: c for c in splits["train"]}
        if val_fraction > 0:
            train_ids, val_ids = split_by_fractions(list(by_id), (1 - val_fraction, val_fraction), seed + k,
                                                    name=f"{site} train cases")
        else:
            train_ids, val_ids = sorted(by_id), []
        val_cases = [RawCase(**{**vars(by_id[i]), "label": by_id[i].mask, "label_key": "mask"}) for i in val_ids]
        payloads[site] = {
            "training": [_entry(by_id[i], root, site, forms[k]) for i in train_ids],
            "validation": [_entry(c, root, site, "mask") for c in val_cases],
            "testing": [_entry(c, root, site, "mask") for c in splits["test"]],
        }
        print(f"  {site} (Domain{k}): {len(train_ids)} train [{forms[k]}], {len(val_ids)} val, "
              f"{len(splits['test'])} test", flush=True)
    target = Path(datalist_dir) if datalist_dir is not None else _default_datalist_dir(task)
    descriptions = {
        site: (f"FedICRA {task} {site} ({layout} layout); training label = "
               f"{splits['training'][0]['sup_type'] if splits['training'] else '-'}, validation/testing label = mask; "
               f"{TASKS[task].num_classes} classes, ignore value {TASKS[task].num_classes}")
        for site, splits in payloads.items()
    }
    require = ("training", "validation") if val_fraction > 0 else ("training",)
    return write_datalists(target, root, payloads, f"{TOOL} convert", descriptions, require=require)


def validate(data_root: str | os.PathLike, task: str, datalist_dir: str | os.PathLike | None = None) -> int:
    """Re-check converted datalists against the data root: paths inside the root, every entry loadable
    with the right label values, no case in two splits or two sites. Return the number of entries checked."""
    from monai.data import load_decathlon_datalist

    spec = TASKS[task]
    folder = Path(datalist_dir) if datalist_dir is not None else _default_datalist_dir(task)
    lists = sorted(folder.glob("site-*.json"))
    if not lists:
        raise DataValidationError(f"datalist dir {str(folder)!r} holds no site-*.json")
    seen: dict[str, str] = {}
    n = 0
    for path in lists:
        raw = json.loads(path.read_text())
        for split in ("training", "validation", "testing"):
            for i, item in enumerate(raw.get(split, [])):
                for field in ("image", "label"):
                    check_inside_root(item[field], data_root, f"{path.name} {split}[{i}].{field}")
                where = f"{path.name}:{split}"
                if item["image"] in seen:
                    raise DataValidationError(f"{split}[{i}].image: {item['image']!r} is in {seen[item['image']]} "
                                              f"and {where} (a case in two splits or sites)")
                seen[item["image"]] = where
        for split in ("training", "validation", "testing"):
            items = load_decathlon_datalist(str(path), True, split, str(data_root)) if raw.get(split) else []
            for item in items:
                arrays = load_case(item)
                allowed = spec.num_classes + (1 if split == "training" else 0)
                if arrays["image"].shape[0] != spec.in_channels:
                    raise DataValidationError(f"image: {item['image']!r} has {arrays['image'].shape[0]} channels, "
                                              f"expected {spec.in_channels}")
                if arrays["label"].min() < 0 or arrays["label"].max() >= allowed:
                    raise DataValidationError(f"label: {item['label']!r} values outside 0..{allowed - 1}")
                n += 1
        print(f"  {path.name}: ok", flush=True)
    return n


def _generate_arguments(g) -> None:
    from data_prep.synthetic.fedicra import add_generate_arguments

    add_generate_arguments(g)


def _generate(a) -> None:
    from data_prep.synthetic.fedicra import generate

    for root in generate(a.out, a.task, a.n_sites, a.n_train, a.n_test, a.size, a.layout, a.seed):
        print(f"wrote {root}")


def _release_arguments(c) -> None:
    c.add_argument("--task", choices=sorted(TASKS), required=True)
    c.add_argument("--data-root", required=True, help="folder holding Domain1..DomainN (h5 or PNG tree)")
    c.add_argument("--layout", choices=("auto", "h5", "png"), default="auto", help="(default: %(default)s)")
    c.add_argument("--sup-types", default="paper",
                   help="sparse form per site: 'paper' (default), 'code' (reference configs) or a comma list "
                        "of scribble,scribble_noisy,keypoint,block,box,mask")
    c.add_argument("--datalist-dir", default=None, help="default: datalists/fedicra_<task>")


def _convert_arguments(c) -> None:
    _release_arguments(c)
    c.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of each site's train folder held out for validation (default: %(default)s)")
    c.add_argument("--seed", type=int, default=0)


def _convert(a) -> None:
    written = convert(a.data_root, a.task, a.layout, a.sup_types, a.val_fraction, a.seed, a.datalist_dir)
    print("datalists: " + ", ".join(str(p) for p in written.values()))


def _validate(a) -> None:
    scan(a.data_root, a.task, a.layout, a.sup_types)
    folder = Path(a.datalist_dir) if a.datalist_dir else _default_datalist_dir(a.task)
    if folder.is_dir():
        print(f"validated {validate(a.data_root, a.task, folder)} datalist entries in {folder}")
    print("ok")


COMMANDS = (
    Command("generate", "write synthetic FAZ/ODOC sets in the release layouts", _generate_arguments, _generate),
    Command("convert", "check the release and write per-site datalists", _convert_arguments, _convert),
    Command("validate", "check the release, and the datalists if they exist, writing nothing", _release_arguments,
            _validate),
)


def main(argv=None) -> int:
    # ValueError: scan/convert check their arguments (task, layout, sup types, fractions) with it
    return run_cli(f"python -m {TOOL}", __doc__, COMMANDS, argv, user_errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
