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

from benchmarks._wire import RoundBytes  # noqa: E402
from benchmarks.stats import Claim, write_comparison  # noqa: E402
from data_prep.common import atomic_write_json  # noqa: E402
from data_prep.multisite_prostate import RAW_SITES, site_id  # noqa: E402
from src.aggregators.fedavg import weighted_average  # noqa: E402
from src.config.iopfl import IOPFLConfig  # noqa: E402
from src.data.datalist import load_site_datalist  # noqa: E402
from src.inference.outside import evaluate_outside, load_stream  # noqa: E402
from src.inference.test_time_routing import RoutingConfig  # noqa: E402
from src.learners.client_api import result_message  # noqa: E402
from src.learners.iopfl import IOPFLLearner  # noqa: E402
from src.learners.prostate2d import Prostate2DLearner  # noqa: E402
from src.metrics.slice_volume import per_volume_scores, score_slices  # noqa: E402
from src.models.unet2d import UNet2D  # noqa: E402
from src.protocol import TRAIN_SAMPLES_KEY  # noqa: E402

METRICS = ("test_dice", "test_hd95", "test_dice2d")


#: cases per site of the default synthetic set: 4 test volumes everywhere, training sets of different sizes
#: (3 at the small PROMISE12 sites, 6 at ISBI_1.5) so that local-only training meets small sites
DEFAULT_CASES = {"BIDMC": 8, "HK": 8, "I2CVB": 8, "ISBI": 8, "ISBI_1.5": 12, "UCL": 8}
QUICK = {"rounds": 1, "tta_passes": 1, "features": [4, 8, 16], "n_cases": 4, "n_test": 1, "size": 32,
         "matrix": 64, "seeds": [0, 1]}


def _data_settings(args) -> dict:
    cases = DEFAULT_CASES if args.n_cases is None else {s: args.n_cases for s in RAW_SITES}
    return {"generator": "data_prep.synthetic.multisite_prostate", "n_cases": cases, "n_test": args.n_test,
            "shift_strength": args.shift_strength, "matrix": args.matrix, "size": args.size,
            "data_seed": args.data_seed}


def ensure_data(args) -> dict:
    """Make the synthetic set unless the datalists exist; returns its settings (``{"source": "user"}`` otherwise).

    A set this script generated carries its settings in ``<data-root>/synthetic.json`` and is regenerated when
    they differ; datalists without that file are the user's (e.g. the real data) and are used as they are.
    """
    wanted = _data_settings(args)
    stamp = Path(args.data_root) / "synthetic.json"
    have_lists = all((Path(args.datalist_dir) / f"{site_id(s)}.json").exists() for s in RAW_SITES)
    if have_lists and not stamp.exists():
        print(f"using the existing datalists in {args.datalist_dir} (not generated here)", flush=True)
        return {"source": "user"}
    if have_lists and json.loads(stamp.read_text()) == wanted:
        return {"source": "synthetic", **wanted}
    from data_prep.multisite_prostate import convert
    from data_prep.synthetic.multisite_prostate import generate

    raw = Path(args.data_root).parent / "raw" / "multisite_prostate"
    start = time.perf_counter()
    generate(raw, n_cases=wanted["n_cases"], seed=args.data_seed, shift_strength=args.shift_strength,
             matrix=args.matrix)
    convert(raw, args.data_root, args.datalist_dir, size=args.size, seed=args.data_seed, n_test=args.n_test)
    atomic_write_json(stamp, wanted)
    print(f"synthetic data made in {time.perf_counter() - start:.0f} s", flush=True)
    return {"source": "synthetic", **wanted}


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


def _test(lr, params=None) -> dict:
    """``lr.evaluate(params, "testing")`` plus each test volume's own scores under ``"volumes"`` (paired stats)."""
    backup = None
    if params is not None:
        backup = _state(lr.model)
        lr.load_params(params)
    try:
        return score_slices(*lr.predict_split("testing"), prefix="test", per_volume=True)
    finally:
        if backup is not None:
            lr.model.load_state_dict(backup)


