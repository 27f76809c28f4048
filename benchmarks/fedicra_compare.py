"""Every FedICRA comparison on the same sites and sparse labels in one command: CSV + JSON + markdown + plot.

    python -m benchmarks.fedicra_compare --task faz --seeds 0 1 2          # synthetic data made if missing
    python -m benchmarks.fedicra_compare --task odoc --quick                # the test's tiny setting

Methods (same data, same sparse label form per site, same network and initial model per seed):
FedICRA; FedAvg and FedProx (global model); FedBN and FedRep (personalised baselines); local (each site alone on
its sparse labels: the lower bound); centralised (one model on the pooled training data with the dense masks: the
upper bound). The federated rounds run in this process with the same learner and the same FedAvg weighting
(number of training batches) as the NVFlare job (``jobs/fedicra.py``), without the simulator's overhead.

Model selection on the validation split only: global models at the round with the best mean validation Dice;
personalised and local models per site at their best validation Dice; the centralised model at its best pooled
validation Dice. Each site's test images are scored one by one (MONAI Dice and HD95 in pixels; ODOC cup and disc
separately; an empty prediction of a present structure counts the image diagonal as HD95).

Outputs in ``--out`` (the shape of :mod:`benchmarks.stats`, read by ``python -m benchmarks.report``):
``fedicra_compare_<task>.csv`` (one row per setting = task, site, method, seed, metric: the mean over the site's
``n`` test images), ``_volumes.csv`` (every test image's score: the paired comparisons), ``_meta.json`` (settings,
timing, the expected orderings: :func:`claims`), ``.md`` (mean +/- std and n, each ordering's paired bootstrap
verdict: yes / no / within noise) and ``.png``. The data are synthetic (``data_prep.synthetic.fedicra``): they
exercise the pipeline and site heterogeneity, they say nothing about real OCTA or fundus accuracy.
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
from src.aggregators.fedavg import weighted_average  # noqa: E402
from src.config.fedicra import FedICRAConfig  # noqa: E402

METHODS = ("fedicra", "fedavg", "fedprox", "fedbn", "fedrep", "local", "centralised")
GLOBAL_METHODS = ("fedavg", "fedprox")
BASELINES = ("fedavg", "fedprox", "fedbn", "fedrep")
STRUCTURES = {"faz": ("faz",), "odoc": ("cup", "disc")}
#: default setting for ``--seeds 0 1 2``: estimated ~18 CPU-minutes on one unloaded core (from the measured CPU time
#: of a reduced run, docs/fedicra.md), inside the 30-minute budget on 2 cores; the run is one process, 1 thread
DEFAULTS = {"size": 32, "n_sites": 5, "n_train": 6, "n_test": 3, "rounds": 12, "iterations": 5, "batch": 4}
QUICK = {"size": 32, "n_sites": 2, "n_train": 4, "n_test": 2, "rounds": 2, "iterations": 2, "batch": 2}


def ensure_data(task: str, root: Path, settings: dict, seed: int = 0) -> tuple[Path, Path]:
    """Synthetic release in the h5 layout + converted datalists (made once per setting)."""
    from data_prep.fedicra import convert
    from data_prep.synthetic.fedicra import generate

    tag = f"{task}_s{settings['size']}_k{settings['n_sites']}_n{settings['n_train']}_{settings['n_test']}"
    data, lists = root / tag / ("FAZ_h5" if task == "faz" else "ODOC_h5"), root / tag / "datalists"
    if not all((lists / f"site-{k}.json").exists() for k in range(1, settings["n_sites"] + 1)):
        generate(root / tag, task, n_sites=settings["n_sites"], n_train=settings["n_train"],
                 n_test=settings["n_test"], size=settings["size"], layout="h5", seed=seed)
        convert(data, task, val_fraction=0.25, seed=seed, datalist_dir=lists)
    return data, lists


def _config(base: dict, algorithm: str, seed: int, **extra) -> FedICRAConfig:
    return FedICRAConfig(**base, algorithm=algorithm, seed=seed, **extra)


def _test_scores(learner, state: dict | None) -> list[dict]:
    if state is not None:
        learner.model.load_state_dict(state)
    return learner.image_scores("testing")


def run_method(method: str, sites: list[str], base: dict, seed: int, rounds: int, out: Path,
               tracker=None, meter: RoundBytes | None = None) -> dict[str, list]:
    """One method, one seed: ``{site: per-image test scores}`` of its validation-selected model(s).

    ``tracker`` (TensorBoard, ``<out>/tb``) gets every site's round metrics under ``<method>/seed<seed>/<site>``
    with the same metric names as the NVFlare job's dashboards. ``meter`` keeps each round's messages for the bytes
    on the wire (``local`` sends nothing): the task is the server's whole model, as the job's server holds every key
    and only the shared ones are averaged in.
    """
    from src.learners.fedicra import FedICRALearner

    work = out / "models" / f"{method}_seed{seed}"
    if method == "centralised":
        return run_centralised(sites, base, seed, rounds, work)
    from src.learners.client_api import result_message

    learners = {s: FedICRALearner(s, _config(base, method, seed), output_dir=work) for s in sites}
    global_state, best = None, (-np.inf, None)
    meter = meter if method != "local" else None
    server_model = {k: v.detach().clone() for k, v in next(iter(learners.values())).model.state_dict().items()}
    for r in range(1, rounds + 1):
        results = {s: lr.fit_round(global_state, r) for s, lr in learners.items()}
        if meter is not None:
            meter.task(method, r, server_model, rounds)
            for res in results.values():
                meter.result(method, r, result_message(res))
        if tracker is not None:
            for s, res in results.items():
                tracker.log(f"{method}/seed{seed}/{s}", res.metrics, r)
        if global_state is not None and method in GLOBAL_METHODS:
            mean_val = float(np.mean([res.received_metrics["val_dice"] for res in results.values()]))
            if mean_val > best[0]:
                best = (mean_val, global_state)
        shared = weighted_average([res.params for res in results.values()],
                                  [res.num_steps for res in results.values()])
        global_state = {k: torch.as_tensor(v) for k, v in shared.items()}
        server_model.update(global_state)
        mean_local = np.mean([res.metrics.get("val_dice_local", np.nan) for res in results.values()])
        print(f"  [{method} seed {seed}] round {r}/{rounds}: mean local val_dice {mean_local:.3f}", flush=True)
    scores = {}
    if method in GLOBAL_METHODS:
        mean_val = float(np.mean([lr.evaluate(global_state, "validation")["val_dice"] for lr in learners.values()]))
        if mean_val > best[0]:
            best = (mean_val, global_state)
        for s, lr in learners.items():
            lr.load_params(best[1])
            scores[s] = _test_scores(lr, None)
    else:  # each site's best local (personalised) model by its own validation Dice
        for s, lr in learners.items():
            path = lr.checkpoint_path("best")
            scores[s] = _test_scores(lr, torch.load(path, weights_only=True) if path.exists() else None)
    return scores


def run_centralised(sites, base, seed, rounds, work: Path) -> dict[str, list]:
    """One model on the pooled training data of every site with the dense masks, scored on each site's test set."""
    from src.learners.fedicra import FedICRALearner

    pooled = {"training": [], "validation": [], "testing": []}
    for s in sites:
        raw = json.loads((Path(base["datalist_dir"]) / f"{s}.json").read_text())
        for split in pooled:
            pooled[split] += raw.get(split, [])
    lists = work / "datalists"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "pooled.json").write_text(json.dumps(pooled))
    central = FedICRALearner("pooled", _config({**base, "datalist_dir": str(lists)}, "centralised", seed),
                             output_dir=work)
    for r in range(1, rounds + 1):
        central.fit_round(None, r)  # validation-selected best model saved by fit_round
    state = torch.load(central.checkpoint_path("best"), weights_only=True)
    scores = {}
    for s in sites:
        site = FedICRALearner(s, _config(base, "local", seed), output_dir=work / "eval")
        scores[s] = _test_scores(site, state)
    return scores


