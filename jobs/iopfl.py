"""IOP-FL on multi-site prostate MRI (Jiang et al., TMI 2023): inside and outside federated personalisation.

Inside: every source site trains the global 2-D U-Net one epoch per round (weighted FedAvg by training slices)
and keeps a private personalised model that never leaves it. ``--algorithm fedprox|fedbn|fedavg`` runs the
baselines on the same data and seeds. Outside: ``--ood-test SITE`` keeps SITE out of training; with
``--export-personalised`` (an explicit, logged opt-in of the server and of every source site) the personalised
models are relayed to SITE after the last round and test-time routing runs there (scores in the server's
``iopfl_outside.json``). ``python -m benchmarks.iopfl_compare`` compares every method in one go.

    python -m data_prep.multisite_prostate generate && python -m data_prep.multisite_prostate convert
    python jobs/iopfl.py --num-rounds 3                                     # simulator, six sites
    python jobs/iopfl.py --ood-test ISBI --export-personalised             # five sources + routing on ISBI
    python jobs/iopfl.py --env export --export-dir /tmp/iopfl_job
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import build_job_recipe, common_config, execute, job_parser, parse_job_args  # noqa: E402
from jobs.console import finish  # noqa: E402
from jobs.preflight import preflight  # noqa: E402
from src.config.iopfl import ALGORITHMS, IOPFLConfig  # noqa: E402

#: NVFlare client names of the six sites (``ISBI_1.5`` -> ``ISBI_1_5``; see data_prep.multisite_prostate)
SITES = ("BIDMC", "HK", "I2CVB", "ISBI", "ISBI_1_5", "UCL")
PREPARE = (".venv/bin/python -m data_prep.multisite_prostate generate && "
           ".venv/bin/python -m data_prep.multisite_prostate convert")


def _check(args) -> None:
    preflight(args, PREPARE, sites=args.sites or list(SITES[: args.n_clients]))


def parse_args(argv=None, check: bool = False):
    p = job_parser(__doc__, name="iopfl", n_clients=len(SITES), num_rounds=3, local_epochs=1,
                   data_root=IOPFLConfig.data_root, datalist_dir=IOPFLConfig.datalist_dir)
    p.add_argument("--algorithm", choices=ALGORITHMS, default="iopfl", help="method the sites run")
    p.add_argument("--ood-test", default="", metavar="SITE", help="hold SITE out of training (outside evaluation)")
    p.add_argument("--export-personalised", action="store_true",
                   help="opt in to relaying the sites' personalised models to the --ood-test site (logged)")
    p.add_argument("--features", type=int, nargs="+", default=list(IOPFLConfig.features), help="U-Net widths")
    p.add_argument("--alpha", type=float, default=IOPFLConfig.alpha, help="IOP-FL personalised-update weight")
    p.add_argument("--fedprox-mu", type=float, default=IOPFLConfig.fedprox_mu)
    p.add_argument("--lr", type=float, default=IOPFLConfig.lr)
    p.add_argument("--batch-size", type=int, default=IOPFLConfig.batch_size)
    p.add_argument("--tta-passes", type=int, default=IOPFLConfig.tta_passes, help="test-time routing passes")
    args = parse_job_args(p, argv, check=_check if check else None)
    if args.sites is None:
        args.sites = list(SITES[: args.n_clients])
    if args.ood_test and args.ood_test not in args.sites:
        p.error(f"--ood-test must be one of the sites {args.sites}, got {args.ood_test!r}")
    if args.ood_test and args.algorithm != "iopfl":
        p.error(f"--ood-test routes over IOP-FL's personalised models: needs --algorithm iopfl, got {args.algorithm!r}")
    return args


def build_recipe(args):
    from src.aggregators.fedavg import WeightedFedAvgAggregator
    from src.aggregators.iopfl import IOPFLRecipe
    from src.learners.iopfl import IOPFLLearner
    from src.learners.prostate2d import Prostate2DLearner
    from src.models.unet2d import UNet2D

    config = IOPFLConfig(
        **common_config(args), algorithm=args.algorithm, features=tuple(args.features), alpha=args.alpha,
        fedprox_mu=args.fedprox_mu, lr=args.lr, batch_size=args.batch_size, tta_passes=args.tta_passes,
        export_personalised=args.export_personalised,
    )
    learner = IOPFLLearner if args.algorithm == "iopfl" else Prostate2DLearner
    train_sites = [s for s in args.sites if s != args.ood_test]
    return build_job_recipe(
        args, lambda: UNet2D(features=config.features), learner, config, recipe_class=IOPFLRecipe,
        aggregator=WeightedFedAvgAggregator(), train_sites=train_sites, ood_site=args.ood_test,
        export_personalised=args.export_personalised,
    )


def main(argv=None) -> int:
    args = parse_args(argv, check=True)
    result = execute(build_recipe(args), args)
    summary = finish(result, args, key_metric="val_dice")
    if summary is not None:
        print_outside(result)
    return 0


def print_outside(result) -> None:
    """The outside (held-out site) scores the server wrote, as a table; says so when there are none."""
    import json

    paths = sorted(Path(result).rglob("iopfl_outside.json"))
    if not paths:
        print("\nOutside evaluation: none (run with --ood-test SITE --export-personalised for it)")
        return
    for path in paths:
        scores = json.loads(path.read_text())
        print(f"\nOutside evaluation (held-out site, test-time routing over the personalised models): {path}")
        print(_outside_table(scores))


def _outside_table(out: dict) -> str:
    metrics = out.get("metrics") or {}
    lines = [f"held-out site: {out.get('ood_site')}; personalised models relayed from: "
             f"{', '.join(out.get('experts_from') or []) or 'none'}"
             + (f"; refused (opt-in off): {', '.join(out['refused'])}" if out.get("refused") else "")]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {float(v):.4f} |" for k, v in metrics.items() if isinstance(v, (int, float))]
    else:
        lines.append("no scores (no personalised model was exported)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
