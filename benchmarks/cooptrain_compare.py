"""Standard vs cooperative vs cooperative + latent DA, centralised and federated, low-data: one command.

    python -m benchmarks.cooptrain_compare --seeds 0 1 2              # synthetic ACDC + M&Ms made in --out
    python -m benchmarks.cooptrain_compare --quick --seeds 0          # seconds-scale smoke run (the tests)

Methods (same networks, same initial weights per seed, same data and number of passes over it):

- ``standard``: the segmentation path alone (encoder, code filter, segmentation decoder), cross-entropy on the noisy
  input, predicting without the STN;
- ``cooperative``: the dual network's standard step (segmentation + image reconstruction + both STN terms), STN
  refinement at inference (the reference's "standard training" baseline);
- ``cooperative+latent-DA``: the cooperative step with latent-space hard examples (the paper's method).

Settings: ``centralised`` (one learner on the pooled training data of ``acdc``, ``vendor-A``, ``vendor-B``) and
``federated`` (those three sites, FedAvg of all five parts, the job's weighted average by training samples); in both,
``vendor-C`` never trains (the unseen vendor). Each site keeps ``--train-subjects`` training subjects (low data).
Rounds run in this process with the job's learner (:class:`src.learners.cooptrain.CoopTrainLearner`,
``train_round``) without the simulator's overhead; the model after the last round is evaluated (no model selection).

Evaluation, per subject volume (3-D stack of one ED or ES frame), Dice per structure (LV, MYO, RV), mean Dice and
HD95 (mm): ``acdc`` clean test; ``acdc-C/<kind>`` the ACDC test set under each ACDC-C corruption
(:func:`src.transforms.corruptions.acdc_c`: bias field, spike, ghosting, motion at the reference generator's
magnitudes), three seeded realisations each (all pooled per kind); ``vendor-A``/``vendor-B`` clean test; ``vendor-C``
(held out) test. Outputs in ``--out``: ``cooptrain_compare.csv`` (one row per set, method, seed, metric),
``.json`` (mean, std, n over seeds), ``.md`` (tables + whether the paper's ordering held) and
``cooptrain_compare.png`` (Dice vs corruption, mean +/- std).

The data are the bundle's synthetic phantoms (``data_prep.synthetic.cardiac``): they exercise the pipeline and
show whether orderings appear; they do not reproduce the paper's numbers (idealised anatomy, tiny images).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SETTINGS = ("centralised", "federated")
METHODS = {
    "standard": {"cooperative": False, "latent_da": False},
    "cooperative": {"cooperative": True, "latent_da": False},
    "cooperative+latent-DA": {"cooperative": True, "latent_da": True},
}
TRAIN_SITES = ("acdc", "vendor-A", "vendor-B")
HELD_OUT = "vendor-C"
METRICS = ("dice", "dice_lv", "dice_myo", "dice_rv", "hd95")
REALISATIONS = (0, 1, 2)
CSV_COLUMNS = ("algorithm", "site", "method", "seed", "metric", "value")


@dataclass(frozen=True)
class Scale:
    """Size of one comparison (data, networks, training)."""

    acdc_subjects: int = 16
    mnms_per_vendor: int = 8
    slices: int = 4
    train_subjects: int = 3
    rounds: int = 3
    local_epochs: int = 1
    crop_size: int = 64
    pad_size: int = 80
    base_channels: int = 8
    code_channels: int = 32
    batch_size: int = 2
    slices_per_volume: int = 2
    lr: float = 1e-3


DEFAULT = Scale()
QUICK = Scale(acdc_subjects=8, mnms_per_vendor=4, slices=2, train_subjects=2, rounds=1, local_epochs=1,
              crop_size=32, pad_size=48, base_channels=4, code_channels=8, batch_size=2, slices_per_volume=1)


def prepare_data(out: Path, scale: Scale, seed: int = 0) -> tuple[Path, Path]:
    """Synthetic raw ACDC + M&Ms (vendors A-C), converted and combined; returns (data_root, datalist_dir)."""
    from data_prep import acdc, cooptrain, mnms
    from data_prep.synthetic.cardiac import generate_acdc, generate_mnms

    data, lists = out / "data", out / "datalists"
    target = lists / "cooptrain"
    if all((target / f"{s}.json").is_file() for s in (*TRAIN_SITES, HELD_OUT)):
        return data, target
    generate_acdc(out / "raw" / "acdc", scale.acdc_subjects, scale.slices, 4, seed)
    generate_mnms(out / "raw" / "mnms", scale.mnms_per_vendor, "ABC", 0, scale.slices, 4, seed)
    acdc.convert(out / "raw" / "acdc", data / "acdc", lists, seed=seed, fewshot_subjects=scale.train_subjects)
    mnms.convert(out / "raw" / "mnms", data / "mnms", lists, seed=seed)
    cooptrain.combine(data, data / "acdc", lists / "acdc_fewshot" / "site-1.json", data / "mnms", lists / "mnms",
                      target, train_subjects=scale.train_subjects, seed=seed)
    return data, target


def evaluation_sets(data_root: Path, datalist_dir: Path, scale: Scale) -> dict[str, list[tuple]]:
    """{set name: [(volume (1, H, W, Z), label (H, W, Z), spacing)]}, corrupted volumes made once for all models."""
    from src.data.datalist import load_site_datalist
    from src.learners.cooptrain import _rescale_slices, preprocess_volume
    from src.transforms.corruptions import ACDC_C_KINDS, acdc_c

    def load(site: str) -> list[tuple]:
        import nibabel as nib

        out = []
        for item in load_site_datalist(datalist_dir / f"{site}.json", data_root)["testing"]:
            img = nib.load(item["image"])
            label = np.asarray(nib.load(item["label"]).dataobj)
            volume, lab = preprocess_volume(np.asarray(img.dataobj), label, scale.pad_size, scale.crop_size)
            out.append((volume, lab.numpy(), tuple(float(z) for z in img.header.get_zooms()[:3])))
        return out

    acdc = load("acdc")
    sets = {"acdc": acdc}
    for kind in ACDC_C_KINDS:
        sets[f"acdc-C/{kind}"] = [(_rescale_slices(torch.as_tensor(acdc_c(v, kind, seed=r))), lab, sp)
                                  for r in REALISATIONS for v, lab, sp in acdc]
    for site in (*TRAIN_SITES[1:], HELD_OUT):
        sets[site] = load(site)
    return sets


def evaluate(model, sets: dict[str, list[tuple]], refine: bool) -> dict[str, dict[str, float]]:
    """Mean per-volume metrics of ``model`` on every set."""
    from src.learners.cooptrain import predict_volume
    from src.metrics.cardiac import volume_scores

    out = {}
    for name, volumes in sets.items():
        rows = [volume_scores(predict_volume(model, v, 16, refine), lab, sp) for v, lab, sp in volumes]
        out[name] = {m: float(np.nanmean([r[m] for r in rows])) for m in METRICS}
    return out


def _config(scale: Scale, method: str, seed: int, datalist_dir: Path, data_root: Path, **extra):
    from src.config.cooptrain import CoopTrainConfig

    return CoopTrainConfig(
        data_root=str(data_root), datalist_dir=str(datalist_dir), seed=seed, lr=scale.lr, batch_size=scale.batch_size,
        slices_per_volume=scale.slices_per_volume, local_epochs=scale.local_epochs, crop_size=scale.crop_size,
        pad_size=scale.pad_size, base_channels=scale.base_channels, code_channels=scale.code_channels,
        tracking=(), num_threads=torch.get_num_threads(), **METHODS[method], **extra,
    )


def initial_state(scale: Scale, seed: int) -> dict[str, torch.Tensor]:
    from src.models.cooperative_net import CooperativeNet

    torch.manual_seed(seed)
    return CooperativeNet(base_channels=scale.base_channels, code_channels=scale.code_channels).state_dict()


def run_federated(sites, config_of, rounds: int, init: dict, out: Path) -> tuple[dict, dict]:
    """FedAvg over ``sites`` from ``init``: each round every site's ``train_round``, then the job's weighted average.

    Returns (global state after the last round, {site: learner}).
    """
    from src.aggregators.fedavg import weighted_average
    from src.learners.base import TRAIN_SAMPLES_KEY
    from src.learners.cooptrain import CoopTrainLearner

    learners = {s: CoopTrainLearner(s, config_of(s), output_dir=out) for s in sites}
    state = {k: v.clone() for k, v in init.items()}
    for r in range(1, rounds + 1):
        results = [lr.train_round(state, r) for lr in learners.values()]
        shared = weighted_average([res.params for res in results], [res.meta[TRAIN_SAMPLES_KEY] for res in results])
        state = {**state, **{k: torch.as_tensor(v) for k, v in shared.items()}}
    return state, learners


def run_loso(sites, held_out: str, config_of, rounds: int, init: dict, out: Path) -> dict[str, dict]:
    """Leave one site out: federated training on ``sites`` minus ``held_out``; scores on ``held_out``'s test only."""
    from src.learners.cooptrain import CoopTrainLearner

    if held_out not in sites:
        raise ValueError(f"held_out must be one of {list(sites)}, got {held_out!r}")
    state, _ = run_federated([s for s in sites if s != held_out], config_of, rounds, init, out)
    evaluator = CoopTrainLearner(held_out, config_of(held_out), output_dir=out / "held_out")
    return {held_out: evaluator.evaluate(state, "testing")}


