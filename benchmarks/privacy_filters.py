"""What each privacy filter costs: Dice of the prostate FedAvg job and the size of one site's update, per filter.

    python -m benchmarks.privacy_filters --out results/privacy_filters        # synthetic data made if missing

For every setting the same job (``jobs/prostate_fedavg.py``: 3 sites, seeded initial model) runs in the NVFlare
simulator with ``--privacy ...``; Dice is the sites' ``val_dice`` of the global model in the last round (mean over
sites; that model has been through ``rounds - 1`` aggregations). Bytes: one real round-0 update of site-1 (its
learner trained from the same initial model), passed through the filter outside NVFlare: the dense payload size
(the filters zero entries but still send full arrays) and the fraction of entries that are non-zero (what a sparse
encoding would carry). Also per setting, measured in its run: the bytes of each site's result per round as NVFlare
serialises it (``summary["wire_bytes"]``, see docs/communication.md). On synthetic data: shows the trade-off, not
clinical performance.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

#: (label, extra job options); exclude keeps the first encoder block on the sites
SETTINGS = (
    ("none", []),
    ("percentile", ["--privacy", "percentile", "--privacy-percentile", "10", "--privacy-gamma", "0.01"]),
    ("percentile", ["--privacy", "percentile", "--privacy-percentile", "90", "--privacy-gamma", "0.01"]),
    ("svt", ["--privacy", "svt"]),
    ("svt", ["--privacy", "svt", "--svt-fraction", "0.5", "--svt-epsilon", "10", "--svt-gamma", "1e-3"]),
    ("exclude", ["--privacy", "exclude", "--exclude-vars", r"^model\.0\."]),
)


def ensure_data(out: Path, seed: int) -> tuple[Path, Path]:
    data, datalists = out / "data" / "prostate", out / "data" / "datalists"
    if not (datalists / "site-3.json").exists():
        from data_prep.msd_prostate import convert
        from data_prep.synthetic.msd_prostate import generate

        task = generate(out / "data" / "raw", n_train=18, n_test=0, n_scanners=3, seed=seed)
        convert(task, data, n_sites=3, datalist_dir=datalists)  # 3/2/1 training/validation/testing cases per site
    return data, datalists


def job_args(opts, data: Path, datalists: Path, workspace: Path, rounds: int, epochs: int, extra: list[str]):
    from jobs.prostate_fedavg import parse_args

    return parse_args(["--n-clients", "3", "--num-rounds", str(rounds), "--local-epochs", str(epochs),
                       "--tracking", "none", "--no-cross-site-eval", "--seed", str(opts.seed),
                       "--data-root", str(data), "--datalist-dir", str(datalists), "--workspace", str(workspace),
                       "--name", "privacy_bench", *extra])


def site_update(args) -> tuple[dict[str, np.ndarray], int]:
    """Site-1's real round-0 weight difference from the job's seeded initial model, and its number of steps."""
    import torch

    from jobs.common import common_config
    from src.config.tutorial import ProstateConfig
    from src.learners.segmentation import SegmentationLearner
    from src.models.networks import ProstateUNet

    config = ProstateConfig(**common_config(args), lr=args.lr, batch_size=args.batch_size)
    torch.manual_seed(args.seed)  # as parse_job_args: the job's bundled initial model is this one
    initial = ProstateUNet(channels=config.channels).state_dict()
    learner = SegmentationLearner("site-1", config, output_dir=Path(tempfile.mkdtemp(prefix="privacy-bench-")))
    result = learner.train_round({k: v.clone() for k, v in initial.items()}, 0)
    diff = {k: (v.detach().cpu() - initial[k]).numpy() for k, v in result.params.items()}
    return diff, int(result.num_steps)


def filtered_size(settings, diff: dict[str, np.ndarray], steps: int) -> tuple[int, float]:
    """(dense bytes, non-zero fraction) of ``diff`` after the filter of ``settings``."""
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable

    from src.privacy.filters import build_filter

    data = {k: v.copy() for k, v in diff.items()}
    flt = build_filter(settings, list(data))
    if flt is not None:
        dxo = DXO(data_kind=DataKind.WEIGHT_DIFF, data=data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps})
        data = flt.process_dxo(dxo, Shareable(), FLContext()).data
    arrays = [np.asarray(v) for v in data.values()]
    total = sum(a.size for a in arrays)
    return sum(a.nbytes for a in arrays), float(sum(np.count_nonzero(a) for a in arrays) / max(total, 1))


def _mean_bytes(wire: dict, direction: str) -> float:
    values = [b for dirs in wire.values() for b in dirs.get(direction, [])]
    return float(np.mean(values)) if values else float("nan")


def run(opts) -> list[dict]:
    from jobs.common import execute
    from jobs.prostate_fedavg import build_recipe
    from src.privacy.filters import settings_from_args
    from src.reporting.summary import report

    out = Path(opts.out).resolve()
    data, datalists = ensure_data(out, opts.seed)
    base_args = job_args(opts, data, datalists, out / "ws", opts.rounds, opts.epochs, [])
    diff, steps = site_update(base_args)
    rows = []
    for label, extra in SETTINGS:
        args = job_args(opts, data, datalists, out / "ws" / f"{len(rows)}", opts.rounds, opts.epochs, extra)
        settings = settings_from_args(args)
        nbytes, nonzero = filtered_size(settings, diff, steps)
        start = time.monotonic()
        summary = report(execute(build_recipe(args), args), "val_dice", quiet=True, publish=False)
        dice = [summary["rounds"][s]["val_dice"][-1] for s in sorted(summary["rounds"])]
        wire = summary.get("wire_bytes") or {}
        rows.append({"filter": label, "parameters": settings.describe(), "val_dice": float(np.mean(dice)),
                     "val_dice_per_site": dice, "update_bytes": nbytes, "nonzero_fraction": nonzero,
                     # measured in the run: NVFlare's serialisation of each site's result, mean per site and round
                     "wire_bytes_site_to_server_per_round": _mean_bytes(wire, "result"),
                     "wire_bytes_server_to_site_per_round": _mean_bytes(wire, "task"),
                     "seconds": time.monotonic() - start})
        print(f"{label:10s} {settings.describe():70s} Dice {np.mean(dice):.3f}  bytes {nbytes}  "
              f"non-zero {nonzero:.3f}", flush=True)
    meta = {"rounds": opts.rounds, "local_epochs": opts.epochs, "seed": opts.seed, "sites": 3,
            "data": "synthetic MSD prostate (18 cases, 3 scanners)", "update_steps": steps}
    from benchmarks._report import machine, write_report

    write_report({"settings": meta, "machine": machine(), "rows": rows}, out / "privacy_filters.json",
                 markdown(rows, meta), out / "privacy_filters.md")
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Prostate FedAvg, {meta['sites']} sites, {meta['rounds']} rounds x {meta['local_epochs']} epochs, "
             f"seed {meta['seed']}, {meta['data']}; bytes of one site update ({meta['update_steps']} steps)", "",
             "| filter | parameters | val_dice (last round, mean of sites) | update bytes (dense) | non-zero | "
             "site -> server bytes/round on the wire (measured) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['filter']} | {r['parameters']} | {r['val_dice']:.3f} | {r['update_bytes']:,} | "
                     f"{r['nonzero_fraction']:.1%} | "
                     f"{r.get('wire_bytes_site_to_server_per_round', float('nan')):,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "results" / "privacy_filters"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
