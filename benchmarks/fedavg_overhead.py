"""Foundation benchmark: what NVFlare + our learner cost over a plain PyTorch/MONAI loop, measured in one run.

P1  Prostate FedAvg in the simulator vs the same work done the same way without the framework (the headline,
    ``P1_ratio``): one single-threaded plain process per site, all in parallel, each running the same optimisation
    steps on its own data and the same validation passes (the received global model and its own trained model on
    its validation volumes every round), the parent averaging the sites' weights by their steps between rounds,
    as the server does. FL time runs from the first site's first "training started" to the last site's last
    round; the reference's from the first broadcast to the last round's weights back in the parent. The two are
    run ``--p1-repeats`` times, interleaved (sim ref | ref sim | ...), and P1 is the median of the pairs' ratios:
    this machine's speed drifts by several per cent within minutes, more than the effect measured. Also from the
    simulator's own logs: the time between rounds on the critical path (the last site's result to the last
    site's next training start), which is the framework's share alone. Start-up (launch to the first training
    step) and shutdown (last round to exit) are measured and reported apart for both. Also kept: the simulator vs
    one plain process with all the cores on the pooled data (``P1_pooled_ratio``), which the simulator can beat.
P2  Our learner's training throughput (one ``FederatedLearner.train_round`` of several epochs, checkpoint
    included) vs a hand-written loop with the same model, transforms, data and thread count; interleaved repeats
    (learner plain | plain learner | ...), median ratio, then one profiled round of each.
Also: peak memory (RSS) of the simulator and the loops.

    python benchmarks/fedavg_overhead.py            # ~25 minutes on 2 quiet cores (3 pairs of ~3-min jobs, P2)
    python benchmarks/fedavg_overhead.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._report import write_report  # noqa: E402
from src.config.tutorial import ProstateConfig  # noqa: E402
from src.learners.segmentation import SegmentationLearner  # noqa: E402

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(site-\d+) round (\d+): (training started|val_dice)")
TRAIN_SECONDS = re.compile(r"train_seconds=([0-9.]+)")


def prepare_data(work: Path, n_sites: int, cases_per_site: int, seed: int) -> tuple[Path, Path]:
    from data_prep.msd_prostate import convert
    from data_prep.synthetic.msd_prostate import generate

    task = generate(work / "raw", n_train=n_sites * cases_per_site, n_test=0, n_scanners=min(n_sites, 4), seed=seed)
    convert(task, work / "data", n_sites=n_sites, datalist_dir=work / "datalists", fractions=(0.5, 0.375, 0.125))
    return work / "data", work / "datalists"


class PlainLoop:
    """The reference: a hand-written MONAI/PyTorch loop, no engines, no framework; same parts as the learner."""

    def __init__(self, learners: list[SegmentationLearner]):
        from monai.data import CacheDataset, DataLoader

        base = learners[0]
        self.model, self.loss = base.build_model(), base.build_loss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=base.config.lr)
        train = sum((lr.datalist["training"] for lr in learners), [])
        val = sum((lr.datalist["validation"] for lr in learners), [])
        self.train = DataLoader(CacheDataset(train, base.transforms("training"), progress=False),
                                batch_size=base.config.batch_size, shuffle=True)
        self.val = DataLoader(CacheDataset(val, base.transforms("validation"), progress=False), batch_size=1)
        self.inferer = base.inferer("validation")

    def train_steps(self, steps: int) -> int:
        done, samples = 0, 0
        self.model.train()
        while done < steps:
            for batch in self.train:
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.loss(self.model(batch["image"]), batch["label"])
                loss.backward()
                self.optimizer.step()
                done, samples = done + 1, samples + batch["image"].shape[0]
                if done == steps:
                    break
        return samples

    def validate(self) -> None:
        self.model.eval()
        with torch.no_grad():
            for batch in self.val:
                self.inferer(batch["image"], self.model).argmax(1)


def _reference_site(site: str, config: dict, conn) -> None:
    """One site of the P1 reference, in its own single-threaded process: no framework, no engine, no checkpoint.

    Protocol on ``conn``: sends ("ready", steps); then for each received state dict: validate it, train ``steps``,
    validate the local model, send (state dict, steps, seconds the training took); ``None`` ends it.
    """
    torch.set_num_threads(1)
    learner = SegmentationLearner(site, ProstateConfig(**config), output_dir=Path(config["data_root"]).parent / "ref")
    loop = PlainLoop([learner])
    steps = len(learner.train_loader) * learner.config.local_epochs
    conn.send(("ready", steps))
    while (state := conn.recv()) is not None:
        loop.model.load_state_dict(state)
        loop.validate()  # the received global model, as fit_round scores it
        start = time.perf_counter()
        loop.train_steps(steps)
        trained = time.perf_counter() - start
        loop.validate()  # the site's trained model
        conn.send(({k: v.detach().clone() for k, v in loop.model.state_dict().items()}, steps, trained))
    conn.close()


def run_reference(data_root, datalists, n_sites: int, rounds: int, epochs: int, seed: int) -> dict:
    """The same FedAvg without the framework: one plain single-threaded process per site, averaging in here."""
    import multiprocessing as mp

    from src.aggregators.fedavg import weighted_average
    from src.models.networks import ProstateUNet

    config = {"data_root": str(data_root), "datalist_dir": str(datalists), "local_epochs": epochs, "seed": seed,
              "num_threads": 1, "n_clients": n_sites, "tracking": ()}
    torch.manual_seed(seed)
    model = ProstateUNet(channels=ProstateConfig.channels)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ctx = mp.get_context("spawn")
    launched = time.time()
    pipes, procs, train_seconds = [], [], []
    try:
        for i in range(n_sites):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_reference_site, args=(f"site-{i + 1}", config, child), daemon=True)
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        for conn in pipes:
            if conn.recv()[0] != "ready":
                raise RuntimeError("a reference site did not start")
        started = time.time()
        for _ in range(rounds):
            for conn in pipes:
                conn.send(global_state)
            results = [conn.recv() for conn in pipes]
            train_seconds += [r[2] for r in results]
            averaged = weighted_average([r[0] for r in results], [r[1] for r in results])
            global_state = {k: torch.as_tensor(v) for k, v in averaged.items()}
        ended = time.time()
        for conn in pipes:
            conn.send(None)
        for proc in procs:
            proc.join(60)
        closed = time.time()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return {"fl_seconds": ended - started, "startup_seconds": started - launched, "shutdown_seconds": closed - ended,
            "wall_seconds": closed - launched, "train_seconds": train_seconds}


def run_simulator(data_root, datalists, work, n_sites, rounds, epochs):
    from jobs.common import execute
    from jobs.prostate_fedavg import build_recipe, parse_args

    args = parse_args(["--n-clients", str(n_sites), "--num-rounds", str(rounds), "--local-epochs", str(epochs),
                       "--data-root", str(data_root), "--datalist-dir", str(datalists), "--tracking", "none",
                       "--no-cross-site-eval", "--workspace", str(work / "ws"), "--name", "bench_fedavg"])
    launched = time.time()
    result = execute(build_recipe(args), args)
    total = time.time() - launched
    events, train_seconds = [], []
    for log in result.glob("site-*/log.txt"):
        for line in log.read_text().splitlines():
            m = STAMP.match(line)
            if m and m.group(4) == "val_dice" and (t := TRAIN_SECONDS.search(line)):
                train_seconds.append(float(t.group(1)))  # the learner's own timing of its training steps
            if m:
                t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                events.append((t, m.group(2), int(m.group(3)), m.group(4)))
    starts = [t for t, _, r, kind in events if kind == "training started"]
    ends = [t for t, _, r, kind in events if kind == "val_dice" and r == rounds - 1]
    if not starts or len(ends) != n_sites:
        raise RuntimeError(f"could not find round timestamps in the site logs under {result}")
    return {"fl_seconds": max(ends) - min(starts), "startup_seconds": min(starts) - launched, "wall_seconds": total,
            "shutdown_seconds": launched + total - max(ends), "turnaround_seconds": turnarounds(events, rounds),
            "train_seconds": train_seconds}


def turnarounds(events: list[tuple], rounds: int) -> list[float]:
    """Per round boundary: from the last site's result of round r - 1 (its val_dice line, logged just before it
    sends) to the last site's "training started" of round r: what the framework adds between rounds on the
    critical path (sending, aggregating, persisting, scheduling, fetching, loading)."""
    out = []
    for r in range(1, rounds):
        ended = [t for t, _, rnd, kind in events if kind == "val_dice" and rnd == r - 1]
        started = [t for t, _, rnd, kind in events if kind == "training started" and rnd == r]
        if ended and started:
            out.append(max(started) - max(ended))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=2, help="sites (one simulator process each; 2 fits 2 cores)")
    p.add_argument("--cases-per-site", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-epochs", type=int, default=20, help="local epochs per round (20: FL time ~2.5 min)")
    p.add_argument("--p1-repeats", type=int, default=3,
                   help="simulator / reference pairs, interleaved (sim ref ref sim ...); P1 is the median ratio")
    p.add_argument("--p2-steps", type=int, default=60, help="training steps per P2 repeat")
    p.add_argument("--p2-repeats", type=int, default=7, help="interleaved P2 repeats (median ratio)")
    p.add_argument("--parts", nargs="+", choices=("p1", "p2"), default=["p1", "p2"], help="what to measure")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (numbers meaningless)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.quick:
        a.cases_per_site, a.rounds, a.local_epochs, a.p2_steps, a.p2_repeats, a.p1_repeats = 3, 1, 1, 3, 1, 1
    if a.p1_repeats < 1 or a.p2_repeats < 1:
        p.error(f"--p1-repeats and --p2-repeats must be >= 1, got {a.p1_repeats} and {a.p2_repeats}")
    out = Path(a.out)
    work = out / "fedavg_work"
    load_start = [round(x, 2) for x in os.getloadavg()]
    data_root, datalists = prepare_data(work, a.sites, a.cases_per_site, a.seed)
    threads = max(1, (torch.get_num_threads() if a.sites == 1 else 2) // 1)

    config = ProstateConfig(data_root=str(data_root), datalist_dir=str(datalists), num_threads=threads,
                            local_epochs=a.local_epochs, tracking=())
    learners = [SegmentationLearner(f"site-{i + 1}", config, output_dir=work / "models") for i in range(a.sites)]
    steps_per_round = sum(len(lr.train_loader) for lr in learners) * a.local_epochs
    results: dict = {"settings": vars(a) | {"threads_plain": threads, "steps_per_round": steps_per_round,
                                            "command": "python benchmarks/fedavg_overhead.py " + " ".join(
                                                argv if argv is not None else sys.argv[1:])}}
    results["load_average_at_start"] = load_start
    rows = []
    if "p1" in a.parts:
        rows += part_p1(a, data_root, datalists, work, learners, steps_per_round, threads, results)
    if "p2" in a.parts:
        rows += part_p2(a, learners[0], threads, results)
    results["peak_rss_mb_benchmark_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["machine"] = {"cpus": os.cpu_count(), "torch": torch.__version__}
    rows += [f"| peak RSS, benchmark process (plain loops + learners) | "
             f"{results['peak_rss_mb_benchmark_process']:.0f} MB | |",
             f"| load averages (1/5/15 min) at the start / at the end | {results['load_average_at_start']} / "
             f"{results['load_average_at_end']} | |"]
    table = "\n".join(["| measure | value | goal |", "|---|---|---|", *rows])
    print()
    write_report(results, out / "fedavg_overhead.json", table, markdown=out / "fedavg_overhead.md")
    return 0


def interleaved(pairs: int, first: str = "sim", second: str = "ref") -> list[str]:
    """a b | b a | a b ...: each pair's order flips, so a drift in the machine's speed favours neither side."""
    return [kind for i in range(pairs) for kind in ((first, second) if i % 2 == 0 else (second, first))]


def _median(values) -> float:
    return float(np.median(values))


def _ratio_text(a: list[float], b: list[float]) -> str:
    if not a or not b:
        return "-"
    return f"{np.mean(a):.2f} s / {np.mean(b):.2f} s = {np.mean(a) / np.mean(b):.3f}"


def part_p1(a, data_root, datalists, work, learners, steps_per_round, threads, results) -> list[str]:
    load_p1 = [round(x, 2) for x in os.getloadavg()]
    sims, refs = [], []
    for kind in interleaved(a.p1_repeats):
        if kind == "sim":
            print(f">> P1 [{len(sims) + 1}/{a.p1_repeats}]: simulator, {a.sites} sites x {a.rounds} rounds x "
                  f"{a.local_epochs} epochs", flush=True)
            sims.append(run_simulator(data_root, datalists, work, a.sites, a.rounds, a.local_epochs))
        else:
            print(f">> P1 [{len(refs) + 1}/{a.p1_repeats}]: reference, {a.sites} plain single-threaded processes "
                  f"in parallel, averaging in the parent", flush=True)
            refs.append(run_reference(data_root, datalists, a.sites, a.rounds, a.local_epochs, a.seed))
    sim_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    plain = PlainLoop(learners)
    print(f">> P1: pooled plain loop ({threads} threads), {steps_per_round * a.rounds} steps + {2 * a.rounds} "
          f"validation passes", flush=True)
    start = time.perf_counter()
    for _ in range(a.rounds):
        plain.train_steps(steps_per_round)
        plain.validate()
        plain.validate()
    plain_seconds = time.perf_counter() - start
    ratios = [sim["fl_seconds"] / ref["fl_seconds"] for sim, ref in zip(sims, refs)]
    fl, ref_s = _median([x["fl_seconds"] for x in sims]), _median([x["fl_seconds"] for x in refs])
    turn = [t for sim in sims for t in sim["turnaround_seconds"]]
    medians = {f"{prefix}_{key}": _median([x[key] for x in runs])
              for runs, prefix in ((sims, "simulator"), (refs, "reference"))
              for key in ("startup_seconds", "shutdown_seconds", "wall_seconds")}
    results.update({
        "P1_fl_seconds": fl,
        "P1_reference_seconds": ref_s,
        "P1_ratio": _median(ratios),
        "P1_ratios": ratios,
        "P1_runs": {"simulator": sims, "reference": refs, "order": interleaved(a.p1_repeats)},
        "P1_turnaround_seconds": {"mean": float(np.mean(turn)) if turn else None, "max": max(turn, default=None),
                                  "n": len(turn)},
        "P1_plain_seconds": plain_seconds,
        "P1_pooled_ratio": fl / plain_seconds,
        **medians,
        "peak_rss_mb_simulator_processes": sim_peak_mb,
        "load_average_at_P1": load_p1,
    })
    train_sim = [t for x in sims for t in x["train_seconds"]]
    train_ref = [t for x in refs for t in x["train_seconds"]]
    results["P1_train_seconds_per_site_round"] = {
        "simulator": float(np.mean(train_sim)) if train_sim else None,
        "reference": float(np.mean(train_ref)) if train_ref else None, "n": [len(train_sim), len(train_ref)]}
    each = ", ".join(f"{r:.3f}" for r in ratios)
    turn_text = (f"{np.mean(turn):.2f} s mean, {max(turn):.2f} s max over {len(turn)} round boundaries "
                 f"({100 * sum(turn) / sum(x['fl_seconds'] for x in sims):.1f} % of FL time)") if turn else "-"
    def both(what: str) -> str:
        return f"{medians[f'simulator_{what}_seconds']:.1f} s / {medians[f'reference_{what}_seconds']:.1f} s"

    return [
        f"| **P1 FL time / reference (one plain single-threaded process per site in parallel, same steps, "
        f"validations and averaging)**, median of {len(ratios)} interleaved pairs | **{results['P1_ratio']:.2f}** "
        f"(pairs: {each}; medians {fl:.1f} s / {ref_s:.1f} s) | <= 1.05 |",
        f"| P1 between rounds: last site's result to last site's next training start (framework only) | "
        f"{turn_text} | |",
        f"| P1 training steps alone, seconds per site and round: simulator (the learner's engine) / reference "
        f"(mean of {len(train_sim)} / {len(train_ref)}) | {_ratio_text(train_sim, train_ref)} | |",
        f"| P1 FL time / one pooled plain process with {threads} threads (older comparison) | "
        f"{results['P1_pooled_ratio']:.2f} ({fl:.1f} s / {plain_seconds:.1f} s) | |",
        f"| start-up (launch to first training step): simulator / reference (medians) | {both('startup')} | |",
        f"| shutdown (last round to exit): simulator / reference (medians) | {both('shutdown')} | |",
        f"| wall time per run: simulator / reference (medians) | {both('wall')} | |",
        f"| peak RSS, largest simulator process | {sim_peak_mb:.0f} MB | |",
        f"| load averages (1/5/15 min) at P1 start | {load_p1} | |",
    ]


def part_p2(a, learner, threads, results) -> list[str]:
    """P2: one train_round per repeat (as in a round of FL), interleaved with the plain loop; median of the ratios;
    then one profiled round of each (where the time goes)."""
    per_epoch = len(learner.train_loader)
    learner.config.local_epochs = epochs = max(1, a.p2_steps // per_epoch)
    steps = epochs * per_epoch
    print(f">> P2: {a.p2_repeats} x {steps} training steps, learner vs plain loop ({threads} threads)", flush=True)
    load_p2 = [round(x, 2) for x in os.getloadavg()]
    single = PlainLoop([learner])
    single.train_steps(per_epoch)  # warm-up of both (caches, allocator)
    learner.train_round()
    learner_times, plain_times = [], []
    runs = {"learner": (learner.train_round, learner_times), "plain": (lambda: single.train_steps(steps), plain_times)}
    for kind in interleaved(a.p2_repeats, "learner", "plain"):
        run, times = runs[kind]
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    ratios = sorted(p / lt for p, lt in zip(plain_times, learner_times))
    learner_s, plain_s = float(np.median(learner_times)), float(np.median(plain_times))
    profile = profile_p2(learner, single, steps)
    results.update({
        "P2_learner_steps_per_s": steps / learner_s,
        "P2_plain_steps_per_s": steps / plain_s,
        "P2_ratio": _median(ratios),
        "P2_ratios": ratios,
        "P2_steps_per_repeat": steps,
        "P2_profile_seconds": profile,
        "load_average_at_P2": load_p2,
    })
    lr_p, pl_p = profile["learner"], profile["plain"]
    return [
        f"| **P2 learner throughput / plain loop** (median of {a.p2_repeats} interleaved repeats of {steps} steps) "
        f"| **{results['P2_ratio']:.2f}** ({results['P2_learner_steps_per_s']:.2f} vs "
        f"{results['P2_plain_steps_per_s']:.2f} steps/s; pairs {ratios[0]:.2f} to {ratios[-1]:.2f}, quartiles "
        f"{np.percentile(ratios, 25):.2f} / {np.percentile(ratios, 75):.2f}) | >= 0.97 |",
        f"| P2 profile, learner round (s): step compute / data loading / engine events + bookkeeping / "
        f"snapshot + checkpoint | {lr_p['step']:.2f} / {lr_p['data']:.2f} / {lr_p['engine']:.3f} / "
        f"{lr_p['round_fixed']:.3f} (of {lr_p['total']:.2f}) | |",
        f"| P2 profile, plain loop (s): step compute / data loading / rest | {pl_p['step']:.2f} / "
        f"{pl_p['data']:.2f} / {pl_p['engine']:.3f} (of {pl_p['total']:.2f}) | |",
        f"| load averages (1/5/15 min) at P2 start | {load_p2} | |",
    ]


def _cum(stats, file_part: str, func: str) -> float:
    """Cumulative seconds of the (first) profiled function ``func`` defined in a file whose path has ``file_part``."""
    return sum(v[3] for (f, _, name), v in stats.stats.items() if name == func and file_part in f)


def profile_p2(learner, single, steps: int) -> dict:
    """Where one round's time goes, learner vs plain loop (cProfile; its own overhead inflates both alike)."""
    import cProfile
    import pstats

    out = {}
    for name, fn in (("learner", learner.train_round), ("plain", lambda: single.train_steps(steps))):
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        st = pstats.Stats(prof)
        total = max(v[3] for v in st.stats.values())
        data = _cum(st, "torch/utils/data/dataloader", "__next__")
        if name == "learner":
            run = _cum(st, "ignite/engine/engine", "_internal_run")
            step = _cum(st, "src/learners/base", "train_step")
            out[name] = {"total": total, "step": step, "data": data, "engine": run - step - data,
                         "round_fixed": total - run}
        else:
            step = total - data
            out[name] = {"total": total, "step": step, "data": data, "engine": 0.0}
    return out


if __name__ == "__main__":
    sys.exit(main())
