"""Scale benchmark: 1, 2, 4, 8, 16 simulated sites on this machine's cores (issue 19).

Two jobs, each run by its own job script in the simulator exactly as a user runs it (one subprocess per
configuration, ``--tracking none --no-cross-site-eval``):

* ``prostate2d``: the multi-site 2-D prostate setting (``jobs/iopfl.py --algorithm fedavg``: IOP-FL's 2-D U-Net,
  weighted FedAvg) on the synthetic six-hospital slices of ``data_prep.multisite_prostate`` (3 cases a hospital,
  32x32 slices); site ``site-k`` gets a copy of hospital ``k mod 6``'s datalist, so every site has the same tiny
  amount of data and the work per site stays fixed as sites are added (deviation: the real data has six
  hospitals; 16 sites need copies);
* ``mednist``: ``jobs/mednist_fedavg.py`` (DenseNet121) on synthetic MedNIST split IID into 16 sites once, the
  first N datalists used for N sites (fixed data per site again).

Measured per run: wall time per round (from the sites' own log lines: round r ends when the last site logs its
result; rounds after the first are the steady state, the first includes the site processes' start), start-up
(launch to the first training step), the whole wall time, and the RSS of the process tree sampled every 0.2 s
(peak of each site process, peak of the sum over the tree; RSS counts shared library pages once per process, so
the total is an upper bound). The simulator's parallelism is the jobs' default (``jobs.common.parallelism``: one
process per site while they fit in memory, else as many as fit, x ``cores // processes`` torch threads), printed
and recorded; ``--job-arg=--sim-workers=2`` measures the sites taking turns on 2 processes instead.

Memory per site is broken down into model + optimiser (parameter count x 4 bytes x (weights, gradients and the
optimiser's moments)), the data cache (bytes of the cached training and validation items of one site's learner),
and the framework: the RSS of an idle client process (python + torch + MONAI + NVFlare + our learner code
imported, nothing built) and the remainder of the measured peak.

    python -m benchmarks.scale                        # 1..16 sites x 2 jobs x 3 rounds (~15-25 min on 2 cores)
    python -m benchmarks.scale --quick                # 1 and 2 sites, 1 job, 2 rounds (a smoke run)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._report import machine, write_report  # noqa: E402
from data_prep.common import atomic_write_json, own_folder, read_owner  # noqa: E402

JOBS = ("prostate2d", "mednist")
OWNER = "benchmarks.scale"
LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(site-\d+) round (\d+): (training started|.*\(global\))")
#: bytes per parameter held by a site: weights, gradients, and Adam's two moments (three with amsgrad)
STATE_COPIES = {"prostate2d": 5, "mednist": 4}
GOAL_MEMORY_GB = 24.0


# ---- data ----------------------------------------------------------------------------------------------------
def prepare(job: str, work: Path, max_sites: int) -> tuple[Path, Path]:
    """Tiny data for ``max_sites`` sites named ``site-1 ..``; returns (data root, datalist folder)."""
    if job == "prostate2d":
        from data_prep.multisite_prostate import convert
        from data_prep.synthetic.multisite_prostate import SITES, generate

        raw = generate(work / "raw2d", n_cases=3, seed=0, sites=tuple(SITES), matrix=96)
        lists = convert(raw, work / "data2d", work / "lists2d_src", sites=tuple(SITES), size=32)
        sources = [Path(p) for p in lists.values()]
        out = work / "lists2d"
        out.mkdir(parents=True, exist_ok=True)
        for k in range(max_sites):
            shutil.copyfile(sources[k % len(sources)], out / f"site-{k + 1}.json")
        return work / "data2d", out
    from data_prep.mednist import split
    from data_prep.synthetic.mednist import generate

    # 6 classes x per_class images shared among the sites: 8 per site (training/validation/testing 6/1/1)
    per_class = max(3, -(-8 * max_sites // 6))
    generate(work / "mednist", per_class=per_class, seed=0)  # writes <work>/mednist/MedNIST/<Class>/
    split(work / "mednist", n_sites=max_sites, datalist_dir=work / "lists_mednist", fractions=(0.75, 0.125, 0.125))
    return work / "mednist", work / "lists_mednist"


def job_command(job: str, n: int, data_root: Path, lists: Path, work: Path, rounds: int, extra: list[str]) -> list[str]:
    sites = [f"site-{k}" for k in range(1, n + 1)]
    script = {"prostate2d": ["jobs/iopfl.py", "--algorithm", "fedavg"], "mednist": ["jobs/mednist_fedavg.py"]}[job]
    return [sys.executable, "-u", *script, "--sites", *sites, "--data-root", str(data_root), "--datalist-dir",
            str(lists), "--num-rounds", str(rounds), "--local-epochs", "1", "--tracking", "none",
            "--no-cross-site-eval", "--workspace", str(work / "ws"), "--name", f"scale_{job}_{n}", *extra]


# ---- measuring -----------------------------------------------------------------------------------------------
class TreeSampler(threading.Thread):
    """Samples the RSS of a process and all its descendants every ``interval`` s (psutil)."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.stop = threading.Event()
        self.peak_total = 0
        self.peak_site: dict[str, int] = {}  # site name -> peak RSS of its worker processes
        self.peak_other = 0  # largest non-site process (job script / simulator server)
        self.max_site_processes = 0

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            total, sites_now = 0, 0
            for p in procs:
                try:
                    rss, cmd = p.memory_info().rss, p.cmdline()
                except psutil.Error:
                    continue
                total += rss
                if "nvflare.private.fed.app.simulator.simulator_worker" in cmd:
                    site = cmd[cmd.index("--client") + 1] if "--client" in cmd else "?"
                    self.peak_site[site] = max(self.peak_site.get(site, 0), rss)
                    sites_now += 1
                else:
                    self.peak_other = max(self.peak_other, rss)
            self.peak_total = max(self.peak_total, total)
            self.max_site_processes = max(self.max_site_processes, sites_now)
            self.stop.wait(self.interval)


