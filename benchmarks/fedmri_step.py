"""FedMRI per-step cost on CPU: U-Net train step vs the weighted contrastive regulariser, measured in one run.

Measures, at the paper's size (320x320, batch 8, fastMRI U-Net 32 channels / 4 pools, RMSprop, MSE):

- ``unet_step``: one plain local step (forward, MSE, backward, optimiser step);
- ``regulariser_all``: forward + backward of L_con alone with N sites (exact form: N negative encoders);
- ``regulariser_linear``: the same with the linearised variant (server summary instead of N snapshots);
- ``server_summary``: the server's cost of :func:`summarize_negatives` for one round;
- ``fedmri_step``: one full FedMRI step, ``MSE + beta * L_con`` (exact form), forward to optimiser step;
- communication per client and round: bytes of the encoder upload and of the download for FedAvg-of-encoders,
  the exact FedMRI form (global + N snapshots) and the linear variant (global + int8 sign counts + a scalar).

Every time is the median of ``--repeats`` runs after one warm-up, the measurements interleaved round-robin; each
ratio is the median over repeats of the same-repeat ratio, so load drift on a shared machine cancels as far as
possible and ratios are comparable across machines even where absolute seconds are not. Results go to ``--out``
(JSON) and stdout (markdown). ``--quick`` runs a tiny configuration as a smoke test.

Usage::

    python benchmarks/fedmri_step.py            # paper size, ~2-4 min on one loaded CPU thread
    python benchmarks/fedmri_step.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import interleaved_seconds, write_report  # noqa: E402
from src.losses.weighted_contrastive import summarize_negatives, weighted_contrastive_loss  # noqa: E402
from src.models.fastmri_unet import FastMRIUNet, encoder_decoder_keys  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "fedmri_step.json"
BETA = 100.0  # FedMRI's weight of L_con


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=320, help="image side (paper: 320)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (paper: 8)")
    parser.add_argument("--channels", type=int, default=32, help="U-Net base channels (paper: 32)")
    parser.add_argument("--sites", type=int, default=4, help="number of sites = negatives (paper: 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared machine)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 32x32, batch 2, 8 channels, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.channels, args.repeats = 32, 2, 8, 1
    for name in ("size", "batch", "channels", "sites", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)!r}")
    return args


def _interleaved_seconds(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Time every function ``repeats`` times, round-robin, after one warm-up each.

    Interleaving makes each repeat's measurements see the same machine load, so the per-repeat ratios stay
    meaningful on a shared machine even when absolute times drift.
    """
    return interleaved_seconds(fns, repeats, warmup=1)


