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

Outputs in ``--out``: ``fedicra_compare_<task>.csv`` (``algorithm,site,method,seed,metric,value``: the mean over a
site's test images), ``.json`` (settings, per-image scores, summaries, timing), ``.md`` (mean +/- std and n over
seeds) and ``.png``. The data are synthetic (``data_prep.synthetic.fedicra``): they exercise the pipeline and
site heterogeneity, they say nothing about real OCTA or fundus accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

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
               tracker=None) -> dict[str, list]:
    """One method, one seed: ``{site: per-image test scores}`` of its validation-selected model(s).

    ``tracker`` (TensorBoard, ``<out>/tb``) gets every site's round metrics under ``<method>/seed<seed>/<site>``
    with the same metric names as the NVFlare job's dashboards.
    """
    from src.learners.fedicra import FedICRALearner

    work = out / "models" / f"{method}_seed{seed}"
    if method == "centralised":
        return run_centralised(sites, base, seed, rounds, work)
    learners = {s: FedICRALearner(s, _config(base, method, seed), output_dir=work) for s in sites}
    global_state, best = None, (-np.inf, None)
    for r in range(1, rounds + 1):
        results = {s: lr.fit_round(global_state, r) for s, lr in learners.items()}
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


def summarise(rows: list[dict]) -> dict:
    """mean, std (ddof 1, 0 for n = 1) and n over seeds per (site, method, metric)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["site"], r["method"], r["metric"]), []).append(r["value"])
    out = {}
    for (site, method, metric), values in groups.items():
        v = np.asarray(values, dtype=float)
        out.setdefault(method, {}).setdefault(site, {})[metric] = {
            "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}
    return out


def ordering_verdict(rows: list[dict], task: str) -> str:
    """Does FedICRA beat FedAvg and every pFL baseline (mean Dice over sites and structures, paired by seed)?"""
    per_seed: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        if r["metric"].startswith("dice_"):
            per_seed.setdefault(r["method"], {}).setdefault(r["seed"], []).append(r["value"])
    means = {m: {s: float(np.mean(v)) for s, v in seeds.items()} for m, seeds in per_seed.items()}
    verdicts = []
    for base in BASELINES:
        diffs = np.array([means["fedicra"][s] - means[base][s] for s in means["fedicra"] if s in means[base]])
        mean, sd = float(diffs.mean()), float(diffs.std(ddof=1)) if len(diffs) > 1 else float("inf")
        if len(diffs) > 1 and mean - 2 * sd / np.sqrt(len(diffs)) > 0 and (diffs > 0).all():
            verdicts.append((base, "held", mean))
        elif len(diffs) > 1 and mean + 2 * sd / np.sqrt(len(diffs)) < 0 and (diffs < 0).all():
            verdicts.append((base, "did not hold", mean))
        else:
            verdicts.append((base, "within noise", mean))
    parts = [f"vs {b}: {v} (mean Dice difference {d:+.3f})" for b, v, d in verdicts]
    gap = np.mean(list(means["centralised"].values())) - np.mean(list(means["fedicra"].values()))
    return ("Paper's ordering (FedICRA > FedAvg and the pFL baselines, mean Dice over sites; 'held' = every seed "
            "agrees and the mean difference exceeds 2 standard errors): " + "; ".join(parts)
            + f". Centralised full-mask upper bound minus FedICRA: {gap:+.3f} Dice.")


def markdown(summary: dict, sites: list[str], task: str, meta: dict, verdict: str) -> str:
    metrics = [f"{k}_{s}" for s in STRUCTURES[task] for k in ("dice", "hd95")]
    lines = [f"# FedICRA comparison, {task.upper()} (synthetic data)", "", meta["note"], "", verdict, ""]
    for metric in metrics:
        lines += [f"## {metric} (test; mean +/- std over seeds, n seeds)", "",
                  "| method | " + " | ".join(sites) + " | mean over sites |", "|---" * (len(sites) + 2) + "|"]
        for method in METHODS:
            if method not in summary:
                continue
            cells = [summary[method][s][metric] for s in sites]
            text = [f"{c['mean']:.3f} +/- {c['std']:.3f} ({c['n']})" for c in cells]
            lines.append(f"| {method} | " + " | ".join(text) + f" | {np.mean([c['mean'] for c in cells]):.3f} |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, sites: list[str], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    structures = STRUCTURES[task]
    fig, axes = plt.subplots(1, len(structures), figsize=(7 * len(structures), 4.5), squeeze=False)
    methods = [m for m in METHODS if m in summary]
    width = 0.8 / len(methods)
    for ax, structure in zip(axes[0], structures):
        for i, method in enumerate(methods):
            cells = [summary[method][s][f"dice_{structure}"] for s in sites]
            ax.bar(np.arange(len(sites)) + i * width, [c["mean"] for c in cells], width,
                   yerr=[c["std"] for c in cells], label=method, capsize=2)
        ax.set_xticks(np.arange(len(sites)) + 0.4 - width / 2, sites)
        ax.set_ylabel(f"Dice {structure} (test)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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

    tracker = Tracker(out)
    rows, per_image, timing = [], {}, {}
    start = time.perf_counter()
    for seed in args.seeds:
        for method in args.methods:
            t0 = time.perf_counter()
            scores = run_method(method, sites, base, seed, settings["rounds"], out, tracker)
            timing[f"{method}/seed{seed}"] = round(time.perf_counter() - t0, 1)
            per_image.setdefault(method, {})[str(seed)] = scores
            for site, images in scores.items():
                for metric in [k for k in images[0] if k != "case_id"]:
                    rows.append({"algorithm": "fedicra", "site": site, "method": method, "seed": seed,
                                 "metric": metric, "value": float(np.mean([im[metric] for im in images]))})
            print(f"[{method} seed {seed}] {timing[f'{method}/seed{seed}']} s", flush=True)
    seconds = time.perf_counter() - start
    summary = summarise(rows)
    verdict = ordering_verdict(rows, args.task) if {"fedicra", "centralised", *BASELINES} <= set(args.methods) \
        else "Paper's ordering not checked (not every method ran)."
    train_counts = {s: len(json.loads((lists / f"{s}.json").read_text())["training"]) for s in sites}
    test_counts = {s: len(json.loads((lists / f"{s}.json").read_text())["testing"]) for s in sites}
    forms = {s: FedICRAConfig(**base).label_form(s) for s in sites}
    note = (f"Setting: {settings['n_sites']} sites, {settings['size']}x{settings['size']} images, train/test images "
            f"per site {train_counts} / {test_counts}, sparse forms {forms} (paper's table), {settings['rounds']} "
            f"rounds x {settings['iterations']} iterations, batch {settings['batch']}, seeds {args.seeds}. "
            f"Wall time {seconds:.0f} s on a shared, loaded 2-core CPU ({args.threads} torch thread).")
    from benchmarks._report import machine

    meta = {"machine": machine(), "settings": settings, "seeds": args.seeds, "sites": sites, "label_forms": forms,
            "train_images": train_counts, "test_images": test_counts, "seconds": round(seconds, 1),
            "timing": timing, "note": note}
    stem = out / f"fedicra_compare_{args.task}"
    with open(f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["algorithm", "site", "method", "seed", "metric", "value"])
        writer.writeheader()
        writer.writerows(rows)
    Path(f"{stem}.json").write_text(json.dumps({"meta": meta, "summary": summary, "verdict": verdict,
                                                "per_image": per_image}, indent=1))
    Path(f"{stem}.md").write_text(markdown(summary, sites, args.task, meta, verdict))
    plot(summary, sites, args.task, Path(f"{stem}.png"))
    print(Path(f"{stem}.md").read_text())
    return {"meta": meta, "summary": summary, "verdict": verdict, "rows": rows}


if __name__ == "__main__":
    main()
