"""Per-step CPU cost of a FedICRA training step, with the tree energy and gated CRF losses as ratios to the rest.

Measured in one run on synthetic data (fundus-like 3-channel images with smooth blobs, 3 classes, ~5 % scribble
pixels): the full step (forward, pCE + tree energy + 0.1 gated CRF + site-contrastive, backward, AdamW) and, on
detached copies of the network outputs, each loss's forward + backward alone. ``rest = full - loss`` for each loss.
Peak extra memory of the gated CRF (ours vs a reference-style unfold) is the growth of the resident set's
high-water mark during its forward + backward (Linux ``/proc/self/clear_refs``), each in a fresh child process.

Usage:
    python benchmarks/fedicra_step.py            # 256 x 256, batch 4 (the paper's size)
    python benchmarks/fedicra_step.py --quick    # tiny smoke run
Writes ``benchmarks/results/fedicra_step.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks._report import median_seconds, write_report  # noqa: E402
from src.losses.gated_crf import gated_crf_loss  # noqa: E402
from src.losses.partial_ce import partial_cross_entropy  # noqa: E402
from src.losses.site_contrastive import site_contrastive_loss  # noqa: E402
from src.losses.tree_energy import multiscale_tree_energy_loss  # noqa: E402
from src.losses.tree_filter import build_grid_mst, tree_edge_weights, tree_filter  # noqa: E402
from src.models.unet_multihead import UNetLCMultiHead  # noqa: E402

GOAL_TREE_RATIO = 1.5
GOAL_CRF_RATIO = 0.5


def synthetic_batch(batch: int, size: int, channels: int, classes: int, seed: int = 0):
    """Smooth blob images in [0, 1] and sparse labels (ignore index = classes) covering ~5 % of pixels."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    images, labels = [], []
    for _ in range(batch):
        cy, cx = (torch.rand(2, generator=g) - 0.5) * 0.4
        r = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        dense = (r < 0.5).long() + (r < 0.25).long()
        dense = dense.clamp(max=classes - 1)
        base = torch.stack([0.3 + 0.2 * c + 0.15 * dense.float() for c in range(channels)])
        images.append((base + 0.05 * torch.randn(channels, size, size, generator=g)).clamp(0, 1))
        label = torch.full((size, size), classes)
        keep = torch.rand(size, size, generator=g) < 0.05
        label[keep] = dense[keep]
        labels.append(label)
    return torch.stack(images), torch.stack(labels)