def round_times(result: Path, n_sites: int, rounds: int) -> dict:
    """Per-round wall times from the sites' log lines (start of round 0, end of each round)."""
    starts, ends = [], {}
    for log in result.glob("site-*/log.txt"):
        for line in log.read_text(errors="replace").splitlines():
            m = LINE.match(line)
            if not m:
                continue
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            r = int(m.group(3))
            if m.group(4) == "training started":
                if r == 0:
                    starts.append(t)
            else:
                ends.setdefault(r, []).append(t)
    if not starts or len(ends) != rounds or any(len(v) != n_sites for v in ends.values()):
        raise RuntimeError(f"incomplete round log lines under {result}: {len(starts)} starts, "
                           f"{ {r: len(v) for r, v in ends.items()} } ends for {n_sites} sites x {rounds} rounds")
    end = [max(ends[r]) for r in range(rounds)]
    per_round = [end[0] - min(starts)] + [end[r] - end[r - 1] for r in range(1, rounds)]
    return {"first_start": min(starts), "last_end": end[-1], "round_seconds": per_round,
            "steady_round_seconds": sum(per_round[1:]) / (rounds - 1) if rounds > 1 else per_round[0]}


def run_one(job: str, n: int, data_root: Path, lists: Path, work: Path, rounds: int, extra: list[str],
            timeout: float) -> dict:
    cmd = job_command(job, n, data_root, lists, work, rounds, extra)
    log_path = work / f"{job}_{n}.log"
    launched = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            raise RuntimeError(f"{job} with {n} sites ran past {timeout:.0f} s (log: {log_path})") from None
        finally:
            sampler.stop.set()
            sampler.join(5)
    wall = time.time() - launched
    if rc != 0:
        raise RuntimeError(f"{job} with {n} sites failed (exit {rc}); log: {log_path}\n"
                           + log_path.read_text(errors="replace")[-3000:])
    text = log_path.read_text(errors="replace")
    share = re.search(r"simulator: (\d+) sites, (\d+) site processes at once x (\d+) torch threads", text)
    times = round_times(_result_dir(work, job, n), n, rounds)
    peaks = sorted(sampler.peak_site.values())
    return {
        "job": job, "sites": n, "command": " ".join(cmd[1:]),
        "sim_workers": int(share.group(2)) if share else None,
        "threads_per_site": int(share.group(3)) if share else None,
        "max_site_processes_seen": sampler.max_site_processes,
        "wall_seconds": wall,
        "startup_seconds": times["first_start"] - launched,
        "shutdown_seconds": launched + wall - times["last_end"],
        "round_seconds": times["round_seconds"],
        "steady_round_seconds": times["steady_round_seconds"],
        "peak_rss_mb_site_max": peaks[-1] / 2**20 if peaks else 0.0,
        "peak_rss_mb_site_mean": sum(peaks) / len(peaks) / 2**20 if peaks else 0.0,
        "peak_rss_mb_server_or_script": sampler.peak_other / 2**20,
        "peak_rss_mb_total": sampler.peak_total / 2**20,
        "load_average": list(os.getloadavg()),
    }


