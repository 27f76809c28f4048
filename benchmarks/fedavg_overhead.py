"""Foundation benchmark: what NVFlare + our learner cost over a plain PyTorch/MONAI loop, measured in one run.

P1  Prostate FedAvg in the simulator vs a plain single-process loop doing the same work on the pooled data
    (the same optimisation steps, and the same validation passes: each site scores the received global model and
    its own trained model on its validation volumes every round). FL time runs from the first site's first
    "training started" to the last site's last round (start-up, cross-site evaluation and shutdown excluded).
P2  Our learner's training throughput (one ``FederatedLearner.train_round`` of several epochs, checkpoint
    included) vs a hand-written loop with the same model, transforms, data and thread count; interleaved repeats,
    median ratio.
Also: simulator start-up (launch to first training step) and peak memory (RSS) of the simulator and the loops.

    python benchmarks/fedavg_overhead.py            # ~5 minutes on 2 cores (FL part about a minute)
    python benchmarks/fedavg_overhead.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
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


def prepare_data(work: Path, n_sites: int, cases_per_site: int, seed: int) -> tuple[Path, Path]:
    from data_prep.msd_prostate import convert
    from data_prep.synthetic.msd_prostate import generate

    task = generate(work / "raw", n_train=n_sites * cases_per_site, n_test=0, n_scanners=min(n_sites, 4), seed=seed)
    convert(task, work / "data", n_sites=n_sites, datalist_dir=work / "datalists", fractions=(0.5, 0.5, 0.0))
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


def run_simulator(data_root, datalists, work, n_sites, rounds, epochs):
    from jobs.common import execute
    from jobs.prostate_fedavg import build_recipe, parse_args

    args = parse_args(["--n-clients", str(n_sites), "--num-rounds", str(rounds), "--local-epochs", str(epochs),
                       "--data-root", str(data_root), "--datalist-dir", str(datalists), "--tracking", "none",
                       "--no-cross-site-eval", "--workspace", str(work / "ws"), "--name", "bench_fedavg"])
    launched = time.time()
    result = execute(build_recipe(args), args)
    total = time.time() - launched
    events = []
    for log in result.glob("site-*/log.txt"):
        for line in log.read_text().splitlines():
            m = STAMP.match(line)
            if m:
                t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                events.append((t, m.group(2), int(m.group(3)), m.group(4)))
    starts = [t for t, _, r, kind in events if kind == "training started"]
    ends = [t for t, _, r, kind in events if kind == "val_dice" and r == rounds - 1]
    if not starts or len(ends) != n_sites:
        raise RuntimeError(f"could not find round timestamps in the site logs under {result}")
    return {"fl_seconds": max(ends) - min(starts), "startup_seconds": min(starts) - launched, "wall_seconds": total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=2, help="sites (one simulator process each; 2 fits 2 cores)")
    p.add_argument("--cases-per-site", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-epochs", type=int, default=10)
    p.add_argument("--p2-steps", type=int, default=60, help="training steps per P2 repeat")
    p.add_argument("--p2-repeats", type=int, default=5, help="interleaved P2 repeats (median ratio)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (numbers meaningless)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.quick:
        a.cases_per_site, a.rounds, a.local_epochs, a.p2_steps, a.p2_repeats = 2, 1, 1, 3, 1
    out = Path(a.out)
    work = out / "fedavg_work"
    data_root, datalists = prepare_data(work, a.sites, a.cases_per_site, a.seed)
    threads = max(1, (torch.get_num_threads() if a.sites == 1 else 2) // 1)

    # ---- P1: FL in the simulator vs the same work in one plain process -------------------------------------
    print(f">> P1: simulator, {a.sites} sites x {a.rounds} rounds x {a.local_epochs} epochs", flush=True)
    sim = run_simulator(data_root, datalists, work, a.sites, a.rounds, a.local_epochs)
    sim_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    config = ProstateConfig(data_root=str(data_root), datalist_dir=str(datalists), num_threads=threads,
                            local_epochs=a.local_epochs)
    learners = [SegmentationLearner(f"site-{i + 1}", config, output_dir=work / "models") for i in range(a.sites)]
    steps_per_round = sum(len(lr.train_loader) for lr in learners) * a.local_epochs
    plain = PlainLoop(learners)
    print(f">> P1: plain loop, {steps_per_round * a.rounds} steps + {2 * a.rounds} validation passes", flush=True)
    start = time.perf_counter()
    for _ in range(a.rounds):
        plain.train_steps(steps_per_round)
        plain.validate()
        plain.validate()
    plain_seconds = time.perf_counter() - start

    # ---- P2: learner throughput vs the plain loop, same model/data/threads ---------------------------------
    # one train_round per repeat (as in a round of FL), interleaved with the plain loop; median of the ratios
    learner = learners[0]
    per_epoch = len(learner.train_loader)
    learner.config.local_epochs = epochs = max(1, a.p2_steps // per_epoch)
    steps = epochs * per_epoch
    print(f">> P2: {a.p2_repeats} x {steps} training steps, learner vs plain loop ({threads} threads)", flush=True)
    single = PlainLoop([learner])
    single.train_steps(per_epoch)  # warm-up of both (caches, allocator)
    learner.train_round()
    learner_times, plain_times = [], []
    for _ in range(a.p2_repeats):
        start = time.perf_counter()
        learner.train_round()
        learner_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        single.train_steps(steps)
        plain_times.append(time.perf_counter() - start)
    ratios = sorted(p / lt for p, lt in zip(plain_times, learner_times))
    learner_s, plain_s = float(np.median(learner_times)), float(np.median(plain_times))
    own_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    results = {
        "settings": vars(a) | {"threads_plain": threads, "steps_per_round": steps_per_round},
        "P1_fl_seconds": sim["fl_seconds"],
        "P1_plain_seconds": plain_seconds,
        "P1_ratio": sim["fl_seconds"] / plain_seconds,
        "P2_learner_steps_per_s": steps / learner_s,
        "P2_plain_steps_per_s": steps / plain_s,
        "P2_ratio": ratios[len(ratios) // 2],
        "P2_ratios": ratios,
        "simulator_startup_seconds": sim["startup_seconds"],
        "simulator_wall_seconds": sim["wall_seconds"],
        "peak_rss_mb_simulator_processes": sim_peak_mb,
        "peak_rss_mb_benchmark_process": own_peak_mb,
        "machine": {"cpus": __import__("os").cpu_count(), "torch": torch.__version__},
    }
    table = "\n".join([
        "| measure | value | goal |",
        "|---|---|---|",
        f"| P1 FL time / plain-loop time (same steps + validations) | {results['P1_ratio']:.2f} "
        f"({sim['fl_seconds']:.1f} s / {plain_seconds:.1f} s) | <= 1.10 |",
        f"| P2 learner throughput / plain loop | {results['P2_ratio']:.2f} "
        f"({results['P2_learner_steps_per_s']:.2f} vs {results['P2_plain_steps_per_s']:.2f} steps/s) | >= 0.95 |",
        f"| simulator start-up (launch to first training step) | {sim['startup_seconds']:.1f} s | |",
        f"| simulator wall time in total | {sim['wall_seconds']:.1f} s | |",
        f"| peak RSS, largest simulator process | {sim_peak_mb:.0f} MB | |",
        f"| peak RSS, benchmark process (plain loops + learners) | {own_peak_mb:.0f} MB | |",
    ])
    print()
    write_report(results, out / "fedavg_overhead.json", table, markdown=out / "fedavg_overhead.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
