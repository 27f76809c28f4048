"""Bytes on the wire and Dice with NVFlare's model quantization: none / float16 / adaquant side by side, one run.

    python -m benchmarks.quantization --out results/quantization              # synthetic data made if missing
    python -m benchmarks.quantization --quick                                 # 2 sites, 1 round (a smoke run)

One command runs the prostate FedAvg job (``jobs/prostate_fedavg.py``, 3-D UNet 4.76 MB) in the NVFlare simulator
once per method and seed, with ``--quantize <method>`` on the same data, the same seed and so the same initial
model; nothing else differs. Per round and site, the server's :class:`~src.comm.wire.WireBytes` filter counts the
bytes of the ``train`` task (server -> site) and of the site's result (site -> server) as NVFlare's FOBS
serialisation of each message (transport framing and TCP/TLS not included, see :mod:`src.comm.wire`). Dice is
the sites' ``val_dice`` of the global model they received in the last round (mean over their validation volumes,
as each site reports it), so quantization's effect on both directions is in it. The ratios against ``none`` are
of bytes measured in the same invocation. CPU types only: ``blockwise8``/``float4``/``normfloat4`` need CUDA
(``--methods`` takes them where one is present).

Writes ``quantization.csv`` (rows per site, method, seed, metric; :func:`benchmarks.stats.write_comparison`),
``quantization.json`` + ``.md`` (per method: bytes per round each way, ratio to none, Dice, wall time) and
``quantization.png``. Synthetic data: shows the trade-off, not clinical performance.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

NAME = "quantization"
METHODS = ("none", "float16", "adaquant")
METRICS = ("val_dice", "bytes_server_to_site_per_round", "bytes_site_to_server_per_round")
#: CSV metric names (``dice``: the name ``benchmarks.report`` plots) and what each is
CSV_METRICS = {"val_dice": "dice", "bytes_server_to_site_per_round": "bytes_server_to_site",
               "bytes_site_to_server_per_round": "bytes_site_to_server"}
CSV_METRIC_NOTES = {"dice": "val_dice the site reports for the global model it received in the last round",
                    "bytes_server_to_site": "bytes per round of the train task, NVFlare FOBS serialisation, measured",
                    "bytes_site_to_server": "bytes per round of the site's result, NVFlare FOBS serialisation, "
                                            "measured"}


def job_args(opts, data: Path, datalists: Path, workspace: Path, method: str, seed: int):
    from jobs.prostate_fedavg import parse_args

    return parse_args(["--n-clients", str(opts.sites), "--num-rounds", str(opts.rounds),
                       "--local-epochs", str(opts.epochs), "--tracking", "none", "--no-cross-site-eval",
                       "--seed", str(seed), "--quantize", method, "--data-root", str(data),
                       "--datalist-dir", str(datalists), "--workspace", str(workspace),
                       "--name", f"quantize_{method}", "--run-id", f"seed{seed}", "--overwrite"])


def run_one(opts, data, datalists, out: Path, method: str, seed: int) -> dict:
    """One simulator run; per site: last-round val_dice and mean bytes per round each way."""
    from jobs.common import execute
    from jobs.prostate_fedavg import build_recipe
    from src.reporting.summary import report

    args = job_args(opts, data, datalists, out / "ws", method, seed)
    start = time.monotonic()
    summary = report(execute(build_recipe(args), args), "val_dice", quiet=True, publish=False)
    seconds = time.monotonic() - start
    wire = summary["wire_bytes"]
    if not wire:
        raise RuntimeError(f"{method} seed {seed}: the run counted no bytes (no {Path('metrics/wire_bytes.jsonl')})")
    sites = {}
    for site, dirs in wire.items():
        sites[site] = {"val_dice": float(summary["rounds"][site]["val_dice"][-1]),
                       "bytes_server_to_site_per_round": float(np.mean(dirs["task"])),
                       "bytes_site_to_server_per_round": float(np.mean(dirs["result"])),
                       "bytes_per_round_each_round": {"task": dirs["task"], "result": dirs["result"]}}
    print(f"{method:9s} seed {seed}: Dice {np.mean([s['val_dice'] for s in sites.values()]):.4f}  "
          f"down {np.mean([s['bytes_server_to_site_per_round'] for s in sites.values()]):,.0f} B/site/round  "
          f"up {np.mean([s['bytes_site_to_server_per_round'] for s in sites.values()]):,.0f} B/site/round  "
          f"({seconds:.0f} s)", flush=True)
    return {"sites": sites, "seconds": seconds}


def aggregate(runs: dict) -> dict:
    """Per method: mean over sites and seeds of each metric, its std over seeds, and the byte ratios to none."""
    table = {}
    for method, per_seed in runs.items():
        row = {}
        for m in METRICS:
            per_seed_means = [np.mean([s[m] for s in r["sites"].values()]) for r in per_seed.values()]
            row[m] = float(np.mean(per_seed_means))
            row[f"{m}_std"] = float(np.std(per_seed_means, ddof=1)) if len(per_seed_means) > 1 else 0.0
        row["n_seeds"] = len(per_seed)
        row["seconds"] = float(np.mean([r["seconds"] for r in per_seed.values()]))
        table[method] = row
    if "none" in table:
        for row in table.values():
            for d in ("server_to_site", "site_to_server"):
                row[f"ratio_{d}_vs_none"] = row[f"bytes_{d}_per_round"] / table["none"][f"bytes_{d}_per_round"]
    return table


def csv_rows(runs: dict) -> list[dict]:
    rows = []
    for method, per_seed in runs.items():
        for seed, r in per_seed.items():
            for site, values in r["sites"].items():
                rows += [{"algorithm": "fedavg", "setting": "prostate3d-quantize", "site": site, "method": method,
                          "seed": seed, "metric": CSV_METRICS[m], "case": "all", "value": values[m]}
                         for m in METRICS]
    return rows


def markdown(table: dict, meta: dict) -> str:
    lines = [f"# Model quantization on the wire: prostate FedAvg, {meta['sites']} sites, {meta['rounds']} rounds x "
             f"{meta['local_epochs']} epochs, seeds {meta['seeds']}", "",
             f"{meta['data']}; bytes: NVFlare's FOBS serialisation of each train-task message as the server sent or "
             "received it (transport framing, TCP/TLS not included), mean per site and round; ratios against none "
             f"measured in the same run. Machine: {_machine(meta['machine'])}; "
             f"wall {meta.get('wall_seconds', 0):.0f} s for the whole invocation.", "",
             "| method | server->site bytes/round | ratio | site->server bytes/round | ratio | val_dice (last round) "
             "| wall s/run |", "|---|---|---|---|---|---|---|"]
    for method, r in table.items():
        dice = f"{r['val_dice']:.4f}" + (f" +/- {r['val_dice_std']:.4f}" if r["n_seeds"] > 1 else "")
        lines.append(f"| {method} | {r['bytes_server_to_site_per_round']:,.0f} | "
                     f"{r.get('ratio_server_to_site_vs_none', float('nan')):.3f} | "
                     f"{r['bytes_site_to_server_per_round']:,.0f} | "
                     f"{r.get('ratio_site_to_server_vs_none', float('nan')):.3f} | {dice} | {r['seconds']:.0f} |")
    lines += ["", f"n = {meta['n_seeds']} seed(s), Dice over {meta['sites']} sites' validation volumes; with one "
              "seed, Dice differences of a few points are within run-to-run noise."]
    return "\n".join(lines) + "\n"


def _machine(info: dict) -> str:
    if not info:
        return "not recorded"
    return (f"{info.get('cpu_count')} CPU cores, 1-min load average {info.get('load_average_1m', float('nan')):.1f} "
            f"at the end, torch {info.get('torch', '?')}")


def plot(table: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(table)
    x = np.arange(len(methods))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for i, (d, label) in enumerate((("server_to_site", "server -> site"), ("site_to_server", "site -> server"))):
        ax1.bar(x + (i - 0.5) * 0.38, [table[m][f"bytes_{d}_per_round"] / 1e6 for m in methods], 0.38, label=label)
    ax1.set_xticks(x, methods)
    ax1.set_ylabel("MB per site and round")
    ax1.legend()
    ax1.set_title("bytes on the wire")
    ax2.bar(x, [table[m]["val_dice"] for m in methods], 0.5,
            yerr=[table[m]["val_dice_std"] for m in methods], color="tab:green")
    ax2.set_xticks(x, methods)
    ax2.set_ylabel("val_dice, last round")
    ax2.set_title("Dice")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(opts) -> dict:
    from benchmarks._report import machine, write_report
    from benchmarks.privacy_filters import ensure_data
    from benchmarks.stats import write_comparison
    from src.comm.options import check_quantize

    for m in opts.methods:
        check_quantize(m)
    out = Path(opts.out).resolve()
    data, datalists = ensure_data(out, opts.data_seed)  # 18 synthetic cases, 3 scanners = 3 sites
    start = time.monotonic()
    runs: dict = {m: {} for m in opts.methods}
    for seed in opts.seeds:
        for method in opts.methods:  # methods interleaved per seed: load changes hit every method alike
            runs[method][seed] = run_one(opts, data, datalists, out, method, seed)
    table = aggregate(runs)
    meta = {"sites": opts.sites, "rounds": opts.rounds, "local_epochs": opts.epochs, "seeds": list(opts.seeds),
            "n_seeds": len(opts.seeds), "data": "synthetic MSD prostate (18 cases, 3 scanners)",
            "model": "MONAI 3-D UNet channels (16, 32, 64, 128), 4,756,412 bytes float32/int64",
            "wall_seconds": round(time.monotonic() - start, 1), "machine": machine(),
            "command": "python -m benchmarks.quantization " + " ".join(opts.argv)}
    write_comparison(out, NAME, csv_rows(runs),
                     {"algorithm": "fedavg", "title": "NVFlare model quantization: bytes on the wire and Dice",
                      "synthetic": True, "settings": meta, "metrics": CSV_METRIC_NOTES})
    plot(table, out / f"{NAME}.png")
    write_report({"settings": meta, "methods": table, "runs": runs}, out / f"{NAME}.json", markdown(table, meta),
                 out / f"{NAME}.md")
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "results" / NAME))
    p.add_argument("--methods", nargs="+", default=list(METHODS), help="--quantize values; none is the baseline")
    p.add_argument("--sites", type=int, default=3, choices=(1, 2, 3))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="2 sites, 1 round x 1 epoch (a smoke run, not a result)")
    opts = p.parse_args(argv)
    opts.argv = list(argv if argv is not None else sys.argv[1:])
    if opts.quick:
        opts.sites, opts.rounds, opts.epochs = 2, 1, 1
    if "none" not in opts.methods:
        p.error("--methods must include none (the baseline of the ratios)")
    run(opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
