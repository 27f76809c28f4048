"""MedNIST DenseNet121 FedAvg (part 1 of NVFlare's medical-imaging tutorial).

Each site trains MONAI's DenseNet121 on its own share of MedNIST (IID or Dirichlet non-IID, see
``python -m data_prep.mednist split --help``); the server averages weighted by local steps and keeps the best
global model by the sites' ``val_accuracy``; cross-site evaluation reports ``test_accuracy`` and ``test_auc``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import build_job_recipe, common_config, execute, job_parser, parse_job_args  # noqa: E402
from jobs.console import finish  # noqa: E402
from jobs.preflight import preflight  # noqa: E402
from src.config.tutorial import MedNISTConfig  # noqa: E402

#: memory one MedNIST site process needs (DenseNet121): peak PSS 861-943 MB measured with 8 sites (RSS 1041-1122 MB
#: counts the shared library pages in every process; docs/benchmarks.md), plus a margin
MEDNIST_SITE_MB = 1000
PREPARE = ".venv/bin/python -m data_prep.mednist generate && .venv/bin/python -m data_prep.mednist split"


def parse_args(argv=None, check: bool = False):
    p = job_parser(__doc__, name="mednist_fedavg", n_clients=3, num_rounds=3, local_epochs=1,
                   data_root="data/mednist", datalist_dir="datalists/mednist",
                   site_mb=MEDNIST_SITE_MB)
    p.add_argument("--lr", type=float, default=MedNISTConfig.lr, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=MedNISTConfig.batch_size)
    return parse_job_args(p, argv, check=(lambda a: preflight(a, PREPARE)) if check else None)


def build_recipe(args):
    from src.learners.classification import ClassificationLearner
    from src.models.networks import MedNISTDenseNet

    config = MedNISTConfig(**common_config(args), lr=args.lr, batch_size=args.batch_size)
    return build_job_recipe(args, MedNISTDenseNet, ClassificationLearner, config)


def main(argv=None) -> int:
    args = parse_args(argv, check=True)
    from src.learners.classification import ClassificationLearner

    finish(execute(build_recipe(args), args), args, key_metric=ClassificationLearner.key_metric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