def run_centralised(config, rounds: int, init: dict, out: Path) -> dict:
    """One learner on the pooled data, ``rounds`` x ``local_epochs`` epochs (as many passes as federated)."""
    from src.learners.cooptrain import CoopTrainLearner

    learner = CoopTrainLearner("central", config, output_dir=out)
    learner.load_params(init)
    for r in range(1, rounds + 1):
        learner.train_round(None, r)
    return learner.model.state_dict()


def run(out: Path, seeds, scale: Scale, settings=SETTINGS, methods=tuple(METHODS)) -> list[dict]:
    """Every (setting, method, seed); returns CSV rows."""
    from data_prep.cooptrain import pool
    from src.models.cooperative_net import CooperativeNet

    data_root, datalist_dir = prepare_data(out, scale)
    pooled = pool(datalist_dir, list(TRAIN_SITES), datalist_dir / "pooled" / "central.json").parent
    sets = evaluation_sets(data_root, datalist_dir, scale)
    rows = []
    for seed in seeds:
        init = initial_state(scale, seed)
        for setting in settings:
            for method in methods:
                start = time.perf_counter()
                work = out / "runs" / f"{setting}_{method}_seed{seed}"
                if setting == "centralised":
                    state = run_centralised(_config(scale, method, seed, pooled, data_root), scale.rounds, init, work)
                else:
                    config = _config(scale, method, seed, datalist_dir, data_root)
                    state, _ = run_federated(TRAIN_SITES, lambda _site, c=config: c, scale.rounds, init, work)
                model = CooperativeNet(base_channels=scale.base_channels, code_channels=scale.code_channels)
                model.load_state_dict(state)
                scores = evaluate(model, sets, refine=METHODS[method]["cooperative"])
                name = f"{setting}/{method}"
                for site, metrics in scores.items():
                    rows += [{"algorithm": "cooptrain", "site": site, "method": name, "seed": seed, "metric": m,
                              "value": v} for m, v in metrics.items()]
                _write_csv(out / "cooptrain_compare.partial.csv", rows)  # what is done so far survives an abort
                print(f"[{name} seed {seed}] {time.perf_counter() - start:.0f} s: clean Dice "
                      f"{scores['acdc']['dice']:.3f}, held-out {scores[HELD_OUT]['dice']:.3f}", flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    """{method: {set: {metric: {"mean", "std", "n"}}}} over seeds (std with ddof=1; 0 when n = 1)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["method"], {}).setdefault(r["site"], {}).setdefault(r["metric"], []).append(r["value"])
    out: dict = {}
    for method, by_set in groups.items():
        for site, by_metric in by_set.items():
            for metric, values in by_metric.items():
                v = np.array(values, float)
                out.setdefault(method, {}).setdefault(site, {})[metric] = {
                    "mean": float(np.nanmean(v)), "std": float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0,
                    "n": int(np.isfinite(v).sum())}
    return out


def _group_dice(rows: list[dict], method: str, group: str) -> dict[int, float]:
    """Per seed: mean Dice over the sets of ``group`` (clean / corrupted / held-out)."""
    sel = {"clean": lambda s: s == "acdc", "corrupted": lambda s: s.startswith("acdc-C/"),
           "held-out": lambda s: s == HELD_OUT}[group]
    per_seed: dict[int, list[float]] = {}
    for r in rows:
        if r["method"] == method and r["metric"] == "dice" and sel(r["site"]):
            per_seed.setdefault(r["seed"], []).append(r["value"])
    return {s: float(np.mean(v)) for s, v in per_seed.items()}


def verdicts(rows: list[dict]) -> list[str]:
    """Whether latent DA beat the cooperative and standard baselines (paired by seed), per setting and group."""
    lines = []
    for setting in SETTINGS:
        for group in ("clean", "corrupted", "held-out"):
            ours = _group_dice(rows, f"{setting}/cooperative+latent-DA", group)
            for base in ("cooperative", "standard"):
                other = _group_dice(rows, f"{setting}/{base}", group)
                seeds = sorted(set(ours) & set(other))
                if not seeds:
                    continue
                diff = np.array([ours[s] - other[s] for s in seeds])
                se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
                mean = float(diff.mean())
                verdict = "within noise" if abs(mean) <= se else ("held" if mean > 0 else "did not hold")
                lines.append(f"{setting}, {group}: latent DA - {base} = {mean:+.3f} Dice (paired SE {se:.3f}, "
                             f"n={len(diff)}): {verdict}")
    return lines


def markdown(summary: dict, lines: list[str], meta: dict) -> str:
    sets = list(next(iter(summary.values())).keys())
    out = ["# Cooperative training: robustness comparison", "",
           f"Settings: {json.dumps(meta)}", "",
           "Mean Dice (LV, MYO, RV averaged) per subject volume, mean +/- std over seeds (n seeds):", "",
           "| method | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for method, by_set in summary.items():
        cells = [f"{by_set[s]['dice']['mean']:.3f} +/- {by_set[s]['dice']['std']:.3f} (n={by_set[s]['dice']['n']})"
                 for s in sets]
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    out += ["", "Per structure on the clean ACDC test and the held-out vendor (Dice LV / MYO / RV, HD95 mm):", "",
            "| method | acdc LV/MYO/RV | acdc HD95 | vendor-C LV/MYO/RV | vendor-C HD95 |", "|---|---|---|---|---|"]
    for method, by_set in summary.items():
        cell = [" / ".join(f"{by_set[s][f'dice_{k}']['mean']:.3f}" for k in ("lv", "myo", "rv")) for s in
                ("acdc", HELD_OUT)]
        out.append(f"| {method} | {cell[0]} | {by_set['acdc']['hd95']['mean']:.1f} | {cell[1]} | "
                   f"{by_set[HELD_OUT]['hd95']['mean']:.1f} |")
    out += ["", "Paper's claim (latent DA improves robustness to corruptions and unseen vendors, with few data):", ""]
    out += [f"- {line}" for line in lines]
    return "\n".join(out) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = ["acdc", *[s for s in next(iter(summary.values())) if s.startswith("acdc-C/")], HELD_OUT]
    labels = ["clean", *[s.split("/")[1] for s in sets[1:-1]], "unseen vendor"]
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(11, 4), sharey=True)
    for ax, setting in zip(np.atleast_1d(axes), SETTINGS):
        for method, by_set in summary.items():
            if not method.startswith(setting + "/"):
                continue
            mean = [by_set[s]["dice"]["mean"] for s in sets]
            std = [by_set[s]["dice"]["std"] for s in sets]
            ax.errorbar(range(len(sets)), mean, yerr=std, marker="o", capsize=3, label=method.split("/")[1])
        ax.set_xticks(range(len(sets)), labels, rotation=30)
        ax.set_title(setting)
        ax.set_ylabel("mean Dice (LV, MYO, RV)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def write_outputs(out: Path, rows: list[dict], meta: dict) -> dict:
    _write_csv(out / "cooptrain_compare.csv", rows)
    summary = summarise(rows)
    lines = verdicts(rows)
    (out / "cooptrain_compare.json").write_text(json.dumps({"meta": meta, "summary": summary, "claim": lines},
                                                           indent=2))
    (out / "cooptrain_compare.md").write_text(markdown(summary, lines, meta))
    plot(summary, out / "cooptrain_compare.png")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cooptrain_compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cooptrain_compare"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="tiny data and networks, one round (the tests)")
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--rounds", type=int, default=None, help="override the scale's rounds")
    p.add_argument("--train-subjects", type=int, default=None, help="override the training subjects per site")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny networks)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    scale = QUICK if args.quick else DEFAULT
    if args.rounds is not None:
        scale = replace(scale, rounds=args.rounds)
    if args.train_subjects is not None:
        scale = replace(scale, train_subjects=args.train_subjects)
    out = Path(args.out)
    start = time.perf_counter()
    rows = run(out, args.seeds, scale, tuple(args.settings))
    meta = {"scale": asdict(scale), "seeds": args.seeds, "settings": args.settings, "threads": args.threads,
            "wall_seconds": round(time.perf_counter() - start, 1)}
    write_outputs(out, rows, meta)
    print((out / "cooptrain_compare.md").read_text())
    print(f"wrote {out}/cooptrain_compare.{{csv,json,md,png}} in {meta['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
