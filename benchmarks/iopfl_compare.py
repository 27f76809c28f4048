"""Every IOP-FL comparison on the same six-site prostate data in one command: tables as JSON + markdown + plot.

    python -m benchmarks.iopfl_compare --out results/iopfl_compare            # synthetic data made if missing

Inside (the five source sites, each scored on its own test cases, 3-D foreground Dice / HD95 / reference 2-D
Dice): FedAvg global, FedProx global, FedBN site models, IOP-FL personalised models, local-only models, one
centralised model trained on the pooled training slices. Outside (the held-out site, never trained on): global,
uniform expert average, BN-statistics adaptation, test-time routing (first and last pass).

The federated rounds run in this process with the same learners and the same weighted FedAvg
(:func:`src.aggregators.fedavg.weighted_average`) as the NVFlare job, without the simulator's start-up
and per-round overhead. IOP-FL's global model is FedAvg's (same rounds, same seeds), so one run yields both.
``last`` = after the final round; ``best`` = the round with the best validation Dice (mean over sites for a
global model, per site for personalised models); the test split never selects anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_prep.common import atomic_write_json  # noqa: E402
from data_prep.multisite_prostate import RAW_SITES, site_id  # noqa: E402
from src.aggregators.fedavg import weighted_average  # noqa: E402
from src.config.iopfl import IOPFLConfig  # noqa: E402
from src.data.datalist import load_site_datalist  # noqa: E402
from src.inference.outside import evaluate_outside  # noqa: E402
from src.inference.test_time_routing import RoutingConfig  # noqa: E402
from src.learners.iopfl import IOPFLLearner  # noqa: E402
from src.learners.prostate2d import Prostate2DLearner  # noqa: E402
from src.models.unet2d import UNet2D  # noqa: E402
from src.protocol import TRAIN_SAMPLES_KEY  # noqa: E402

METRICS = ("test_dice", "test_hd95", "test_dice2d")


def ensure_data(args) -> None:
    if all((Path(args.datalist_dir) / f"{site_id(s)}.json").exists() for s in RAW_SITES):
        return
    from data_prep.multisite_prostate import convert
    from data_prep.synthetic.multisite_prostate import generate

    raw = Path(args.data_root).parent / "raw" / "multisite_prostate"
    generate(raw, n_cases=args.n_cases, seed=args.seed)
    convert(raw, args.data_root, args.datalist_dir, size=args.size, seed=args.seed)


class Tracker:
    """TensorBoard scalars of every method, site and round (``tensorboard --logdir <out>/tb``)."""

    def __init__(self, out: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"))
        except ImportError:
            self.writer = None

    def log(self, tag: str, metrics: dict, step: int) -> None:
        if self.writer:
            for k, v in metrics.items():
                self.writer.add_scalar(f"{tag}/{k}", v, step)


def _state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def run_federated(algorithm: str, sites, cfg_kwargs, rounds, init, out, tracker) -> dict:
    """One in-process federated run; returns per-site test scores of its models (last and best).

    Each round is the learners' own :meth:`~src.learners.base.FederatedLearner.fit_round` (the order the NVFlare
    job runs), then the weighted FedAvg of the job's aggregator. A global model's validation scores are the ones
    the sites compute when they receive it in the next round (after the last round, one extra validation).
    """
    cls = IOPFLLearner if algorithm == "iopfl" else Prostate2DLearner
    learners = {s: cls(s, IOPFLConfig(**cfg_kwargs, algorithm=algorithm), output_dir=out / algorithm) for s in sites}
    global_state = {k: v.clone() for k, v in init.items()}
    best = (-np.inf, None, None)  # (mean val dice, round, state)

    def consider(r: int, state: dict, vals: dict, train: dict, seconds: float) -> None:
        nonlocal best
        for s in sites:
            tracker.log(f"{algorithm}/{s}", {**vals[s], **train.get(s, {})}, r)
        mean_val = float(np.mean([v["val_dice"] for v in vals.values()]))
        if mean_val > best[0]:
            best = (mean_val, r, state)
        print(f"[{algorithm}] round {r}/{rounds}: mean global val_dice {mean_val:.4f} ({seconds:.1f} s)", flush=True)

    train, start = {}, time.perf_counter()
    for r in range(1, rounds + 1):
        results = {s: lr.fit_round(global_state, r) for s, lr in learners.items()}
        if r > 1:  # the sites just scored the global model of round r - 1
            consider(r - 1, global_state, {s: res.received_metrics for s, res in results.items()}, train,
                     time.perf_counter() - start)
            start = time.perf_counter()
        shared = weighted_average([res.params for res in results.values()],
                                  [res.meta[TRAIN_SAMPLES_KEY] for res in results.values()])
        global_state = {**global_state, **{k: torch.as_tensor(v) for k, v in shared.items()}}
        train = {s: {k: v for k, v in res.metrics.items() if k.startswith("train_") or k.endswith("_personal")}
                 for s, res in results.items()}
    consider(rounds, global_state, {s: lr.evaluate(global_state, "validation") for s, lr in learners.items()},
             train, time.perf_counter() - start)
    out_scores = {"best_round": best[1]}
    for s, lr in learners.items():
        label = "site model" if algorithm == "fedbn" else "global"
        out_scores.setdefault(f"{label} (last)", {})[s] = lr.evaluate(global_state, "testing")
        out_scores.setdefault(f"{label} (best)", {})[s] = lr.evaluate(best[2], "testing")
        if algorithm == "iopfl":
            out_scores.setdefault("personalised (last)", {})[s] = lr.evaluate(lr.personal_state, "testing")
            out_scores.setdefault("personalised (best)", {})[s] = lr.evaluate(lr.best_personal_state(), "testing")
    out_scores["_states"] = {
        "global_best": best[2],
        "personal_best": [lr.best_personal_state() for lr in learners.values()] if algorithm == "iopfl" else [],
    }
    return out_scores


#: federated runs of the comparison and the name of the global model each yields (IOP-FL's global is FedAvg's)
FEDERATED_METHODS = {"iopfl": "FedAvg", "fedprox": "FedProx", "fedbn": "FedBN"}


def run_federated_methods(sites, cfg_kwargs, rounds, init, out, tracker,
                          algorithms=tuple(FEDERATED_METHODS)) -> tuple[dict, dict]:
    """Run each federated algorithm from the same ``init``; (inside scores by table name, model states by algorithm).

    Table names: ``FedAvg global (last)``, ``IOP-FL personalised (best)``, ``FedBN site model (last)``, ...
    States: ``{algorithm: {"global_best": state, "personal_best": [state per site, in sites order]}}``.
    """
    inside, states = {}, {}
    for algorithm in algorithms:
        res = run_federated(algorithm, sites, cfg_kwargs, rounds, init, out, tracker)
        states[algorithm] = res.pop("_states")
        res.pop("best_round")
        prefix = FEDERATED_METHODS[algorithm]
        for k, v in res.items():
            inside[k.replace("global", f"{prefix} global").replace("site model", f"{prefix} site model")
                   .replace("personalised", "IOP-FL personalised")] = v
    return inside, states


def run_local(sites, cfg_kwargs, rounds, init, out, tracker) -> dict:
    scores = {}
    for s in sites:
        lr = Prostate2DLearner(s, IOPFLConfig(**cfg_kwargs, algorithm="fedavg"), output_dir=out / "local")
        lr.load_params(init)
        for r in range(1, rounds + 1):
            tracker.log(f"local/{s}", lr.train_round(None, r).metrics, r)
        scores[s] = lr.evaluate(split="testing")
        print(f"[local] {s}: test_dice {scores[s]['test_dice']:.4f}", flush=True)
    return {"local (last)": scores}


def run_central(sites, cfg_kwargs, rounds, init, out, tracker) -> dict:
    """One model on the pooled training (and validation) slices of every source site, scored per site."""
    pooled = {"training": [], "validation": [], "testing": []}
    for s in sites:
        raw = json.loads((Path(cfg_kwargs["datalist_dir"]) / f"{s}.json").read_text())
        for split in ("training", "validation"):
            pooled[split] += [{**it, "case": f"{s}/{it['case']}"} for it in raw[split]]
    pooled_dir = out / "central" / "datalists"
    atomic_write_json(pooled_dir / "pooled.json", pooled)
    kwargs = {**cfg_kwargs, "datalist_dir": str(pooled_dir)}
    lr = Prostate2DLearner("pooled", IOPFLConfig(**kwargs, algorithm="fedavg"), output_dir=out / "central")
    lr.load_params(init)
    for r in range(1, rounds + 1):
        tracker.log("central", lr.train_round(None, r).metrics, r)
    state = _state(lr.model)
    scores = {}
    for s in sites:
        site_lr = Prostate2DLearner(s, IOPFLConfig(**cfg_kwargs, algorithm="fedavg"), output_dir=out / "central")
        scores[s] = site_lr.evaluate(state, "testing")
    print(f"[central] mean test_dice {np.mean([v['test_dice'] for v in scores.values()]):.4f}", flush=True)
    return {"centralised (last)": scores}


def _count_cases(datalist: Path, split: str) -> int:
    return len({item["case"] for item in json.loads(datalist.read_text())[split]})


def markdown(inside: dict, outside: dict, sites, ood: str, meta: dict) -> str:
    lines = [f"# IOP-FL comparison ({meta['rounds']} rounds, held-out site {ood})", "",
             f"Synthetic data; {meta['note']} Test volumes per site: {meta['test_cases']}; "
             f"{meta['ood_slices']} slices on the held-out site. One seed: differences of a few Dice points "
             "are within run-to-run noise.", "",
             "## Inside: each source site's test cases (3-D foreground Dice / HD95 in voxels / reference 2-D Dice)",
             "", "| method | " + " | ".join(sites) + " | mean Dice |", "|---" * (len(sites) + 2) + "|"]
    for method, per_site in inside.items():
        cells = [f"{per_site[s]['test_dice']:.3f} / {per_site[s]['test_hd95']:.1f} / {per_site[s]['test_dice2d']:.3f}"
                 for s in sites]
        mean = np.mean([per_site[s]["test_dice"] for s in sites])
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean:.3f} |")
    lines += ["", f"## Outside: held-out site {ood} (all its slices as one unlabelled stream)", "",
              "| method | 3-D Dice | HD95 | 2-D Dice (ref.) |", "|---|---|---|---|"]
    for method, m in outside.items():
        lines.append(f"| {method} | {m['ood_dice']:.3f} | {m['ood_hd95']:.1f} | {m['ood_dice2d']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(inside: dict, outside: dict, sites, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(inside)
    for i, (method, per_site) in enumerate(inside.items()):
        a.bar(np.arange(len(sites)) + i * width, [per_site[s]["test_dice"] for s in sites], width, label=method)
    a.set_xticks(np.arange(len(sites)) + 0.4 - width / 2, sites)
    a.set_ylabel("3-D foreground Dice (test)")
    a.set_title("inside")
    a.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    b.bar(range(len(outside)), [m["ood_dice"] for m in outside.values()])
    b.set_xticks(range(len(outside)), list(outside), rotation=45, ha="right")
    b.set_title("outside (held-out site)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/iopfl_compare")
    p.add_argument("--data-root", default="data/multisite_prostate")
    p.add_argument("--datalist-dir", default="datalists/multisite_prostate")
    p.add_argument("--ood-site", default="ISBI", help="held-out site (never trained on); the reference's example")
    p.add_argument("--rounds", type=int, default=30, help="federated rounds (= epochs of local/centralised)")
    p.add_argument("--features", type=int, nargs="+", default=list(IOPFLConfig.features))
    p.add_argument("--tta-passes", type=int, default=10, help="test-time routing passes (the reference's 10)")
    p.add_argument("--n-cases", type=int, default=6, help="cases per site when generating synthetic data")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ensure_data(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ood = site_id(args.ood_site)
    sites = [site_id(s) for s in RAW_SITES if site_id(s) != ood]
    if len(sites) == len(RAW_SITES):
        raise ValueError(f"--ood-site must be one of {RAW_SITES}, got {args.ood_site!r}")
    cfg_kwargs = {"data_root": str(Path(args.data_root).resolve()), "datalist_dir": str(Path(args.datalist_dir)),
                  "features": tuple(args.features), "seed": args.seed, "num_threads": args.threads, "tracking": ()}
    torch.manual_seed(args.seed)
    init = _state(UNet2D(features=args.features))
    tracker = Tracker(out)
    start = time.perf_counter()
    inside, states = run_federated_methods(sites, cfg_kwargs, args.rounds, init, out / "models", tracker)
    inside.update(run_local(sites, cfg_kwargs, args.rounds, init, out / "models", tracker))
    inside.update(run_central(sites, cfg_kwargs, args.rounds, init, out / "models", tracker))

    target = load_site_datalist(Path(args.datalist_dir) / f"{ood}.json", args.data_root)
    items = target["training"] + target["validation"] + target["testing"]
    print(f"[outside] test-time routing on {ood}: {len(items)} slices, {args.tta_passes} passes", flush=True)
    outside = evaluate_outside(
        UNet2D(features=args.features), states["iopfl"]["global_best"], states["iopfl"]["personal_best"], items,
        RoutingConfig(passes=args.tta_passes, seed=args.seed),
        log=lambda i, parts: tracker.log("outside/routing", parts, i),
    )
    seconds = time.perf_counter() - start
    test_cases = {s: _count_cases(Path(args.datalist_dir) / f"{s}.json", "testing") for s in sites}
    meta = {"test_cases": test_cases, "ood_slices": len(items)}
    meta |= {"rounds": args.rounds, "ood_site": ood, "sites": sites, "features": args.features,
            "tta_passes": args.tta_passes, "seconds": round(seconds, 1), "seed": args.seed,
            "note": f"{args.rounds} rounds x 1 local epoch, U-Net widths {args.features}, "
                    f"{args.tta_passes} routing passes; {seconds:.0f} s wall on a shared, loaded 2-core CPU."}
    atomic_write_json(out / "iopfl_compare.json", {"meta": meta, "inside": inside, "outside": outside})
    (out / "iopfl_compare.md").write_text(markdown(inside, outside, sites, ood, meta))
    plot(inside, outside, sites, out / "iopfl_compare.png")
    print((out / "iopfl_compare.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