def claims(task: str) -> list[Claim]:
    """The orderings checked per structure: the paper's (FedICRA beats the personalised-FL baselines and FedAvg /
    FedProx, and approaches centralised full-mask training: the digest, section 7) and one sanity check (a site
    alone on its sparse labels is the lower bound)."""
    out = []
    for st in STRUCTURES[task]:
        dice, hd = f"dice_{st}", f"hd95_{st}"
        out += [Claim(task, "fedicra", base, dice, source="paper",
                      note="FedICRA beats FedAvg, FedProx and the personalised baselines (paper, section 7)"
                      if base == "fedavg" and st == STRUCTURES[task][0] else "") for base in BASELINES]
        out += [Claim(task, "fedicra", "fedavg", hd, higher_is_better=False, source="paper"),
                Claim(task, "fedicra", "local", dice, source="sanity",
                      note="one site on its own sparse labels is the lower bound" if st == STRUCTURES[task][0]
                      else ""),
                Claim(task, "centralised", "fedicra", dice, source="paper",
                      note="dense masks, pooled: the upper bound FedICRA approaches" if st == STRUCTURES[task][0]
                      else "")]
    return out


def volume_rows(task: str, method: str, seed: int, scores: dict[str, list]) -> list[dict]:
    """Rows of :data:`benchmarks.stats.VOLUME_COLUMNS`: one per (site, test image, metric)."""
    return [{"algorithm": "fedicra", "setting": task, "site": site, "method": method, "seed": seed, "metric": k,
             "case": str(im["case_id"]), "value": float(v)}
            for site, images in scores.items() for im in images for k, v in im.items() if k != "case_id"]


