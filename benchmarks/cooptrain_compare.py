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
(held out) test. Outputs in ``--out``, the shape of :mod:`benchmarks.stats` read by ``python -m benchmarks.report``:
``cooptrain_compare.csv`` (one row per setting = centralised / federated, test set (the ``site`` column), method,
seed, metric: the mean over the set's ``n`` subject volumes), ``_volumes.csv`` (every subject volume's scores; on
``acdc-C/<kind>`` the mean over the three corruption realisations of that volume; ``acdc-C/mean`` the mean over
the kinds, so that the subject volume stays the paired unit of the corruption claims), ``_meta.json`` (settings,
the expected orderings: :func:`claims`), ``.md`` (mean +/- std and n, each ordering's paired bootstrap verdict:
yes / no / within noise) and ``.png``. An HD95 that is undefined (a
structure predicted but absent, or the reverse) is left out of the rows: the cell's n says how many volumes had one.

The data are the bundle's synthetic phantoms (``data_prep.synthetic.cardiac``): they exercise the pipeline and
show whether orderings appear; they do not reproduce the paper's numbers (idealised anatomy, tiny images).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._wire import RoundBytes  # noqa: E402
from benchmarks.stats import Claim, write_comparison  # noqa: E402

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
NAME = "cooptrain_compare"
#: per subject volume, the mean over every ACDC-C kind (and realisation): the paired unit of the corruption claims,
#: since the four corrupted sets are the same test volumes (pairing them per kind would count each subject 4 times)
CORRUPTED_MEAN = "acdc-C/mean"


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
    """{set name: [(volume (1, H, W, Z), label (H, W, Z), spacing, case)]}, corrupted volumes made once for all
    models; ``case`` = ``<subject>_<phase>`` (the same for the realisations of one corrupted volume)."""
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
            case = f"{item.get('subject', Path(item['image']).name)}_{item.get('phase', '')}".rstrip("_")
            out.append((volume, lab.numpy(), tuple(float(z) for z in img.header.get_zooms()[:3]), case))
        return out

    acdc = load("acdc")
    sets = {"acdc": acdc}
    for kind in ACDC_C_KINDS:
        sets[f"acdc-C/{kind}"] = [(_rescale_slices(torch.as_tensor(acdc_c(v, kind, seed=r))), lab, sp, case)
                                  for r in REALISATIONS for v, lab, sp, case in acdc]
    for site in (*TRAIN_SITES[1:], HELD_OUT):
        sets[site] = load(site)
    return sets


def evaluate_volumes(model, sets: dict[str, list[tuple]], refine: bool) -> dict[str, dict[str, dict[str, float]]]:
    """{set: {case: {metric: value}}} of ``model``: the realisations of one corrupted volume averaged (NaN-aware;
    NaN where no realisation has the metric defined)."""
    from src.learners.cooptrain import predict_volume
    from src.metrics.cardiac import volume_scores

    out = {}
    for name, volumes in sets.items():
        per_case: dict[str, list[dict]] = {}
        for v, lab, sp, case in volumes:
            per_case.setdefault(case, []).append(volume_scores(predict_volume(model, v, 16, refine), lab, sp))
        out[name] = {case: {m: _nanmean([r[m] for r in rows]) for m in METRICS} for case, rows in per_case.items()}
    return out


def _nanmean(values) -> float:
    v = np.asarray(values, dtype=float)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")


def evaluate(model, sets: dict[str, list[tuple]], refine: bool) -> dict[str, dict[str, float]]:
    """Mean per-volume metrics of ``model`` on every set (undefined HD95 left out)."""
    return {name: {m: _nanmean([c[m] for c in cases.values()]) for m in METRICS}
            for name, cases in evaluate_volumes(model, sets, refine).items()}


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


def run_federated(sites, config_of, rounds: int, init: dict, out: Path, meter: RoundBytes | None = None,
                  method: str = "") -> tuple[dict, dict]:
    """FedAvg over ``sites`` from ``init``: each round every site's ``train_round``, then the job's weighted average.
    ``meter`` keeps each round's messages under ``method`` for the bytes on the wire (the job's sites also send
    their validation scores, a few dozen bytes more per result).

    Returns (global state after the last round, {site: learner}).
    """
    from src.aggregators.fedavg import weighted_average
    from src.learners.base import TRAIN_SAMPLES_KEY
    from src.learners.client_api import result_message
    from src.learners.cooptrain import CoopTrainLearner

    learners = {s: CoopTrainLearner(s, config_of(s), output_dir=out) for s in sites}
    state = {k: v.clone() for k, v in init.items()}
    for r in range(1, rounds + 1):
        results = [lr.train_round(state, r) for lr in learners.values()]
        if meter is not None:
            meter.task(method, r, state, rounds)
            for res in results:
                meter.result(method, r, result_message(res))
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