def fedicra_step(model, optimizer, image, label, site, classes):
    out = model(image)
    loss_ce = partial_cross_entropy(out.logits, label, classes)
    loss_tree = multiscale_tree_energy_loss(out.logits, image, out.aux_logits, label == classes)
    loss_crf = gated_crf_loss(torch.softmax(out.logits, 1), image)
    loss_lc = site_contrastive_loss(model.channel_selection, out.bottleneck, out.gate, site)
    loss = loss_ce + loss_tree + 0.1 * loss_crf + loss_lc
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _unfold_gated_crf(probs, image, radius=5, sigma_xy=6.0, sigma_rgb=0.1):
    """Reference-style formulation (unfold everything); only for the memory/time comparison."""
    b, c, h, w = probs.shape
    d = 2 * radius + 1
    ys, xs = torch.meshgrid(torch.arange(h, dtype=probs.dtype), torch.arange(w, dtype=probs.dtype), indexing="ij")
    feats = torch.cat([torch.stack([xs, ys]).expand(b, 2, h, w) / sigma_xy, image / sigma_rgb], 1)
    uf = F.unfold(feats, d, padding=radius).view(b, feats.shape[1], d * d, h, w)
    kern = (-0.5 * (uf - feats.unsqueeze(2)) ** 2).sum(1, keepdim=True).exp()
    kern[:, :, d * d // 2] = 0
    up = F.unfold(probs, d, padding=radius).view(b, c, d * d, h, w)
    return (kern.sum() - ((kern * up).sum(2) * probs).sum()) / (b * h * w)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def crf_peak_memory_mib(fn, probs: torch.Tensor, image: torch.Tensor) -> float | None:
    """Growth of the resident set's high-water mark (VmHWM, reset through /proc/self/clear_refs) during fwd+bwd.

    Returns None where the kernel does not allow resetting the peak (non-Linux, old kernels).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
    except OSError:
        return None
    fn(probs, image).backward()
    return (_status_kib("VmHWM") - before) / 1024.0


def _crf_memory_child(kind: str, batch: int, size: int, classes: int, channels: int, queue) -> None:
    torch.set_num_threads(1)
    image, _ = synthetic_batch(batch, size, channels, classes)
    probs = torch.softmax(torch.randn(batch, classes, size, size), 1).requires_grad_(True)
    queue.put(crf_peak_memory_mib(gated_crf_loss if kind == "offset_loop" else _unfold_gated_crf, probs, image))


def crf_peak_memory_in_child(kind: str, batch: int, size: int, classes: int, channels: int) -> float | None:
    """Run :func:`crf_peak_memory_mib` in a fresh process, so no freed heap of earlier work hides allocations."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_crf_memory_child, args=(kind, batch, size, classes, channels, queue))
    proc.start()
    try:
        return queue.get(timeout=600)
    finally:
        proc.join(timeout=60)


def run(size: int, batch: int, repeats: int, threads: int, channels: int, classes: int, sites: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(2022)
    site = 0
    model = UNetLCMultiHead(channels, classes, num_sites=sites, site_index=site).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
    image, label = synthetic_batch(batch, size, channels, classes)
    unlabeled = label == classes

    fedicra_step(model, optimizer, image, label, site, classes)  # warm-up (numba JIT, allocator)
    full = median_seconds(lambda: fedicra_step(model, optimizer, image, label, site, classes), repeats)

    with torch.no_grad():
        out = model(image)
    logits = out.logits.detach().requires_grad_(True)
    aux = [a.detach().requires_grad_(True) for a in out.aux_logits]

    def tree_fb():
        multiscale_tree_energy_loss(logits, image, aux, unlabeled).backward()

    def crf_fb():
        gated_crf_loss(torch.softmax(logits, 1), image).backward()

    def forward_only():
        model(image)

    tree = median_seconds(tree_fb, repeats)
    crf = median_seconds(crf_fb, repeats)
    fwd = median_seconds(forward_only, repeats)

    # where the tree loss time goes: MSTs (1 image tree + 3 aux trees) vs the filter passes
    guide3 = image if channels == 3 else image.repeat(1, 3, 1, 1)
    aux_up = [F.interpolate(a.detach(), size=(size, size), mode="bilinear", align_corners=False) for a in aux]
    mst = median_seconds(lambda: [build_grid_mst(g) for g in [guide3, *aux_up]], repeats)
    trees = [build_grid_mst(g) for g in [guide3, *aux_up]]
    probs = torch.softmax(logits.detach(), 1).requires_grad_(True)

    def filters_fb():
        y = probs
        for k, (g, t) in enumerate(zip([guide3, *aux_up], trees)):
            y = tree_filter(y, tree_edge_weights(g, t, 0.02 if k == 0 else 1.0), t)
        y.sum().backward()

    filt = median_seconds(filters_fb, repeats)
    crf_unfold = median_seconds(lambda: _unfold_gated_crf(torch.softmax(logits, 1), image).backward(), repeats)

    mem_ours = crf_peak_memory_in_child("offset_loop", batch, size, classes, channels)
    mem_unfold = crf_peak_memory_in_child("unfold", batch, size, classes, channels)

    result = {
        "config": {
            "size": size, "batch": batch, "channels": channels, "classes": classes, "sites": sites,
            "repeats": repeats, "torch_threads": threads, "torch": torch.__version__,
            "python": platform.python_version(),
            "note": "median of repeats; shared, loaded 2-core machine",
        },
        "seconds": {
            "full_step": full, "model_forward": fwd, "tree_energy_fwd_bwd": tree, "gated_crf_fwd_bwd": crf,
            "gated_crf_unfold_reference_fwd_bwd": crf_unfold, "tree_msts_4": mst, "tree_filters_4_fwd_bwd": filt,
        },
        "ratios": {
            "tree_vs_rest": tree / max(full - tree, 1e-9), "tree_goal": GOAL_TREE_RATIO,
            "crf_vs_rest": crf / max(full - crf, 1e-9), "crf_goal": GOAL_CRF_RATIO,
        },
        "gated_crf_peak_extra_mib": {"offset_loop": mem_ours, "unfold_reference": mem_unfold},
    }
    return result


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def markdown(result: dict) -> str:
    s, r, m, c = result["seconds"], result["ratios"], result["gated_crf_peak_extra_mib"], result["config"]
    rows = [
        "| quantity | value |",
        "|---|---|",
        f"| setting | {c['size']}x{c['size']}, batch {c['batch']}, {c['channels']} ch, {c['classes']} classes, "
        f"{c['torch_threads']} thread(s) |",
        f"| full step (s) | {s['full_step']:.3f} |",
        f"| model forward (s) | {s['model_forward']:.3f} |",
        f"| tree energy fwd+bwd (s) | {s['tree_energy_fwd_bwd']:.3f} |",
        f"| - of which 4 MSTs (s) | {s['tree_msts_4']:.3f} |",
        f"| - of which 4 filters fwd+bwd (s) | {s['tree_filters_4_fwd_bwd']:.3f} |",
        f"| tree / rest of step (goal <= {r['tree_goal']}) | {r['tree_vs_rest']:.3f} |",
        f"| gated CRF fwd+bwd (s) | {s['gated_crf_fwd_bwd']:.3f} |",
        f"| gated CRF, unfold formulation (s) | {s['gated_crf_unfold_reference_fwd_bwd']:.3f} |",
        f"| gated CRF / rest of step (goal <= {r['crf_goal']}) | {r['crf_vs_rest']:.3f} |",
        f"| gated CRF peak extra memory, ours (MiB) | {_fmt(m['offset_loop'])} |",
        f"| gated CRF peak extra memory, unfold (MiB) | {_fmt(m['unfold_reference'])} |",
    ]
    return "\n".join(rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (64x64, batch 2, 1 repeat)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps timings comparable)")
    parser.add_argument("--channels", type=int, default=3, help="3 = fundus-like, 1 = FAZ-like")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "fedicra_step.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.repeats = 64, 2, 1
    result = run(args.size, args.batch, args.repeats, args.threads, args.channels, args.classes, args.sites)
    write_report(result, args.out, markdown(result))
    return result


if __name__ == "__main__":
    main()
