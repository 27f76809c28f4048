"""Sites of the cooperative-training jobs: ACDC and each M&Ms vendor, one datalist each under one data root.

Inputs are the converters' outputs (``data_prep.acdc convert``, ``data_prep.mnms convert``); nothing is copied, the
entries are rewritten relative to ``--data-root`` (the folder holding both converted data sets). Sites: ``acdc`` and
``vendor-A`` ... ``vendor-D`` (the M&Ms vendors present). ``--train-subjects N`` keeps N training subjects per site
(both frames of each; the first N of a ``--seed`` permutation): the low-data setting of the paper (10 subjects).
Validation and test lists are unchanged.

    python -m data_prep.cooptrain --data-root data --acdc-root data/acdc \
        --acdc-datalist datalists/acdc_fewshot/site-1.json --mnms-root data/mnms --mnms-datalists datalists/mnms \
        --out datalists/cooptrain [--train-subjects 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from data_prep.common import DataValidationError, write_site_datalist

__all__ = ["ACDC_SITE", "combine", "pool", "main"]

ACDC_SITE = "acdc"
SPLITS = ("training", "validation", "testing")
POOLED_FIELDS = ("image", "label", "subject", "phase")


def _read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataValidationError(f"datalist {str(path)!r}: cannot read JSON: {e}") from e


def _rebase(items: list[dict], source_root: Path, data_root: Path) -> list[dict]:
    out = []
    for item in items:
        new = dict(item)
        for key in ("image", "label"):
            new[key] = os.path.relpath((source_root / item[key]).resolve(), data_root.resolve())
            if new[key].startswith(".."):
                raise DataValidationError(f"{item[key]!r} under {str(source_root)!r} is outside --data-root "
                                          f"{str(data_root)!r}")
        out.append(new)
    return out


def _cap_subjects(items: list[dict], n: int, seed: int) -> list[dict]:
    if n <= 0:
        return items
    subjects = sorted({it["subject"] for it in items})
    keep = {subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))[:n]}
    return [it for it in items if it["subject"] in keep]


def combine(data_root, acdc_root, acdc_datalist, mnms_root, mnms_datalist_dir, out_dir,
            train_subjects: int = 0, seed: int = 0) -> dict[str, Path]:
    """Write ``<out_dir>/<site>.json`` for ACDC and every M&Ms vendor; return ``{site: path}``."""
    data_root, out_dir = Path(data_root), Path(out_dir)
    sources = [(ACDC_SITE, Path(acdc_root), Path(acdc_datalist))]
    for path in sorted(Path(mnms_datalist_dir).glob("*.json")):
        payload = _read(path)
        vendors = {it.get("vendor") for split in SPLITS for it in payload.get(split, [])}
        if len(vendors) != 1 or None in vendors:
            raise DataValidationError(f"datalist {str(path)!r}: expected one M&Ms vendor per file, got {vendors}")
        sources.append((f"vendor-{vendors.pop()}", Path(mnms_root), path))
    if len(sources) == 1:
        raise DataValidationError(f"no M&Ms datalists (*.json) in {str(mnms_datalist_dir)!r}")
    written = {}
    for site, root, path in sources:
        payload = _read(path)
        lists = {split: _rebase(payload.get(split, []), root, data_root) for split in SPLITS}
        lists["training"] = _cap_subjects(lists["training"], train_subjects, seed)
        written[site] = write_site_datalist(out_dir / f"{site}.json", data_root, lists,
                                            description=f"{site} for cooperative training ({path})")
    return written


def pool(datalist_dir, sites: list[str], out_path) -> Path:
    """One datalist holding every split of ``sites`` (centralised training on the same data); entries keep
    ``POOLED_FIELDS`` and gain ``site``."""
    lists = {split: [] for split in SPLITS}
    for site in sites:
        payload = _read(Path(datalist_dir) / f"{site}.json")
        for split in SPLITS:
            # only the fields every site has: the data loader collates entries of different sites together
            lists[split] += [{**{k: it[k] for k in POOLED_FIELDS}, "site": site} for it in payload.get(split, [])]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"description": f"pooled {sites}", **lists}, indent=2))
    return out_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.cooptrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--acdc-root", default="data/acdc")
    p.add_argument("--acdc-datalist", default="datalists/acdc_fewshot/site-1.json")
    p.add_argument("--mnms-root", default="data/mnms")
    p.add_argument("--mnms-datalists", default="datalists/mnms")
    p.add_argument("--out", default="datalists/cooptrain")
    p.add_argument("--train-subjects", type=int, default=0, help="training subjects kept per site (0: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        written = combine(args.data_root, args.acdc_root, args.acdc_datalist, args.mnms_root, args.mnms_datalists,
                          args.out, args.train_subjects, args.seed)
    except DataValidationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for site, path in written.items():
        print(f"  wrote {path} ({site})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