def run(out: Path, seeds, scale: Scale, settings=SETTINGS, methods=tuple(METHODS), meta: dict | None = None,
        meter: RoundBytes | None = None) -> list[dict]:
    """Every (setting, method, seed); returns the per-volume rows (:data:`benchmarks.stats.VOLUME_COLUMNS`).
    ``meter`` keeps the federated runs' messages (bytes on the wire per method).

    With ``meta``, the comparison files are rewritten after every run (``settings.complete`` false until the end),
    so that an interrupted comparison still leaves what it finished.
    """
    from data_prep.cooptrain import pool
    from src.models.cooperative_net import CooperativeNet

    data_root, datalist_dir = prepare_data(out, scale)
    pooled = pool(datalist_dir, list(TRAIN_SITES), datalist_dir / "pooled" / "central.json").parent
    sets = evaluation_sets(data_root, datalist_dir, scale)
    rows, start = [], time.perf_counter()
    for seed in seeds:
        init = initial_state(scale, seed)
        for setting in settings:
            for method in methods:
                t0 = time.perf_counter()
                work = out / "runs" / f"{setting}_{method}_seed{seed}"
                if setting == "centralised":
                    state = run_centralised(_config(scale, method, seed, pooled, data_root), scale.rounds, init, work)
                else:
                    config = _config(scale, method, seed, datalist_dir, data_root)
                    state, _ = run_federated(TRAIN_SITES, lambda _site, c=config: c, scale.rounds, init, work,
                                             meter, method)
                model = CooperativeNet(base_channels=scale.base_channels, code_channels=scale.code_channels)
                model.load_state_dict(state)
                scores = evaluate_volumes(model, sets, refine=METHODS[method]["cooperative"])
                rows += volume_rows(setting, method, seed, scores)
                if meta is not None:
                    write_outputs(out, rows, meta, time.perf_counter() - start, complete=False, report=False)
                means = evaluate_means(scores)
                print(f"[{setting}/{method} seed {seed}] {time.perf_counter() - t0:.0f} s: clean Dice "
                      f"{means['acdc']:.3f}, held-out {means[HELD_OUT]:.3f}", flush=True)
    return rows


def evaluate_means(scores: dict) -> dict[str, float]:
    """Mean Dice per set of :func:`evaluate_volumes`' output (progress lines)."""
    return {name: _nanmean([c["dice"] for c in cases.values()]) for name, cases in scores.items()}


def volume_rows(setting: str, method: str, seed: int, scores: dict) -> list[dict]:
    """Rows of :data:`benchmarks.stats.VOLUME_COLUMNS` (test set in ``site``); undefined (NaN) HD95 left out."""
    return [{"algorithm": "cooptrain", "setting": setting, "site": name, "method": method, "seed": seed,
             "metric": metric, "case": case, "value": value}
            for name, cases in scores.items() for case, metrics in cases.items() for metric, value in metrics.items()
            if np.isfinite(value)]


def with_corruption_mean(rows: list[dict]) -> list[dict]:
    """``rows`` plus, per (setting, method, seed, metric, case), the mean over the ``acdc-C/<kind>`` sets as the
    set :data:`CORRUPTED_MEAN` (recomputed: rows of that set already present are replaced)."""
    base = [r for r in rows if r["site"] != CORRUPTED_MEAN]
    groups: dict[tuple, list[float]] = {}
    for r in base:
        if r["site"].startswith("acdc-C/"):
            key = (r["algorithm"], r["setting"], r["method"], r["seed"], r["metric"], r["case"])
            groups.setdefault(key, []).append(float(r["value"]))
    keys = ("algorithm", "setting", "method", "seed", "metric", "case")
    return base + [{**dict(zip(keys, k)), "site": CORRUPTED_MEAN, "value": float(np.mean(v))}
                   for k, v in groups.items()]


