"""FedICRA (arXiv 2304.05635): weakly supervised personalised segmentation from per-site sparse labels.

Every site trains the multi-head U-Net with its own sparse label form (default: the paper's table: FAZ scribble,
keypoint, block, box, noisy scribble; ODOC scribble, noisy scribble, box, keypoint, block; ``--label-form
SITE:FORM`` overrides), keeps its channel selection, and mixes the averaged main decoder with its own
(adaptive aggregation) before local training. The server is FedAvg weighted by each site's number of training
batches. ``--algorithm fedavg|fedprox|fedbn|fedrep|local|centralised`` runs the baselines on the same data;
``centralised`` runs one site ``pooled`` on the union of the sites' data (dense masks unless ``--label-form
pooled:FORM``). ``python -m benchmarks.fedicra_compare`` compares every method in one go.

    python -m data_prep.fedicra generate --out data/fedicra --size 64
    python -m data_prep.fedicra convert --task faz --data-root data/fedicra/FAZ_h5
    python jobs/fedicra.py --task faz --num-rounds 3                          # simulator, five sites
    python jobs/fedicra.py --task odoc --label-form site-3:scribble --env export --export-dir /tmp/fedicra_job
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import ROOT, build_job_recipe, common_config, execute, job_parser, parse_job_args  # noqa: E402
from jobs.preflight import preflight  # noqa: E402
from src.config.fedicra import ALGORITHMS, TASKS, FedICRAConfig  # noqa: E402
from src.data.fedicra import LABEL_FORMS  # noqa: E402

DATA = {"faz": ("data/fedicra/FAZ_h5", "datalists/fedicra_faz"), "odoc": ("data/fedicra/ODOC_h5",
                                                                          "datalists/fedicra_odoc")}
POOLED = "pooled"


def prepare_command(task: str) -> str:
    """What to run to make ``task``'s data (shown when the pre-flight fails)."""
    return (f".venv/bin/python -m data_prep.fedicra generate --out data/fedicra --size 64 && "
            f".venv/bin/python -m data_prep.fedicra convert --task {task} --data-root {DATA[task][0]}")


def _task_defaults(args) -> None:
    """The task's data root and datalist folder where the options leave them unset; the federation's sites."""
    data_root, datalist_dir = DATA[args.task]
    args.data_root = args.data_root or data_root
    args.datalist_dir = args.datalist_dir or datalist_dir
    args.federation_sites = args.sites or [f"site-{i}" for i in range(1, args.n_clients + 1)]


def _check(args) -> None:
    """Pre-flight of every federation site (``centralised`` too: the pooled list is made from them)."""
    _task_defaults(args)
    preflight(args, prepare_command(args.task), sites=args.federation_sites)


def parse_label_forms(values: list[str], sites: list[str]) -> dict[str, str]:
    forms = {}
    for value in values:
        site, sep, form = value.partition(":")
        if not sep or site not in sites or form not in LABEL_FORMS:
            raise ValueError(f"--label-form must be SITE:FORM with SITE in {sites} and FORM in {LABEL_FORMS}, "
                             f"got {value!r}")
        forms[site] = form
    return forms


def parse_args(argv=None, check: bool = False):
    p = job_parser(__doc__, name="fedicra", n_clients=5, num_rounds=3, local_epochs=1, data_root=None,
                   datalist_dir=None)
    p.add_argument("--task", choices=TASKS, default="faz")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="fedicra", help="method the sites run")
    p.add_argument("--label-form", action="append", default=[], metavar="SITE:FORM",
                   help=f"training label form of one site, FORM in {LABEL_FORMS} (repeatable)")
    d = FedICRAConfig
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="base lr of the poly schedule")
    p.add_argument("--iterations-per-round", type=int, default=d.iterations_per_round)
    p.add_argument("--total-iterations", type=int, default=d.total_iterations, help="poly lr horizon")
    p.add_argument("--rep-iterations", type=int, default=d.rep_iterations, help="FedRep body iterations a round")
    p.add_argument("--mixing-warmup", type=int, default=d.mixing_warmup, help="iterations before mixing")
    p.add_argument("--mixing-batches", type=int, default=d.mixing_batches, help="batches W learns on (0 = all)")
    p.add_argument("--mixing-max-first-epochs", type=int, default=d.mixing_max_first_epochs)
    p.add_argument("--fedprox-mu", type=float, default=d.fedprox_mu)
    p.add_argument("--no-augment", action="store_true", help="switch the training augmentation off")
    args = parse_job_args(p, argv, check=_check if check else None)
    _task_defaults(args)
    args.sites = [POOLED] if args.algorithm == "centralised" else list(args.federation_sites)
    try:
        args.label_forms = parse_label_forms(args.label_form, args.sites)
    except ValueError as e:
        p.error(str(e))
    return args


def pooled_datalist(args) -> str:
    """``centralised``: one datalist ``pooled.json`` holding every site's items (same data root)."""
    pooled = {"training": [], "validation": [], "testing": []}
    for site in args.federation_sites:
        path = Path(args.datalist_dir) / f"{site}.json"
        if not path.is_file():
            raise FileNotFoundError(f"centralised: datalist {str(path)!r} of {site} does not exist")
        raw = json.loads(path.read_text())
        for split in pooled:
            pooled[split] += raw.get(split, [])
    out = ROOT / "workspace" / f"{args.name}_pooled_datalists"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{POOLED}.json").write_text(json.dumps(pooled, indent=1))
    return str(out)


def build_config(args) -> FedICRAConfig:
    values = common_config(args)
    if args.algorithm == "centralised":
        values["datalist_dir"] = pooled_datalist(args)
    return FedICRAConfig(
        **values, task=args.task, algorithm=args.algorithm, federation_sites=tuple(args.federation_sites),
        label_forms=args.label_forms, batch_size=args.batch_size, lr=args.lr,
        iterations_per_round=args.iterations_per_round, total_iterations=args.total_iterations,
        rep_iterations=args.rep_iterations, mixing_warmup=args.mixing_warmup, mixing_batches=args.mixing_batches,
        mixing_max_first_epochs=args.mixing_max_first_epochs, fedprox_mu=args.fedprox_mu,
        augment=not args.no_augment,
    )


def build_recipe(args, check_data: bool = True):
    """The FedICRA recipe; ``check_data`` reads every site's items first (bad input stops here, file named)."""
    from src.aggregators.fedavg import FedAvgAggregator
    from src.learners.fedicra import FedICRALearner, build_fedicra_model, prepare_site_datalist
    from src.protocol import NUM_STEPS_KEY

    config = build_config(args)
    if check_data:
        for site in args.sites:
            prepare_site_datalist(config, site)
    return build_job_recipe(args, lambda: build_fedicra_model(config), FedICRALearner, config,
                            aggregator=FedAvgAggregator(weight_key=NUM_STEPS_KEY))


def main(argv=None) -> int:
    args = parse_args(argv, check=True)
    from src.data.validation import DataValidationError  # after the options: --help imports nothing heavy

    try:
        recipe = build_recipe(args, check_data=args.env != "export")
    except DataValidationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = execute(recipe, args)
    if result is not None:
        from jobs.console import finish

        finish(result, args, key_metric="val_dice")
    return 0


if __name__ == "__main__":
    sys.exit(main())