def run_federated(algorithm: str, sites, cfg_kwargs, rounds, init, out, tracker, meter: RoundBytes | None = None
                  ) -> dict:
    """One in-process federated run; returns per-site test scores of its models (last and best).

    Each round is the learners' own :meth:`~src.learners.base.FederatedLearner.fit_round` (the order the NVFlare
    job runs), then the weighted FedAvg of the job's aggregator. A global model's validation scores are the ones
    the sites compute when they receive it in the next round (after the last round, one extra validation).
    ``meter`` keeps the round's messages (the task and each site's result) for the bytes on the wire.
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
        if meter is not None:
            meter.task(algorithm, r, global_state, rounds)
            for res in results.values():
                meter.result(algorithm, r, result_message(res))
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
        out_scores.setdefault(f"{label} (last)", {})[s] = _test(lr, global_state)
        out_scores.setdefault(f"{label} (best)", {})[s] = _test(lr, best[2])
        if algorithm == "iopfl":
            out_scores.setdefault("personalised (last)", {})[s] = _test(lr, lr.personal_state)
            out_scores.setdefault("personalised (best)", {})[s] = _test(lr, lr.best_personal_state())
    out_scores["_states"] = {
        "global_best": best[2],
        "personal_best": [lr.best_personal_state() for lr in learners.values()] if algorithm == "iopfl" else [],
    }
    return out_scores


#: federated runs of the comparison and the name of the global model each yields (IOP-FL's global is FedAvg's)
FEDERATED_METHODS = {"iopfl": "FedAvg", "fedprox": "FedProx", "fedbn": "FedBN"}


def run_federated_methods(sites, cfg_kwargs, rounds, init, out, tracker,
                          algorithms=tuple(FEDERATED_METHODS), meter: RoundBytes | None = None) -> tuple[dict, dict]:
    """Run each federated algorithm from the same ``init``; (inside scores by table name, model states by algorithm).

    Table names: ``FedAvg global (last)``, ``IOP-FL personalised (best)``, ``FedBN site model (last)``, ...
    States: ``{algorithm: {"global_best": state, "personal_best": [state per site, in sites order]}}``.
    """
    inside, states = {}, {}
    for algorithm in algorithms:
        res = run_federated(algorithm, sites, cfg_kwargs, rounds, init, out, tracker, meter)
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
        scores[s] = _test(lr)
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
        scores[s] = _test(site_lr, state)
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


#: the orderings checked on every run (``paper``: the IOP-FL claims as our acceptance checks state them, see
#: docs/iopfl.md; ``sanity``: what any fair benchmark of federated learning should show)
CLAIMS = (
    Claim("inside", "IOP-FL personalised (best)", "FedAvg global (best)", "dice", source="paper",
          note="inside personalisation >= the FedAvg global model"),
    Claim("inside", "IOP-FL personalised (last)", "FedAvg global (last)", "dice", source="paper"),
    Claim("outside", "routing_last", "global", "dice", source="paper",
          note="test-time routing >= the global model on the held-out site"),
    Claim("outside", "routing_last", "uniform_average", "dice", source="paper"),
    Claim("outside", "routing_last", "bn_adapt", "dice", source="paper"),
    Claim("inside", "centralised (last)", "FedAvg global (last)", "dice", source="sanity",
          note="pooled data is the upper reference"),
    Claim("inside", "FedAvg global (last)", "local (last)", "dice", source="sanity",
          note="federation helps small sites"),
)
NAME = "iopfl_compare"


def volume_rows(inside: dict, outside_volumes: dict, ood: str, seed: int) -> list[dict]:
    """Rows of :data:`benchmarks.stats.VOLUME_COLUMNS` for one seed (inside: every source site; outside: ``ood``)."""
    rows = []
    for method, per_site in inside.items():
        for site, scores in per_site.items():
            for case, vol in scores["volumes"].items():
                rows += [{"algorithm": "iopfl", "setting": "inside", "site": site, "method": method, "seed": seed,
                          "metric": metric, "case": case, "value": value} for metric, value in vol.items()]
    for method, vols in outside_volumes.items():
        for case, vol in vols.items():
            rows += [{"algorithm": "iopfl", "setting": "outside", "site": ood, "method": method, "seed": seed,
                      "metric": metric, "case": case, "value": value} for metric, value in vol.items()]
    return rows


def _hidden_alias(p: argparse.ArgumentParser, flag: str, dest: str, **kw) -> None:
    p.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=f"results/{NAME}")
    p.add_argument("--data-root", default="data/multisite_prostate")
    p.add_argument("--datalist-dir", default="datalists/multisite_prostate")
    p.add_argument("--ood-test", dest="ood_site", default="ISBI",
                   help="held-out site (never trained on); the reference's example (default: %(default)s)")
    _hidden_alias(p, "--ood-site", "ood_site")
    p.add_argument("--num-rounds", dest="rounds", type=int, default=12,
                   help="federated rounds (= epochs of local/centralised) (default: %(default)s)")
    _hidden_alias(p, "--rounds", "rounds", type=int)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="training seeds; every method runs once per seed on the same data (default: %(default)s)")
    _hidden_alias(p, "--seed", "seed", type=int)
    p.add_argument("--features", type=int, nargs="+", default=list(IOPFLConfig.features))
    p.add_argument("--tta-passes", type=int, default=10, help="test-time routing passes (the reference's 10)")
    p.add_argument("--n-cases", type=int, default=None,
                   help=f"cases per site of the synthetic set (default: per site {DEFAULT_CASES})")
    p.add_argument("--n-test", type=int, default=4, help="test volumes per site (default: %(default)s)")
    p.add_argument("--shift-strength", type=float, default=1.0,
                   help="synthetic site shift, 0 = identical sites (default: %(default)s)")
    p.add_argument("--matrix", type=int, default=384, help="raw in-plane matrix (real: 384) (default: %(default)s)")
    p.add_argument("--size", type=int, default=64, help="in-plane size after conversion (default: %(default)s)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic set and its split")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help=f"smoke-test setting for the tests: {QUICK}")
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**QUICK)  # explicit options still win
    args = p.parse_args(argv)
    if getattr(args, "seed", None) is not None:
        args.seeds = [args.seed]
    return args


def run_seed(args, seed: int, sites, ood: str, out: Path, tracker, meter: RoundBytes | None = None
             ) -> tuple[dict, dict, dict, dict]:
    """Every method once with training seed ``seed``: (inside, outside, outside per-volume, meta)."""
    cfg_kwargs = {"data_root": str(Path(args.data_root).resolve()), "datalist_dir": str(Path(args.datalist_dir)),
                  "features": tuple(args.features), "seed": seed, "num_threads": args.threads, "tracking": ()}
    torch.manual_seed(seed)
    init = _state(UNet2D(features=args.features))
    models = out / "models" / f"seed{seed}"
    inside, states = run_federated_methods(sites, cfg_kwargs, args.rounds, init, models, tracker, meter=meter)
    inside.update(run_local(sites, cfg_kwargs, args.rounds, init, models, tracker))
    inside.update(run_central(sites, cfg_kwargs, args.rounds, init, models, tracker))

    target = load_site_datalist(Path(args.datalist_dir) / f"{ood}.json", args.data_root)
    items = target["training"] + target["validation"] + target["testing"]
    print(f"[outside] test-time routing on {ood}: {len(items)} slices, {args.tta_passes} passes", flush=True)
    predictions: dict = {}
    outside = evaluate_outside(
        UNet2D(features=args.features), states["iopfl"]["global_best"], states["iopfl"]["personal_best"], items,
        RoutingConfig(passes=args.tta_passes, seed=seed),
        log=lambda i, parts: tracker.log(f"outside/routing/seed{seed}", parts, i), predictions=predictions,
    )
    _, labels, cases, slices = load_stream(items)
    outside_volumes = {m: per_volume_scores(pred.numpy(), labels, cases, slices) for m, pred in predictions.items()}
    return inside, outside, outside_volumes, {"ood_slices": len(items), "ood_cases": len(set(cases))}


def _write_results(args, argv, out: Path, rows, per_seed, data, sites, ood, test_cases, seconds,
                   wire: dict) -> None:
    settings = {"num_rounds": args.rounds, "local_epochs": 1, "seeds": sorted(per_seed), "ood_test": ood,
                "sites": sites, "features": args.features, "tta_passes": args.tta_passes, "test_volumes": test_cases,
                "threads": args.threads, "wall_seconds": round(seconds, 1), "data": data,
                "command": "python -m benchmarks.iopfl_compare " + " ".join(argv if argv is not None else sys.argv[1:])}
    meta = {"algorithm": "iopfl", "title": "IOP-FL: inside and outside personalisation (Jiang et al., TMI 2023)",
            "synthetic": data.get("source") == "synthetic", "settings": settings, "bytes_per_round": wire,
            "metrics": {"dice": "3-D foreground Dice per volume", "hd95": "HD95 per volume (voxels)",
                        "dice2d": "the reference's 2-D Dice incl. background"}}
    write_comparison(out, NAME, rows, meta, CLAIMS)
    last = list(per_seed.values())[-1]
    # the last seed's JSON under the historical name (notebook 03 and older tooling read it)
    atomic_write_json(out / f"{NAME}.json", {"meta": {**meta, "sites": sites, "seeds": sorted(per_seed)},
                                             "inside": last["inside"], "outside": last["outside"]})


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = ensure_data(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ood = site_id(args.ood_site)
    sites = [site_id(s) for s in RAW_SITES if site_id(s) != ood]
    if len(sites) == len(RAW_SITES):
        raise ValueError(f"--ood-test must be one of {RAW_SITES}, got {args.ood_site!r}")
    tracker, meter, wire = Tracker(out), RoundBytes(), {}
    rows, per_seed = [], {}
    test_cases = {s: _count_cases(Path(args.datalist_dir) / f"{s}.json", "testing") for s in sites}
    for seed in args.seeds:
        seed_start = time.perf_counter()
        inside, outside, outside_volumes, extra = run_seed(args, seed, sites, ood, out, tracker, meter)
        seconds = time.perf_counter() - seed_start
        meta = {"test_cases": test_cases, **extra, "rounds": args.rounds, "ood_site": ood, "sites": sites,
                "features": args.features, "tta_passes": args.tta_passes, "seconds": round(seconds, 1), "seed": seed,
                "note": f"{args.rounds} rounds x 1 local epoch, U-Net widths {args.features}, "
                        f"{args.tta_passes} routing passes; {seconds:.0f} s wall on a shared 2-core CPU."}
        atomic_write_json(out / f"{NAME}_seed{seed}.json", {"meta": meta, "inside": inside, "outside": outside})
        (out / f"{NAME}_seed{seed}.md").write_text(markdown(inside, outside, sites, ood, meta))
        rows += volume_rows(inside, outside_volumes, ood, seed)
        per_seed[seed] = {"inside": inside, "outside": outside}
        print(f"[seed {seed}] done in {seconds:.0f} s", flush=True)
        # written after every seed: an interrupted run still leaves a valid comparison of the seeds it finished
        # a round's messages have the same size every seed (fixed shapes): serialised once, after the first
        wire = wire or meter.measure()
        _write_results(args, argv, out, rows, per_seed, data, sites, ood, test_cases, time.perf_counter() - start,
                       wire)
    seconds = time.perf_counter() - start
    from benchmarks.report import write_comparison_report

    md = write_comparison_report(out / f"{NAME}.csv", out)
    print(md.read_text())
    print(f"total {seconds:.0f} s wall", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