def _result_dir(work: Path, job: str, n: int) -> Path:
    """The simulator's result folder of a run: the one holding ``site-*/log.txt``."""
    logs = sorted((work / "ws" / f"scale_{job}_{n}").rglob("site-*/log.txt"), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise RuntimeError(f"no site logs under {work / 'ws' / f'scale_{job}_{n}'}")
    return logs[-1].parent.parent


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def idle_client_mb() -> float:
    """RSS of a process that has imported what a site process imports (torch, MONAI, ignite, NVFlare's client,
    our learners) and built nothing: the framework's floor per site."""
    code = ("import os, torch, monai, ignite, nvflare.client, nvflare.private.fed.app.simulator.simulator_worker; "
            "import src.learners.prostate2d, src.learners.classification, src.learners.client_api; import psutil; "
            "print(psutil.Process().memory_info().rss)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 2**20


def site_breakdown(job: str, data_root: Path, lists: Path) -> dict:
    """Model + optimiser and data-cache bytes of one site (site-1), built in this process as a site builds it."""
    import torch

    if job == "prostate2d":
        from src.config.iopfl import IOPFLConfig
        from src.learners.prostate2d import Prostate2DLearner

        cfg = IOPFLConfig(data_root=str(data_root), datalist_dir=str(lists), algorithm="fedavg", num_threads=1,
                          tracking=())
        learner = Prostate2DLearner("site-1", cfg, output_dir=lists.parent / "breakdown")
    else:
        from src.config.tutorial import MedNISTConfig
        from src.learners.classification import ClassificationLearner

        cfg = MedNISTConfig(data_root=str(data_root), datalist_dir=str(lists), num_threads=1, tracking=())
        learner = ClassificationLearner("site-1", cfg, output_dir=lists.parent / "breakdown")
    params = sum(p.numel() for p in learner.model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in learner.model.buffers())

    def cached(ds) -> int:
        total = 0
        for item in getattr(ds, "_cache", []) or []:
            for v in (item.values() if isinstance(item, dict) else [item]):
                if isinstance(v, torch.Tensor):
                    total += v.numel() * v.element_size()
                elif hasattr(v, "nbytes"):
                    total += int(v.nbytes)
        return total

    data = cached(learner.train_loader.dataset)
    if learner.datalist.get("validation"):
        data += cached(learner._loader("validation").dataset)
    return {"parameters": params, "model_optimiser_mb": (params * 4 * STATE_COPIES[job] + buffers) / 2**20,
            "data_cache_mb": data / 2**20}


# ---- report --------------------------------------------------------------------------------------------------
def verdicts(rows: list[dict], cores: int) -> dict:
    out = {}
    for job in sorted({r["job"] for r in rows}):
        mine = sorted((r for r in rows if r["job"] == job), key=lambda r: r["sites"])
        big = mine[-1]
        # once sites outnumber cores: time per round per site must not grow (linear or better)
        beyond = [r for r in mine if r["sites"] >= cores]
        per_site = [r["steady_round_seconds"] / r["sites"] for r in beyond]
        linear = (per_site[-1] <= per_site[0] * 1.10) if len(per_site) > 1 else None
        out[job] = {
            "largest_sites": big["sites"],
            "fits_24gb": big["peak_rss_mb_total"] / 1024 <= GOAL_MEMORY_GB,
            "peak_total_gb": big["peak_rss_mb_total"] / 1024,
            "seconds_per_round_per_site_from_cores_on": per_site,
            "no_worse_than_linear": linear,
        }
    return out


def markdown(rows: list[dict], breakdown: dict, idle_mb: float, verdict: dict, settings: dict) -> str:
    lines = [f"Settings: {settings['rounds']} rounds x 1 local epoch, {settings['cpu_cores']} CPU cores, "
             f"load averages (1/5/15 min) at start {settings['load_start']}, at end {settings['load_end']}.", "",
             "| job | sites | site processes at once x torch threads | s/round (steady) | s/round/site | "
             "first round s | start-up s | shutdown s | peak RSS per site MB (max) | peak RSS total MB | "
             "load 1 min |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['job']} | {r['sites']} | {r['sim_workers']} x {r['threads_per_site']} | "
                     f"{r['steady_round_seconds']:.1f} | {r['steady_round_seconds'] / r['sites']:.2f} | "
                     f"{r['round_seconds'][0]:.1f} | {r['startup_seconds']:.1f} | {r['shutdown_seconds']:.1f} | "
                     f"{r['peak_rss_mb_site_max']:.0f} | {r['peak_rss_mb_total']:.0f} | "
                     f"{r['load_average'][0]:.2f} |")
    lines += ["", f"Memory per site (idle client process, imports only: {idle_mb:.0f} MB):", "",
              "| job | parameters | model + optimiser MB | data cache MB | framework MB (idle client) | "
              "rest of the peak MB (activations, allocator, engines) | measured peak per site MB |",
              "|---|---|---|---|---|---|---|"]
    for job, b in breakdown.items():
        peak = max((r["peak_rss_mb_site_max"] for r in rows if r["job"] == job), default=0.0)
        rest = peak - b["model_optimiser_mb"] - b["data_cache_mb"] - idle_mb
        lines.append(f"| {job} | {b['parameters']:,} | {b['model_optimiser_mb']:.1f} | {b['data_cache_mb']:.2f} | "
                     f"{idle_mb:.0f} | {rest:.0f} | {peak:.0f} |")
    lines.append("")
    for job, v in verdict.items():
        lin = {True: "yes", False: "NO", None: "not measured (one point)"}[v["no_worse_than_linear"]]
        lines.append(f"- {job}: {v['largest_sites']} sites peak {v['peak_total_gb']:.2f} GB in total "
                     f"({'fits' if v['fits_24gb'] else 'does NOT fit'} in {GOAL_MEMORY_GB:.0f} GB); time per round "
                     f"no worse than linear once sites >= cores: {lin} (s/round/site "
                     f"{', '.join(f'{x:.2f}' for x in v['seconds_per_round_per_site_from_cores_on'])})")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for job in sorted({r["job"] for r in rows}):
        mine = sorted((r for r in rows if r["job"] == job), key=lambda r: r["sites"])
        x = [r["sites"] for r in mine]
        a.plot(x, [r["steady_round_seconds"] for r in mine], "o-", label=job)
        b.plot(x, [r["peak_rss_mb_total"] / 1024 for r in mine], "o-", label=f"{job} total")
        b.plot(x, [r["peak_rss_mb_site_max"] / 1024 for r in mine], "x--", label=f"{job} per site (max)")
    for ax, title in ((a, "wall time per round (s)"), (b, "peak RSS (GB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("simulated sites")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"simulator scale on {os.cpu_count()} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, nargs="+", default=None, help="site counts to run (default: 1 2 4 8 16)")
    p.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    p.add_argument("--rounds", type=int, default=3, help="rounds per run (>= 2: the first includes start-up)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds one run may take")
    p.add_argument("--job-arg", action="append", default=[], metavar="ARG",
                   help="extra option for every job script, e.g. --job-arg=--sim-workers=16 (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="1 and 2 sites (unless --sites says), prostate2d only, 2 rounds (smoke run)")
    p.add_argument("--out", default=str(ROOT / "results" / "scale"))
    a = p.parse_args(argv)
    if a.quick:
        a.sites, a.jobs, a.rounds = a.sites or [1, 2], ["prostate2d"], 2
    a.sites = a.sites or [1, 2, 4, 8, 16]
    if a.rounds < 1 or min(a.sites) < 1:
        p.error("--rounds and --sites must be >= 1")
    out = Path(a.out)
    work = out / "work"
    if work.exists():  # replaced only if an earlier sweep made it (--out may name a folder of the user's)
        if read_owner(work) != OWNER:
            p.error(f"{work} exists and was not made by benchmarks.scale; choose another --out")
        shutil.rmtree(work)
    own_folder(work, OWNER)
    load_start = [round(x, 2) for x in os.getloadavg()]
    rows, breakdown, idle, cores = [], {}, idle_client_mb(), os.cpu_count() or 1

    def save(complete: bool) -> None:
        """The outputs of the runs so far (after every run: an interrupted sweep keeps what it measured)."""
        verdict = verdicts(rows, cores)
        settings = {"sites": a.sites, "jobs": a.jobs, "rounds": a.rounds, "job_args": a.job_arg, "cpu_cores": cores,
                    "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
                    "complete": complete,
                    "command": "python -m benchmarks.scale " + " ".join(argv if argv is not None else sys.argv[1:])}
        results = {"settings": settings, "runs": rows, "memory_per_site": breakdown, "idle_client_mb": idle,
                   "verdict": verdict, "machine": machine()}
        table = markdown(rows, breakdown, idle, verdict, settings)
        plot(rows, out / "scale.png")
        if complete:
            write_report(results, out / "scale.json", table, markdown=out / "scale.md")
        else:
            atomic_write_json(out / "scale.json", results)
            (out / "scale.md").write_text(table + "\n")

    for job in a.jobs:
        data_root, lists = prepare(job, work / job, max(a.sites))
        breakdown[job] = site_breakdown(job, data_root, lists)
        for n in sorted(a.sites):
            print(f">> {job}: {n} sites x {a.rounds} rounds (load {os.getloadavg()[0]:.2f})", flush=True)
            row = run_one(job, n, data_root, lists, work / job, a.rounds, a.job_arg, a.timeout)
            rows.append(row)
            print(f"   {row['steady_round_seconds']:.1f} s/round, {row['sim_workers']} x {row['threads_per_site']}"
                  f" threads, peak RSS {row['peak_rss_mb_total']:.0f} MB total, "
                  f"{row['peak_rss_mb_site_max']:.0f} MB per site", flush=True)
            save(complete=False)
    save(complete=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
