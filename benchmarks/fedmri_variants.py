"""FedMRI regulariser variants side by side on a tiny synthetic federation (plain PyTorch, no NVFlare).

Four sites, each with its own image size, contrast and fixed sampling mask (the paper's four mask types), train a
fastMRI U-Net whose encoder is averaged uniformly by a "server" and whose decoder stays on the site. Three variants
run from the same seeds:

- ``none``: encoder averaging only (beta = 0; FedPer-style sharing, the ablation without L_con);
- ``all``: FedMRI's exact weighted contrastive regulariser (N negative encoder snapshots downloaded per round);
- ``linear``: the cheaper variant (the server's int8 sign counts + one scalar instead of N snapshots); the
  run also records how far its denominator drifted from the exact one by the end of each local epoch.

Each site's personalised model (global encoder + own decoder) is evaluated after the last round on its own
held-out synthetic volumes with the fastMRI metrics (de-normalised, per volume). The data are random-ellipse
phantoms, not MR images, and the run is tiny, so the numbers compare the variants with each other and say nothing
about the paper's results. Deviation: lr 1e-3 (paper 1e-4) so that a few rounds move the weights.

Usage::

    python benchmarks/fedmri_variants.py            # ~1-3 min on one loaded CPU thread
    python benchmarks/fedmri_variants.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import write_report  # noqa: E402
from src.aggregators.fedmri import linear_negatives, uniform_average  # noqa: E402  (the job's server rules)
from src.losses.weighted_contrastive import (  # noqa: E402
    NegativeSummary,
    contrastive_is_active,
    weighted_contrastive_loss,
)
from src.metrics.reconstruction import METRIC_NAMES, mean_volume_metrics  # noqa: E402
from src.models.fastmri_unet import FastMRIUNet, encoder_decoder_keys  # noqa: E402
from src.protocol import unpack_negatives  # noqa: E402
from src.transforms.kspace import denormalize, make_reconstruction_pair, simulate_kspace  # noqa: E402
from src.transforms.kspace_masks import FEDMRI_SITE_MASKS, site_mask  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "fedmri_variants.json"
VARIANTS = ("none", "all", "linear")
SITE_SIZES = (64, 48, 40, 48)  # the paper's 320 / 240 / 192 / 240, scaled by 1/5
SITE_CONTRAST = (1.0, 0.7, 1.4, 0.5)  # gamma per site: a simple per-site intensity shift


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--local-steps", type=int, default=15, help="minibatches per round (one local epoch)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels", type=int, default=8, help="U-Net base channels (paper: 32)")
    parser.add_argument("--beta", type=float, default=100.0, help="weight of L_con (paper: 100)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="2 rounds x 3 steps, 4 channels")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.local_steps, args.channels = 2, 3, 4
    for name in ("rounds", "local_steps", "batch", "channels", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)!r}")
    return args


def _phantom(size: int, gamma: float, rng: np.random.Generator) -> np.ndarray:
    """A random-ellipse phantom in [0, 1] with a site-specific gamma (a stand-in for an MR slice)."""
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    image = np.zeros((size, size))
    for k in range(int(rng.integers(4, 9))):
        cy, cx = rng.uniform(-0.5, 0.5, size=2) * (0.2 if k == 0 else 1.0)
        ay, ax = rng.uniform(0.6, 0.85, size=2) if k == 0 else rng.uniform(0.05, 0.35, size=2)
        theta = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        image[(u / ax) ** 2 + (v / ay) ** 2 <= 1] += rng.uniform(0.2, 0.6) if k else 0.3
    image = np.clip(image, 0, None)
    return (image / max(image.max(), 1e-8)) ** gamma


def _site_data(index: int, n_train: int, n_val_volumes: int, slices: int, seed: int) -> dict:
    size, gamma = SITE_SIZES[index], SITE_CONTRAST[index]
    rng = np.random.default_rng(seed * 100 + index)
    mask = site_mask(index, (size, size)).double()

    def pairs(n: int):
        images = torch.from_numpy(np.stack([_phantom(size, gamma, rng) for _ in range(n)]))
        return images, make_reconstruction_pair(simulate_kspace(images), mask)

    train_images, train = pairs(n_train)
    val_volumes = [pairs(slices) for _ in range(n_val_volumes)]
    return {"train": train, "val": val_volumes, "size": size}


def _evaluate(model: FastMRIUNet, val_volumes) -> dict[str, float]:
    model.eval()
    volumes = []
    with torch.no_grad():
        for images, pair in val_volumes:
            out = model(pair.input[:, None].float())[:, 0].double()
            volumes.append((images, denormalize(out, pair.mean, pair.std)))
    model.train()
    return mean_volume_metrics(volumes)


def run_variant(variant: str, sites: list[dict], args: argparse.Namespace) -> dict:
    """Train one variant from fixed seeds and return per-site metrics, time and download bytes."""
    torch.manual_seed(0)
    template = FastMRIUNet(1, 1, channels=args.channels, num_pools=3)
    encoder_keys, _ = encoder_decoder_keys(template)
    models = []
    for i in range(len(sites)):
        torch.manual_seed(1 + i)  # personal decoders start different, the encoder from the global one
        model = FastMRIUNet(1, 1, channels=args.channels, num_pools=3)
        models.append(model)
    optimizers = [torch.optim.RMSprop(m.parameters(), lr=args.lr) for m in models]
    global_encoder = {k: v.clone() for k, v in template.state_dict().items() if k in encoder_keys}
    previous_locals: list[dict[str, torch.Tensor]] | None = None
    encoder_bytes = sum(v.numel() * v.element_size() for v in global_encoder.values())
    downloaded = 0
    linear_gaps = []  # relative gap of the linear loss to the exact loss at the end of each local epoch
    diagnostic_seconds = 0.0
    start = time.perf_counter()
    for round_index in range(args.rounds):
        negatives = None
        downloaded += encoder_bytes
        if variant != "none" and previous_locals is not None:
            if variant == "all":
                negatives = previous_locals
                downloaded += encoder_bytes * len(previous_locals)
            else:
                _, packed = unpack_negatives(linear_negatives(global_encoder, previous_locals))
                negatives = NegativeSummary(torch.as_tensor(packed["distance"]).reshape(()),
                                            {k: torch.as_tensor(v) for k, v in packed["sign_sum"].items()},
                                            packed["num_negatives"])
                downloaded += negatives.nbytes()
        locals_now = []
        for site, model, optimizer in zip(sites, models, optimizers):
            model.load_state_dict(global_encoder, strict=False)
            params = dict(model.named_parameters())
            gen = torch.Generator().manual_seed(round_index)
            order = torch.randperm(site["train"].input.shape[0], generator=gen)
            for step in range(args.local_steps):
                idx = order[(step * args.batch) % len(order) :][: args.batch]
                x = site["train"].input[idx, None].float()
                y = site["train"].target[idx, None].float()
                loss = torch.nn.functional.mse_loss(model(x), y)
                if negatives is not None and contrastive_is_active(round_index, step):
                    loss = loss + args.beta * weighted_contrastive_loss(
                        {k: params[k] for k in encoder_keys},
                        global_encoder,
                        negatives,
                        keys=encoder_keys,
                        negative_mode=variant,
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            locals_now.append({k: params[k].detach().clone() for k in encoder_keys})
            if variant == "linear" and negatives is not None:
                diagnostic_start = time.perf_counter()  # excluded from train_seconds
                with torch.no_grad():
                    exact = weighted_contrastive_loss(
                        locals_now[-1], global_encoder, previous_locals, keys=encoder_keys
                    )
                    linear = weighted_contrastive_loss(
                        locals_now[-1], global_encoder, negatives, keys=encoder_keys, negative_mode="linear"
                    )
                linear_gaps.append(float((linear - exact) / exact))
                diagnostic_seconds += time.perf_counter() - diagnostic_start
        # the server's uniform 1/N average of the encoders (src.aggregators.fedmri)
        global_encoder = {k: torch.as_tensor(v) for k, v in uniform_average(locals_now).items()}
        previous_locals = locals_now
    seconds = time.perf_counter() - start - diagnostic_seconds
    per_site = []
    for site, model in zip(sites, models):
        model.load_state_dict(global_encoder, strict=False)  # personalised model: global encoder + own decoder
        per_site.append(_evaluate(model, site["val"]))
    mean = {name: float(np.mean([m[name] for m in per_site])) for name in METRIC_NAMES}
    return {
        "per_site": per_site,
        "mean": mean,
        "train_seconds": seconds,
        "download_bytes_per_client": downloaded,
        "linear_loss_relative_gap_max": max(linear_gaps) if linear_gaps else None,
    }


def markdown_table(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"FedMRI variants, synthetic phantoms, {cfg['rounds']} rounds x {cfg['local_steps']} steps, "
        f"batch {cfg['batch']}, {cfg['channels']} channels, beta {cfg['beta']}",
        "",
        "| variant | "
        + " | ".join(f"site {i} PSNR" for i in range(len(SITE_SIZES)))
        + " | mean PSNR | mean SSIM | mean NMSE | train s | download MiB/client | linear gap (max) |",
        "|---|" + "---:|" * (len(SITE_SIZES) + 6),
    ]
    for variant, r in result["variants"].items():
        sites = " | ".join(f"{m['val_psnr']:.2f}" for m in r["per_site"])
        gap = r["linear_loss_relative_gap_max"]
        lines.append(
            f"| {variant} | {sites} | {r['mean']['val_psnr']:.2f} | {r['mean']['val_ssim']:.4f} "
            f"| {r['mean']['val_nmse']:.4f} | {r['train_seconds']:.1f} | {r['download_bytes_per_client'] / 2**20:.2f} "
            f"| {'-' if gap is None else f'{gap:.2e}'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    sites = [_site_data(i, n_train=32, n_val_volumes=2, slices=4, seed=0) for i in range(len(SITE_SIZES))]
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sites": [
            {"size": s, "gamma": g, "mask": spec.__dict__}
            for s, g, spec in zip(SITE_SIZES, SITE_CONTRAST, FEDMRI_SITE_MASKS)
        ],
        "note": "synthetic random-ellipse phantoms, simulated single-coil k-space; shared, loaded machine",
        "variants": {v: run_variant(v, sites, args) for v in VARIANTS},
    }
    write_report(result, args.out, markdown_table(result))
    return result


if __name__ == "__main__":
    main()