def run_label(quick: bool, settings: dict, seeds: list[int]) -> str:
    if quick:
        return "quick smoke run on synthetic data"
    if settings == DEFAULTS and seeds == [0, 1, 2]:
        return "default setting on synthetic data"
    return "reduced run on synthetic data (smaller than the default setting)"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=tuple(STRUCTURES), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="tiny setting for tests (2 sites, 2 rounds)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"default {value}")
    p.add_argument("--out", default="results/fedicra_compare")
    p.add_argument("--data-dir", default="data/fedicra_compare")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    settings = {k: getattr(args, k) if getattr(args, k) is not None else (QUICK if args.quick else DEFAULTS)[k]
                for k in DEFAULTS}
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, lists = ensure_data(args.task, Path(args.data_dir), settings)
    sites = [f"site-{k}" for k in range(1, settings["n_sites"] + 1)]
    base = {"task": args.task, "data_root": str(data.resolve()), "datalist_dir": str(lists.resolve()),
            "federation_sites": tuple(sites), "batch_size": settings["batch"],
            "iterations_per_round": settings["iterations"], "rep_iterations": max(1, settings["iterations"] * 3 // 10),
            # the reference's schedule, scaled to the run: warm-up = 50 of 30,000 iterations -> 1/600 of the run,
            # but at least one round so that mixing starts in round 2; poly horizon = the run's iterations
            "mixing_warmup": settings["iterations"], "total_iterations": settings["rounds"] * settings["iterations"],
            "mixing_batches": 2, "mixing_max_first_epochs": 10, "num_threads": args.threads, "tracking": ()}
    from benchmarks.iopfl_compare import Tracker

    tracker, meter = Tracker(out), RoundBytes()
    rows, timing = [], {}
    start = time.perf_counter()
    for seed in args.seeds:
        for method in args.methods:
            t0 = time.perf_counter()
            scores = run_method(method, sites, base, seed, settings["rounds"], out, tracker, meter)
            timing[f"{method}/seed{seed}"] = round(time.perf_counter() - t0, 1)
            rows += volume_rows(args.task, method, seed, scores)
            print(f"[{method} seed {seed}] {timing[f'{method}/seed{seed}']} s", flush=True)
    seconds = time.perf_counter() - start
    train_counts = {s: len(json.loads((lists / f"{s}.json").read_text())["training"]) for s in sites}
    test_counts = {s: len(json.loads((lists / f"{s}.json").read_text())["testing"]) for s in sites}
    forms = {s: FedICRAConfig(**base).label_form(s) for s in sites}
    from benchmarks._report import machine

    label = run_label(args.quick, settings, args.seeds)
    note = (f"{label}: {settings['n_sites']} sites, {settings['size']}x{settings['size']} images, train/test images "
            f"per site {train_counts} / {test_counts}, sparse forms {forms} (paper's table), {settings['rounds']} "
            f"rounds x {settings['iterations']} iterations, batch {settings['batch']}, seeds {args.seeds}. "
            f"Wall time {seconds:.0f} s on a shared, loaded 2-core CPU ({args.threads} torch thread).")
    run = {"num_rounds": settings["rounds"], "seeds": args.seeds, "wall_seconds": round(seconds, 1),
           "task": args.task, "methods": args.methods, **settings, "sites": sites, "label_forms": forms,
           "label_forms_source": "the paper's dataset table", "train_images": train_counts,
           "test_images": test_counts, "threads": args.threads, "timing": timing, "machine": machine(),
           "command": "python -m benchmarks.fedicra_compare " + " ".join(argv if argv is not None else sys.argv[1:])}
    meta = {"algorithm": "fedicra", "title": f"FedICRA, {args.task.upper()}: weakly-supervised personalised FL "
            "(arXiv 2304.05635)", "synthetic": True, "run_label": label, "note": note,
            "primary_metric": f"dice_{STRUCTURES[args.task][-1]}", "bytes_per_round": meter.measure(),
            "settings": run, "metrics": {f"{k}_{st}": f"{'Dice' if k == 'dice' else 'HD95 (pixels)'} of the {st} per "
                                         "test image" for st in STRUCTURES[args.task] for k in ("dice", "hd95")}}
    name = f"fedicra_compare_{args.task}"
    paths = write_comparison(out, name, rows, meta, claims(args.task))
    from benchmarks.report import write_comparison_report

    md = write_comparison_report(paths["scores"], out).read_text()
    print(md)
    return {"meta": meta, "rows": rows, "paths": paths, "markdown": md}


if __name__ == "__main__":
    main()
