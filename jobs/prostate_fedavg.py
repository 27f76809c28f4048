"""Prostate 3-D UNet FedAvg on MSD Task05 (part 2 of NVFlare's medical-imaging tutorial).

Each site trains a MONAI 3-D UNet on its own T2 whole-gland volumes; the server averages the models weighted
by local steps, keeps the best global model by the sites' ``val_dice``, and cross-site evaluation scores every
site's best local model and the global model on every site's test cases.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import build_job_recipe, common_config, execute, job_parser, parse_job_args  # noqa: E402
from jobs.console import finish  # noqa: E402
from jobs.preflight import preflight  # noqa: E402
from src.config.tutorial import ProstateConfig  # noqa: E402

PREPARE = "make data"


def parse_args(argv=None, check: bool = False):
    p = job_parser(__doc__, name="prostate_fedavg", n_clients=3, num_rounds=3, local_epochs=5,
                   data_root="data/prostate", datalist_dir="datalists/msd_prostate")
    p.add_argument("--lr", type=float, default=ProstateConfig.lr, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=ProstateConfig.batch_size)
    return parse_job_args(p, argv, check=(lambda a: preflight(a, PREPARE)) if check else None)


def build_recipe(args):
    from src.learners.segmentation import SegmentationLearner
    from src.models.networks import ProstateUNet

    config = ProstateConfig(**common_config(args), lr=args.lr, batch_size=args.batch_size)
    return build_job_recipe(args, lambda: ProstateUNet(channels=config.channels), SegmentationLearner, config)


def main(argv=None) -> int:
    args = parse_args(argv, check=True)
    from src.learners.segmentation import SegmentationLearner

    finish(execute(build_recipe(args), args), args, key_metric=SegmentationLearner.key_metric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