def claims(settings=SETTINGS) -> list[Claim]:
    """Per setting, on mean Dice: latent DA > cooperative (the paper's headline, digest section 5: ~15 % average Dice
    gain with 10 training subjects over its "standard training", which is the same dual network without latent DA)
    on the corrupted ACDC-C sets, the unseen vendor and the clean test; cooperative > the plain segmentation network
    and latent DA > it on the shifted sets (the paper's framing; the digest quotes no number for these)."""
    from src.transforms.corruptions import ACDC_C_KINDS

    groups = {f"corrupted (mean of {', '.join(ACDC_C_KINDS)})": (CORRUPTED_MEAN,), "unseen vendor": (HELD_OUT,)}
    out = []
    for setting in settings:
        for group, sites in groups.items():
            out += [Claim(setting, "cooperative+latent-DA", "cooperative", "dice", source="paper", sites=sites,
                          note=f"{group}: the paper's headline gain (latent DA over the dual network alone)"
                          if setting == settings[0] else ""),
                    Claim(setting, "cooperative", "standard", "dice", source="paper (framing)", sites=sites,
                          note=f"{group}: cooperative training alone beats a plain segmentation network"
                          if setting == settings[0] else ""),
                    Claim(setting, "cooperative+latent-DA", "standard", "dice", source="paper (framing)",
                          sites=sites)]
        out.append(Claim(setting, "cooperative+latent-DA", "cooperative", "dice", source="paper", sites=("acdc",),
                         note="clean low-data test: the headline gain is an average that includes it"
                         if setting == settings[0] else ""))
    return out


def write_outputs(out: Path, rows: list[dict], meta: dict, seconds: float, complete: bool = True,
                  report: bool = True) -> dict:
    """The comparison files of ``rows`` (+ ``.md`` and ``.png`` through the report when ``report``)."""
    run = {**meta["settings"], "wall_seconds": round(seconds, 1), "complete": complete}
    full = {**meta, "settings": run}
    paths = write_comparison(out, NAME, with_corruption_mean(rows), full,
                             claims(tuple(run.get("settings_run", SETTINGS))))
    if report:
        from benchmarks.report import write_comparison_report

        paths["markdown"] = write_comparison_report(paths["scores"], out)
    return paths


def run_label(quick: bool, scale: Scale, seeds) -> str:
    if quick and scale == QUICK:
        return "quick smoke run on synthetic data"
    if quick:
        return f"reduced run on synthetic data (the quick scale with {scale.rounds} rounds, {scale.train_subjects} " \
               "training subjects per site)"
    if scale == DEFAULT and list(seeds) == [0, 1, 2]:
        return "default setting on synthetic data"
    return "reduced run on synthetic data (smaller than the default setting)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cooptrain_compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cooptrain_compare"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="tiny data and networks, one round (the tests)")
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=list(METHODS))
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
    label = run_label(args.quick, scale, args.seeds)
    meta = {"algorithm": "cooptrain", "title": "Cooperative training + latent-space data augmentation (Chen et al., "
            "MICCAI 2021)", "synthetic": True, "run_label": label, "primary_metric": "dice",
            "settings": {"num_rounds": scale.rounds, "seeds": args.seeds, "settings_run": args.settings,
                         "methods": args.methods,
                         "scale": asdict(scale), "threads": args.threads, "train_sites": list(TRAIN_SITES),
                         "held_out": HELD_OUT, "corruption_realisations": len(REALISATIONS),
                         "command": "python -m benchmarks.cooptrain_compare "
                                    + " ".join(argv if argv is not None else sys.argv[1:])},
            "metrics": {"dice": "mean Dice of LV, MYO, RV per subject volume", "dice_lv": "Dice LV",
                        "dice_myo": "Dice MYO", "dice_rv": "Dice RV", "hd95": "HD95 (mm), mean over structures"}}
    start, meter = time.perf_counter(), RoundBytes()
    rows = run(out, args.seeds, scale, tuple(args.settings), tuple(args.methods), meta=meta, meter=meter)
    meta["bytes_per_round"] = meter.measure()
    paths = write_outputs(out, rows, meta, time.perf_counter() - start)
    print(paths["markdown"].read_text())
    print(f"wrote {out}/{NAME}{{.csv,_volumes.csv,_meta.json,.md,.png}} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