def _perturbed(state: dict[str, torch.Tensor], scale: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: v + scale * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def run(args: argparse.Namespace) -> dict:
    """Run every measurement and return the result record (also what is written as JSON)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = FastMRIUNet(1, 1, channels=args.channels, num_pools=4)
    encoder_keys, _ = encoder_decoder_keys(model)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 1, args.size, args.size, generator=generator)
    y = torch.randn(args.batch, 1, args.size, args.size, generator=generator)

    params = dict(model.named_parameters())
    encoder = {k: params[k].detach().clone() for k in encoder_keys}
    positive = _perturbed(encoder, 1e-3, generator)
    negatives = [_perturbed(encoder, 1e-3, generator) for _ in range(args.sites)]
    summary = summarize_negatives(positive, negatives, keys=encoder_keys)
    local = {k: params[k] for k in encoder_keys}

    def unet_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()

    def regulariser_all() -> None:
        model.zero_grad(set_to_none=True)
        weighted_contrastive_loss(local, positive, negatives, keys=encoder_keys).backward()

    def regulariser_linear() -> None:
        model.zero_grad(set_to_none=True)
        weighted_contrastive_loss(local, positive, summary, keys=encoder_keys, negative_mode="linear").backward()

    def server_summary() -> None:
        summarize_negatives(positive, negatives, keys=encoder_keys)

    def fedmri_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss = loss + BETA * weighted_contrastive_loss(local, positive, negatives, keys=encoder_keys)
        loss.backward()
        optimizer.step()

    times = _interleaved_seconds(
        {
            "unet_step": unet_step,
            "regulariser_all": regulariser_all,
            "regulariser_linear": regulariser_linear,
            "server_summary": server_summary,
            "fedmri_step": fedmri_step,
        },
        args.repeats,
    )
    seconds = {name: statistics.median(values) for name, values in times.items()}

    def paired_ratio(name: str) -> float:  # median over repeats of the same-repeat ratio to the U-Net step
        return statistics.median(t / u for t, u in zip(times[name], times["unet_step"]))

    state = model.state_dict()
    encoder_bytes = sum(state[k].numel() * state[k].element_size() for k in encoder_keys)
    total_bytes = sum(v.numel() * v.element_size() for v in state.values())
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
            "note": "shared, loaded machine: compare ratios, not absolute seconds",
        },
        "parameters": {
            "total": sum(p.numel() for p in model.parameters()),
            "encoder": sum(state[k].numel() for k in encoder_keys),
        },
        "seconds": seconds,
        "seconds_per_repeat": times,
        "ratios": {
            "regulariser_all_vs_unet_step": paired_ratio("regulariser_all"),
            "regulariser_linear_vs_unet_step": paired_ratio("regulariser_linear"),
            "server_summary_vs_unet_step": paired_ratio("server_summary"),
            "fedmri_step_vs_unet_step": paired_ratio("fedmri_step"),
        },
        "communication_bytes_per_client_round": {
            "upload_encoder": encoder_bytes,
            "download_fedavg_encoder": encoder_bytes,
            "download_fedmri_all": encoder_bytes * (1 + args.sites),
            "download_fedmri_linear": encoder_bytes + summary.nbytes(),
            "full_model_for_reference": total_bytes,
        },
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def markdown_table(result: dict) -> str:
    """The result as a markdown table (what the docs quote)."""
    cfg, s, r = result["config"], result["seconds"], result["ratios"]
    comm = result["communication_bytes_per_client_round"]
    mib = 1024**2
    lines = [
        f"FedMRI step, {cfg['size']}x{cfg['size']}, batch {cfg['batch']}, {cfg['channels']} channels, "
        f"{cfg['sites']} sites, {result['environment']['threads']} thread(s), median of {cfg['repeats']} interleaved "
        "repeats; ratios are medians of same-repeat ratios",
        "",
        "| measurement | seconds | ratio to U-Net step |",
        "|---|---:|---:|",
        f"| U-Net train step (MSE, RMSprop) | {s['unet_step']:.4f} | 1.000 |",
        f"| L_con forward+backward, exact ({cfg['sites']} negatives) | {s['regulariser_all']:.4f} "
        f"| {r['regulariser_all_vs_unet_step']:.4f} |",
        f"| L_con forward+backward, linear variant | {s['regulariser_linear']:.4f} "
        f"| {r['regulariser_linear_vs_unet_step']:.4f} |",
        f"| server: summarize_negatives (linear variant, per round) | {s['server_summary']:.4f} "
        f"| {r['server_summary_vs_unet_step']:.4f} |",
        f"| full FedMRI step (MSE + 100 L_con) | {s['fedmri_step']:.4f} | {r['fedmri_step_vs_unet_step']:.4f} |",
        "",
        "| payload per client and round | MiB |",
        "|---|---:|",
        f"| upload (encoder) | {comm['upload_encoder'] / mib:.2f} |",
        f"| download, encoder average only | {comm['download_fedavg_encoder'] / mib:.2f} |",
        f"| download, FedMRI exact (global + {cfg['sites']} snapshots) | {comm['download_fedmri_all'] / mib:.2f} |",
        f"| download, FedMRI linear variant (global + int8 signs) | {comm['download_fedmri_linear'] / mib:.2f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    result = run(args)
    write_report(result, args.out, markdown_table(result))
    return result


if __name__ == "__main__":
    main()
