"""Cost of one cooperative-training step against the standard step of the same networks, on CPU.

The paper reports cooperative training at about 2.5-3x the cost of standard training; the goal here is <= 3x.
Both steps run in the same process, interleaved (standard, cooperative, standard, ...) so that load changes on a
shared machine hit both alike; the ratio is that of the medians. A second, instrumented pass splits the
cooperative step into its phases to show where the time goes.

    python benchmarks/cooptrain_step.py             # 192x192, batch 20 (the reference's 10 + 10 un-augmented)
    python benchmarks/cooptrain_step.py --quick     # tiny smoke run

Writes JSON to benchmarks/results/cooptrain_step.json (or --out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import interleaved_seconds, machine, write_report  # noqa: E402
from src.learners.cooperative_step import (  # noqa: E402
    CooperativeConfig,
    add_input_noise,
    build_optimizer,
    cooperative_step,
    generate_hard_examples,
    hard_example_losses,
    standard_losses,
)
from src.models.cooperative_net import CooperativeNet  # noqa: E402

GOAL_RATIO = 3.0


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192, help="image height and width (multiple of 16)")
    parser.add_argument("--batch", type=int, default=20, help="batch size")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default 2; 1 if --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 32x32, batch 2, 2 repeats, 1 thread")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "cooptrain_step.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.repeats, args.warmup = 32, 2, 2, 1
    if args.threads is None:
        args.threads = 1 if args.quick else 2
    if args.size % 16 or args.size <= 0:
        parser.error(f"--size must be a positive multiple of 16, got {args.size}")
    if args.batch < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--batch, --repeats and --threads must be >= 1")
    return args


def _batch(size: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic slices: bright discs on noise, labels from concentric rings (4 classes)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.rand(batch, 2, generator=g) * size * 0.4 + size * 0.3
    radius = torch.sqrt((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2)
    label = torch.bucketize(radius, torch.tensor([0.08, 0.14, 0.2]) * size, right=True)
    label = (3 - label).clamp(min=0)
    image = (label.float() / 3 + 0.1 * torch.rand(batch, size, size, generator=g)).clamp(0, 1)[:, None]
    return image, label


def _phase_breakdown(model, optimizer, image, label, cfg, generator) -> dict[str, float | str]:
    """Seconds per phase of one cooperative step (same computation as `cooperative_step`), and the schemes."""
    times: dict[str, float | str] = {}
    model.train()
    optimizer.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    noisy = add_input_noise(image, cfg.input_noise_std, cfg.clamp_noisy_input, generator)
    std_terms, z_i, z_s = standard_losses(model, image, noisy, label, cfg)
    t1 = time.perf_counter()
    hard = generate_hard_examples(model, z_i, z_s, image, label, cfg, generator)
    t2 = time.perf_counter()
    hard_terms = hard_example_losses(model, hard, image, label, cfg)
    t3 = time.perf_counter()
    (sum(std_terms.values()) + sum(hard_terms.values())).backward()
    t4 = time.perf_counter()
    optimizer.step()
    t5 = time.perf_counter()
    times["standard forward"] = t1 - t0
    times["hard-example generation"] = t2 - t1
    times["hard-example forward"] = t3 - t2
    times["joint backward"] = t4 - t3
    times["Adam step"] = t5 - t4
    times["schemes"] = f"{hard.image_code_scheme}/{hard.shape_code_scheme}"
    return times


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    image, label = _batch(args.size, args.batch, args.seed)
    model = CooperativeNet()
    optimizer = build_optimizer(model)
    configs = {"standard": CooperativeConfig(latent_da=False), "cooperative": CooperativeConfig(latent_da=True)}
    generator = torch.Generator().manual_seed(args.seed)

    def step(name: str) -> None:
        cooperative_step(model, optimizer, image, label, configs[name], generator)

    seconds = interleaved_seconds({name: lambda name=name: step(name) for name in configs}, args.repeats,
                                  warmup=args.warmup)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    ratio = median["cooperative"] / median["standard"]
    # instrumented cooperative steps, one per repeat; phase medians (the schemes drawn vary between samples)
    samples = [_phase_breakdown(model, optimizer, image, label, configs["cooperative"], generator)
               for _ in range(args.repeats)]
    schemes = [sample.pop("schemes") for sample in samples]
    breakdown = {phase: statistics.median(sample[phase] for sample in samples) for phase in samples[0]}
    return {
        "benchmark": "cooptrain_step",
        "setting": {"size": args.size, "batch": args.batch, "repeats": args.repeats, "warmup": args.warmup,
                    "threads": args.threads, "seed": args.seed, "quick": args.quick},
        "machine": machine(),
        "seconds_per_step": seconds,
        "median_seconds": median,
        "ratio_cooperative_to_standard": ratio,
        "goal_ratio": GOAL_RATIO,
        "meets_goal": ratio <= GOAL_RATIO,
        "cooperative_phase_seconds": breakdown,
        "cooperative_phase_samples": samples,
        "masking_schemes_in_phase_samples": schemes,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def markdown(result: dict) -> str:
    s = result["setting"]
    med = result["median_seconds"]
    lines = [
        f"Cooperative vs standard step, {s['size']}x{s['size']}, batch {s['batch']}, {s['threads']} thread(s), "
        f"median of {s['repeats']} (load avg {result['machine']['load_average_1m']:.1f})",
        "",
        "| step | median s/step | ratio |",
        "|---|---|---|",
        f"| standard | {med['standard']:.3f} | 1.00 |",
        f"| cooperative | {med['cooperative']:.3f} | {result['ratio_cooperative_to_standard']:.2f} "
        f"(goal <= {result['goal_ratio']:.1f}: {'met' if result['meets_goal'] else 'NOT met'}) |",
        "",
        f"| cooperative phase (median of {s['repeats']} instrumented steps) | s | share |",
        "|---|---|---|",
    ]
    total = sum(result["cooperative_phase_seconds"].values())
    for phase, sec in result["cooperative_phase_seconds"].items():
        lines.append(f"| {phase} | {sec:.3f} | {sec / total:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    result = run(args)
    write_report(result, args.out, markdown(result))
    return result


if __name__ == "__main__":
    main()
