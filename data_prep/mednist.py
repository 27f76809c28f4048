"""MedNIST folders -> per-site datalists (IID or Dirichlet non-IID label split).

    python -m data_prep.mednist generate --out data/mednist          # synthetic MedNIST/<Class>/*.jpeg
    python -m data_prep.mednist split --data-root data/mednist --n-sites 3 [--alpha 0.5]

Real data: extract ``MedNIST.tar.gz`` (from the MONAI tutorials) into the data root; nothing else changes.
The datalists reference images in place; every site's lists are disjoint, so no site reads another's images
(in a real deployment each site holds only its own copy).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from data_prep.cli import Command, run_cli
from data_prep.common import DataValidationError, site_names, split_by_fractions, write_datalists

DATASET = "mednist"
TOOL = f"data_prep.{DATASET}"
CLASSES = ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT")
SPLITS = ("training", "validation", "testing")


def scan(data_root: str | Path) -> dict[str, list[str]]:
    """``{class: [relative image paths]}`` from ``<data_root>/MedNIST/<Class>/*.jpeg``."""
    root = Path(data_root) / "MedNIST"
    if not root.is_dir():
        raise DataValidationError(f"MedNIST folder {str(root)!r} not found (run `generate` or extract MedNIST.tar.gz)")
    found = {}
    for name in CLASSES:
        files = sorted((root / name).glob("*.jpeg"))
        if not files:
            raise DataValidationError(f"class folder {str(root / name)!r} is missing or holds no .jpeg images")
        found[name] = [f"MedNIST/{name}/{f.name}" for f in files]
    return found


def assign_sites(per_class: dict[str, list[str]], n_sites: int, alpha: float | None, seed: int) -> list[list[tuple]]:
    """Split every class's images over sites: equal shares (IID) or Dirichlet(alpha) proportions (non-IID)."""
    rng = np.random.default_rng(seed)
    sites: list[list[tuple]] = [[] for _ in range(n_sites)]
    for label, name in enumerate(CLASSES):
        files = [per_class[name][i] for i in rng.permutation(len(per_class[name]))]
        shares = np.full(n_sites, 1.0 / n_sites) if alpha is None else rng.dirichlet(np.full(n_sites, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(files)).astype(int)
        for s, part in enumerate(np.split(np.array(files), cuts)):
            sites[s].extend((str(f), label) for f in part)
    return sites


def split(
    data_root: str | Path,
    n_sites: int = 3,
    alpha: float | None = None,
    datalist_dir: str | Path = f"datalists/{DATASET}",
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, Path]:
    """Write one datalist per site (disjoint images, each site's images split into training/validation/testing)."""
    if n_sites < 1:
        raise ValueError(f"n_sites must be >= 1, got {n_sites}")
    if alpha is not None and alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    sites = assign_sites(scan(data_root), n_sites, alpha, seed)
    lists = {}
    for s, (site, items) in enumerate(zip(site_names(n_sites), sites)):
        if len(items) < 3:
            raise DataValidationError(
                f"{site}: only {len(items)} images after the split; lower --n-sites or raise --alpha"
            )
        labels = dict(items)
        parts = split_by_fractions(list(labels), fractions, seed + s, name=f"{site} images")
        lists[site] = {k: [{"image": f, "label": int(labels[f])} for f in part] for k, part in zip(SPLITS, parts)}
        counts = np.bincount([lab for _, lab in items], minlength=len(CLASSES))
        print(f"  {site}: {len(items)} images, per class {counts.tolist()}", flush=True)
    descriptions = {site: f"MedNIST {site}" for site in lists}
    return write_datalists(datalist_dir, data_root, lists, f"{TOOL} split", descriptions,
                           require=("training", "validation"))


def _generate_arguments(g) -> None:
    g.add_argument("--out", default="data/mednist", help="data root receiving MedNIST/ (default: %(default)s)")
    g.add_argument("--per-class", type=int, default=60, help="images per class (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0)


def _generate(a) -> None:
    from data_prep.synthetic.mednist import generate

    print(f"wrote {generate(a.out, a.per_class, a.seed)}")


def _split_arguments(s) -> None:
    s.add_argument("--data-root", default="data/mednist", help="folder holding MedNIST/ (default: %(default)s)")
    s.add_argument("--n-sites", type=int, default=3)
    s.add_argument("--alpha", type=float, default=None, help="Dirichlet concentration for a non-IID label split")
    s.add_argument("--datalist-dir", default=f"datalists/{DATASET}")
    s.add_argument("--seed", type=int, default=0)


def _split(a) -> None:
    written = split(a.data_root, a.n_sites, a.alpha, a.datalist_dir, seed=a.seed)
    print("datalists: " + ", ".join(str(p) for p in written.values()))


COMMANDS = (
    Command("generate", "write synthetic MedNIST/<Class>/*.jpeg", _generate_arguments, _generate),
    Command("split", "per-site datalists from a MedNIST folder", _split_arguments, _split),
)


def main(argv=None) -> int:
    return run_cli(f"python -m {TOOL}", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
