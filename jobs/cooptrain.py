"""Cooperative training + latent-space data augmentation (Chen et al., MICCAI 2021) at every site.

Sites: ACDC and the M&Ms vendors (``acdc``, ``vendor-A`` ...; datalists by ``data_prep.cooptrain``). Each site runs
the cooperative step (hard examples from its own model and data) as its local step; ``--no-latent-da`` runs the
standard step of the same networks (the paper's baseline). ``--algorithm`` says what is averaged: ``fedavg`` (all five
parts), ``fedbn`` (BatchNorm stays on each site), ``share-anatomy`` (the image decoder stays on each site).
``--mode``: ``federated`` (every site trains), ``centralised`` (one client trains on the pooled data of every site),
``loso`` (leave one site out: the sites but ``--held-out`` train; the held-out M&Ms vendor only evaluates, by
cross-site evaluation on its test split). Every site's data are checked before anything starts (missing ED/ES frame,
labels outside 0..3, 4-D files where 3-D frames are expected: the error names the file).

    python -m data_prep.acdc generate && python -m data_prep.acdc convert
    python -m data_prep.mnms generate && python -m data_prep.mnms convert
    python -m data_prep.cooptrain --train-subjects 10
    python jobs/cooptrain.py --num-rounds 3                                  # federated, all sites
    python jobs/cooptrain.py --mode loso --held-out vendor-C --algorithm fedbn
    python jobs/cooptrain.py --mode centralised --no-latent-da
    python jobs/cooptrain.py --env export --export-dir /tmp/cooptrain_job
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import build_job_recipe, common_config, execute, job_parser, parse_job_args  # noqa: E402
from jobs.preflight import preflight  # noqa: E402
from src.config.cooptrain import ALGORITHMS, CoopTrainConfig  # noqa: E402

MODES = ("federated", "centralised", "loso")
CENTRAL_SITE = "central"
POOLED_DIR = "pooled"
PREPARE = (".venv/bin/python -m data_prep.acdc generate && .venv/bin/python -m data_prep.acdc convert && "
           ".venv/bin/python -m data_prep.mnms generate && .venv/bin/python -m data_prep.mnms convert && "
           ".venv/bin/python -m data_prep.cooptrain --train-subjects 10")


def discover_sites(datalist_dir: str | Path) -> list[str]:
    """Site names from ``<datalist_dir>/<site>.json``: ``acdc`` first, then the vendors in order."""
    names = sorted(p.stem for p in Path(datalist_dir).glob("*.json"))
    return sorted(names, key=lambda s: (s != "acdc", s))


def _check(args) -> None:
    """Pre-flight (before any heavy import): the sites named or, without ``--sites``, every datalist present."""
    preflight(args, PREPARE, sites=args.sites or discover_sites(args.datalist_dir))


def parse_args(argv=None, check: bool = False):
    p = job_parser(__doc__, name="cooptrain", n_clients=4, num_rounds=3, local_epochs=1,
                   data_root=CoopTrainConfig.data_root, datalist_dir=CoopTrainConfig.datalist_dir)
    d = CoopTrainConfig
    p.add_argument("--mode", choices=MODES, default="federated", help="federated, centralised or leave-one-site-out")
    p.add_argument("--held-out", default="", metavar="SITE", help="--mode loso: the M&Ms vendor kept out of training")
    p.add_argument("--algorithm", choices=ALGORITHMS, default=d.algorithm, help="what the server averages")
    p.add_argument("--latent-da", action=argparse.BooleanOptionalAction, default=d.latent_da,
                   help="cooperative training with latent-space hard examples (--no-latent-da: the standard step)")
    p.add_argument("--no-cooperative", action="store_true",
                   help="plain training of the segmentation path only (no image decoder / STN terms, no STN at "
                        "inference); implies --no-latent-da")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="volumes per batch")
    p.add_argument("--slices-per-volume", type=int, default=d.slices_per_volume)
    p.add_argument("--crop-size", type=int, default=d.crop_size)
    p.add_argument("--pad-size", type=int, default=d.pad_size)
    p.add_argument("--base-channels", type=int, default=d.base_channels)
    p.add_argument("--code-channels", type=int, default=d.code_channels)
    p.add_argument("--no-augment", action="store_true", help="no random affine augmentation")
    args = parse_job_args(p, argv, check=_check if check else None)
    if args.sites is None:
        args.sites = discover_sites(args.datalist_dir)
        if not args.sites:
            p.error(f"no site datalists (*.json) in {args.datalist_dir!r}: run python -m data_prep.cooptrain first")
    if args.mode == "loso":
        if args.held_out not in args.sites or not args.held_out.startswith("vendor-"):
            p.error(f"--mode loso needs --held-out one of the M&Ms vendor sites "
                    f"{[s for s in args.sites if s.startswith('vendor-')]}, got {args.held_out!r}")
        if len(args.sites) < 2:
            p.error("--mode loso needs at least one training site besides --held-out")
    elif args.held_out:
        p.error(f"--held-out is for --mode loso, got --mode {args.mode}")
    if args.mode == "centralised":
        args.source_sites, args.sites = list(args.sites), [CENTRAL_SITE]
    args.n_clients = len(args.sites)
    return args


def check_sites(args) -> None:
    """Load and check every site's datalist and files now, before any process starts (errors name the file).

    The deep check after the pre-flight (which only opens each site's first files, without torch): every case's
    ED/ES frames, label values and dimensions."""
    from src.data.cardiac import check_cardiac_datalist
    from src.data.datalist import load_site_datalist

    datalist_dir = Path(args.datalist_dir)
    for site in getattr(args, "source_sites", args.sites):
        check_cardiac_datalist(load_site_datalist(datalist_dir / f"{site}.json", args.data_root), site)


def build_config(args) -> CoopTrainConfig:
    values = common_config(args)
    if args.mode == "centralised":
        from data_prep.cooptrain import pool

        pooled = Path(args.datalist_dir) / POOLED_DIR
        pool(args.datalist_dir, args.source_sites, pooled / f"{CENTRAL_SITE}.json")
        values["datalist_dir"] = str(pooled.resolve())
    return CoopTrainConfig(
        **values, algorithm=args.algorithm, latent_da=args.latent_da and not args.no_cooperative,
        cooperative=not args.no_cooperative, lr=args.lr, batch_size=args.batch_size,
        slices_per_volume=args.slices_per_volume, crop_size=args.crop_size, pad_size=args.pad_size,
        base_channels=args.base_channels, code_channels=args.code_channels, augment=not args.no_augment,
    )


def build_recipe(args):
    from src.learners.cooptrain import CoopTrainLearner
    from src.models.cooperative_net import CooperativeNet

    config = build_config(args)
    controller_args = {}
    if args.mode == "loso":
        controller_args["train_sites"] = [s for s in args.sites if s != args.held_out]
    return build_job_recipe(
        args, lambda: CooperativeNet(base_channels=config.base_channels, code_channels=config.code_channels),
        CoopTrainLearner, config, controller_args=controller_args,
    )


def main(argv=None) -> int:
    args = parse_args(argv, check=True)
    from src.data.validation import DataValidationError  # after the options: --help imports nothing heavy

    try:
        check_sites(args)
    except DataValidationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = execute(build_recipe(args), args)
    if result is not None:
        from jobs.console import finish

        finish(result, args, key_metric="val_dice")
    return 0


if __name__ == "__main__":
    sys.exit(main())
