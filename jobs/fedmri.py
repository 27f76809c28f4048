"""FedMRI (Feng et al., TMI 2022): federated single-coil MR reconstruction with a shared encoder, site decoders
and the weighted contrastive regulariser; ``--algorithm`` runs the baselines on the same data, masks and seeds.

Every site trains the fastMRI U-Net on its own slices with its own fixed sampling mask (default: the paper's four
sites, 1-D uniform 3x / 1-D random 5x / radial 4x / 2-D random 6x). FedMRI: the server averages the encoders
uniformly (1/N), the decoders never leave the sites, and from round 2 each site adds beta * L_con with the
previous round's local encoders as negatives: ``--negatives linear`` (default; the server's int8 sign-count
summary) or ``--negatives exact`` (the N snapshots themselves, relayed only with ``--relay-snapshots``: the
server's and every site's opt-in, logged). Every site's metrics say whether its k-space was measured
(``val_measured_kspace`` = 1) or simulated from magnitude images (0).

    python -m data_prep.fedmri generate && python -m data_prep.fedmri convert --crop site-4=192
    python jobs/fedmri.py --num-rounds 3 --local-epochs 1 --channels 8 --crop 96
    python jobs/fedmri.py --algorithm fedavg ...                     # a baseline
    python jobs/fedmri.py --negatives exact --relay-snapshots ...   # the paper's exact negatives (opt-in)
    python jobs/fedmri.py --env export --export-dir /tmp/fedmri_job
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import build_job_recipe, common_config, execute, job_parser, parse_job_args  # noqa: E402
from jobs.preflight import preflight  # noqa: E402
from src.config.fedmri import ALGORITHMS, NEGATIVE_CHOICES, FedMRIConfig  # noqa: E402
from src.transforms.mask_specs import MASK_TYPES  # noqa: E402

PREPARE = (".venv/bin/python -m data_prep.fedmri generate && "
           ".venv/bin/python -m data_prep.fedmri convert --crop site-4=192")


def parse_args(argv=None, check: bool = False):
    p = job_parser(__doc__, name="fedmri", n_clients=4, num_rounds=3, local_epochs=1,
                   data_root=FedMRIConfig.data_root, datalist_dir=FedMRIConfig.datalist_dir)
    p.add_argument("--algorithm", choices=ALGORITHMS, default="fedmri", help="method the sites run")
    p.add_argument("--negatives", choices=NEGATIVE_CHOICES, default=FedMRIConfig.negatives,
                   help="FedMRI's negatives: the N snapshots (exact, opt-in) or the server's summary (linear)")
    p.add_argument("--relay-snapshots", action="store_true",
                   help="exact negatives: the server's and every site's opt-in to relay encoder snapshots (logged)")
    p.add_argument("--beta", type=float, default=FedMRIConfig.beta, help="weight of L_con (paper 100)")
    p.add_argument("--channels", type=int, default=8, help="U-Net base channels (paper 32)")
    p.add_argument("--num-pools", type=int, default=FedMRIConfig.num_pools)
    p.add_argument("--lr", type=float, default=FedMRIConfig.lr)
    p.add_argument("--batch-size", type=int, default=FedMRIConfig.batch_size)
    p.add_argument("--lr-step-rounds", type=int, default=FedMRIConfig.lr_step_rounds)
    p.add_argument("--fedprox-mu", type=float, default=FedMRIConfig.fedprox_mu)
    p.add_argument("--crop", type=int, default=None, help="centre crop of every slice at load time (cheap runs)")
    p.add_argument("--max-slices-per-volume", type=int, default=None, help="slice cap per volume (cheap runs)")
    p.add_argument("--mask", action="append", default=[], metavar="SITE=TYPE:ACC:CENTRE:SEED",
                   help=f"a site's fixed mask, TYPE one of {MASK_TYPES} (default: the paper's four sites)")
    args = parse_job_args(p, argv, check=(lambda a: preflight(a, PREPARE)) if check else None)
    try:
        args.masks = parse_masks(args.mask)
    except ValueError as e:
        p.error(str(e))
    return args


def parse_masks(values: list[str]) -> dict:
    """``SITE=TYPE:ACC:CENTRE:SEED`` entries over the paper's defaults; unknown mask types are refused."""
    from src.config.fedmri import default_site_masks

    masks = default_site_masks()
    for value in values:
        site, sep, spec = value.partition("=")
        parts = spec.split(":")
        if not sep or len(parts) != 4:
            raise ValueError(f"--mask expects SITE=TYPE:ACC:CENTRE:SEED, got {value!r}")
        if parts[0] not in MASK_TYPES:
            raise ValueError(f"--mask {value!r}: unknown mask type {parts[0]!r}; one of {MASK_TYPES}")
        masks[site] = {"mask_type": parts[0], "acceleration": float(parts[1]), "center_fraction": float(parts[2]),
                       "seed": int(parts[3])}
    return masks


def build_config(args) -> FedMRIConfig:
    return FedMRIConfig(
        **common_config(args), algorithm=args.algorithm, negatives=args.negatives, beta=args.beta,
        channels=args.channels, num_pools=args.num_pools, lr=args.lr, batch_size=args.batch_size,
        lr_step_rounds=args.lr_step_rounds, fedprox_mu=args.fedprox_mu, crop=args.crop,
        max_slices_per_volume=args.max_slices_per_volume, relay_snapshot=args.relay_snapshots, masks=args.masks,
    )


def check_site_data(args, config: FedMRIConfig) -> None:
    """Bad input fails here, before the job starts: every site's datalist and files (``kspace`` present, complex,
    3-D, finite), and a mask for every site (the deep check after the pre-flight, which opens only each site's
    first file and needs no torch)."""
    from jobs.common import sites_of
    from src.data.datalist import load_site_datalist
    from src.transforms.kspace_slices import check_kspace_file

    for site in sites_of(args):
        config.mask_spec(site)
        datalist = load_site_datalist(config.site_datalist(site), config.site_data_root())
        seen = {}
        for items in datalist.values():
            for item in items:
                seen.setdefault(str(item["image"]), []).append(int(item["slice"]))
        for path, slices in seen.items():
            check_kspace_file(path, slices)


def build_recipe(args):
    from src.aggregators.fedmri import FedMRIRecipe
    from src.learners.fedmri import FedMRILearner, build_fedmri_model

    config = build_config(args)
    model = build_fedmri_model(config)
    groups = FedMRILearner.key_groups_of(model, config)
    shared = [k for k in model.state_dict() if k in groups.sent]
    negatives = args.negatives if args.algorithm == "fedmri" and args.beta > 0 else "none"
    return build_job_recipe(
        args, lambda: build_fedmri_model(config), FedMRILearner, config, recipe_class=FedMRIRecipe,
        shared_keys=shared, negatives=negatives, relay_snapshots=args.relay_snapshots,
    )


def main(argv=None) -> int:
    args = parse_args(argv, check=True)
    from src.data.validation import DataValidationError  # after the options: --help imports nothing heavy

    if args.env == "sim":  # the simulator's sites read this machine's files; POC/real sites check their own
        try:
            check_site_data(args, build_config(args))
        except (DataValidationError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    result = execute(build_recipe(args), args)
    if result is not None:
        from jobs.console import finish

        finish(result, args, key_metric="val_psnr")
        print(json.dumps({"algorithm": args.algorithm, "negatives": args.negatives}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
