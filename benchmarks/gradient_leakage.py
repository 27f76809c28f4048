"""What one site's shared update reveals: a gradient-inversion attack on it, with and without each privacy filter.

    python -m benchmarks.gradient_leakage --out results/gradient_leakage

Setting (the attack-friendly one of DLG, Zhu et al. NeurIPS 2019, and inverting gradients, Geiping et al. NeurIPS
2020): a small 2-D CNN with sigmoid activations on 64x64 MedNIST-style images (our synthetic generator), batch 1,
one local SGD step, so the update is ``-lr * gradient`` of one training image. The site's update passes through the
filter exactly as the NVFlare output filter would process it (``src.privacy.filters.build_filter`` +
``process_dxo``); the attacker (the server, or anyone reading the payload) sees the filtered update, infers the label
from the last layer (iDLG) and optimises a dummy image with L-BFGS so that its gradient matches the filtered update
(divided by the learning rate) in L2, using only the layers that were sent. Scores: PSNR and SSIM of the
reconstruction against the real image; the "no information" reference is a constant grey image.

Multi-step updates, larger batches and ReLU networks leak less; real images are not the synthetic ones: read the
numbers as "what the filters change", measured on synthetic data on CPU.
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
import torch  # noqa: E402
from torch import nn  # noqa: E402

from src.privacy.filters import PrivacySettings  # noqa: E402

SETTINGS = (
    PrivacySettings(),
    PrivacySettings(kind="percentile", percentile=10, gamma=0.01),
    PrivacySettings(kind="percentile", percentile=90, gamma=0.01),
    PrivacySettings(kind="svt"),
    PrivacySettings(kind="exclude", exclude_vars=r"^0\."),  # the first convolution stays on the site
)


def small_cnn(n_classes: int = 6) -> nn.Module:
    """LeNet-like, sigmoid activations, as in DLG (twice-differentiable, easy to invert)."""
    return nn.Sequential(
        nn.Conv2d(1, 12, 5, stride=2, padding=2), nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, stride=2, padding=2), nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, stride=1, padding=2), nn.Sigmoid(),
        nn.Flatten(), nn.Linear(12 * 16 * 16, n_classes),
    )


def images(n: int, seed: int) -> list[tuple[torch.Tensor, int]]:
    """``n`` synthetic MedNIST images (1, 1, 64, 64) in [0, 1] with their class index, one class after another."""
    from data_prep.synthetic.mednist import CLASSES, synth_image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % len(CLASSES)
        img = np.asarray(synth_image(CLASSES[label], rng), np.float32) / 255.0
        out.append((torch.from_numpy(img)[None, None], label))
    return out


def site_update(model: nn.Module, image: torch.Tensor, label: int, lr: float) -> dict[str, np.ndarray]:
    """The weight difference after one SGD step on one image (what the site would send)."""
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    nn.functional.cross_entropy(model(image), torch.tensor([label])).backward()
    opt.step()
    diff = {k: (v.detach() - before[k]).numpy().copy() for k, v in model.state_dict().items()}
    model.load_state_dict(before)
    return diff


def apply_filter(settings: PrivacySettings, diff: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable

    from src.privacy.filters import build_filter

    data = {k: v.copy() for k, v in diff.items()}
    flt = build_filter(settings, list(data))
    if flt is None:
        return data
    dxo = DXO(data_kind=DataKind.WEIGHT_DIFF, data=data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 1})
    return {k: np.asarray(v) for k, v in flt.process_dxo(dxo, Shareable(), FLContext()).data.items()}


def invert(model: nn.Module, shared: dict[str, np.ndarray], lr: float, evaluations: int, seed: int) -> torch.Tensor:
    """DLG: label from the last layer (iDLG), then L-BFGS on a dummy image matching ``-update / lr`` in L2.

    Only the layers that were sent take part; the attacker knows the site's learning rate (it is in the job).
    """
    names = [n for n, _ in model.named_parameters() if n in shared]
    params = [p for n, p in model.named_parameters() if n in shared]
    target = [-torch.from_numpy(np.asarray(shared[n], np.float32)) / lr for n in names]
    last_bias = next((n for n in reversed(names) if n.endswith("bias")), None)
    # iDLG: the true class is the only one with a negative gradient of the output bias (softmax + cross-entropy)
    label = int(np.argmin(-np.asarray(shared[last_bias]))) if last_bias else 0
    y = torch.tensor([label])
    g = torch.Generator().manual_seed(seed)
    dummy = torch.rand((1, 1, 64, 64), generator=g).requires_grad_(True)
    opt = torch.optim.LBFGS([dummy], lr=1, max_iter=evaluations, history_size=100, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        grads = torch.autograd.grad(nn.functional.cross_entropy(model(dummy), y), params, create_graph=True)
        loss = sum(((a - b) ** 2).sum() for a, b in zip(grads, target))
        loss.backward()
        return loss

    opt.step(closure)
    return dummy.detach().clamp(0, 1)


def scores(recon: torch.Tensor, real: torch.Tensor) -> tuple[float, float]:
    from monai.metrics import PSNRMetric, SSIMMetric

    psnr = float(PSNRMetric(max_val=1.0)(recon, real).mean())
    ssim = float(SSIMMetric(spatial_dims=2, data_range=1.0)(recon, real).mean())
    return psnr, ssim


def run(opts) -> list[dict]:
    torch.manual_seed(opts.seed)
    torch.set_num_threads(max(1, opts.threads))
    model = small_cnn()
    data = images(opts.n_images, opts.seed)
    rows = []
    grey = [scores(torch.full_like(img, float(img.mean())), img) for img, _ in data]
    rows.append({"filter": "reference", "parameters": "constant grey image (no information)",
                 "psnr": float(np.mean([p for p, _ in grey])), "ssim": float(np.mean([s for _, s in grey])),
                 "shared_fraction": 0.0, "seconds": 0.0})
    out = Path(opts.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recon_images = {}
    for settings in SETTINGS:
        start = time.monotonic()
        ps, ss, fractions = [], [], []
        for i, (img, label) in enumerate(data):
            diff = site_update(model, img, label, opts.lr)
            shared = {k: v for k, v in apply_filter(settings, diff).items() if k in dict(model.named_parameters())}
            total = sum(v.size for k, v in diff.items() if k in shared or k in dict(model.named_parameters()))
            fractions.append(sum(np.count_nonzero(v) for v in shared.values()) / total)
            recon = invert(model, shared, opts.lr, opts.steps, opts.seed + i)
            p, s = scores(recon, img)
            ps.append(p)
            ss.append(s)
            recon_images[f"{settings.kind}:{settings.describe()}:{i}"] = recon[0, 0].numpy()
        rows.append({"filter": settings.kind, "parameters": settings.describe(), "psnr": float(np.mean(ps)),
                     "ssim": float(np.mean(ss)), "psnr_per_image": ps, "ssim_per_image": ss,
                     "shared_fraction": float(np.mean(fractions)), "seconds": time.monotonic() - start})
        print(f"{settings.kind:10s} {settings.describe():60s} PSNR {np.mean(ps):6.2f} dB  SSIM {np.mean(ss):.3f}  "
              f"non-zero shared {np.mean(fractions):.1%}", flush=True)
    meta = {"n_images": opts.n_images, "steps": opts.steps, "lr": opts.lr, "seed": opts.seed,
            "model": "LeNet-like sigmoid CNN, 64x64x1", "data": "synthetic MedNIST (data_prep.synthetic.mednist)"}
    from benchmarks._report import machine, write_report

    _plot(out / "gradient_leakage.png", data, recon_images)
    write_report({"settings": meta, "machine": machine(), "rows": rows}, out / "gradient_leakage.json",
                 markdown(rows, meta), out / "gradient_leakage.md")
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Gradient inversion of one site update ({meta['model']}, batch 1, one SGD step lr {meta['lr']}), "
             f"L-BFGS, {meta['steps']} evaluations, {meta['n_images']} image(s), {meta['data']}", "",
             "| filter | parameters | PSNR (dB) | SSIM | entries shared (non-zero) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['filter']} | {r['parameters']} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                     f"{r['shared_fraction']:.1%} |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, data, recon_images: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(k.rsplit(":", 1)[0] for k in recon_images))
    fig, axes = plt.subplots(len(data), len(keys) + 1, figsize=(1.6 * (len(keys) + 1), 1.7 * len(data)),
                             squeeze=False)
    for i, (img, _) in enumerate(data):
        axes[i, 0].imshow(img[0, 0], cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title("real" if i == 0 else "", fontsize=7)
        for j, k in enumerate(keys):
            axes[i, j + 1].imshow(recon_images[f"{k}:{i}"], cmap="gray", vmin=0, vmax=1)
            if i == 0:
                axes[i, j + 1].set_title(k.split(":")[0] + "\n" + k.split(":", 1)[1][:22], fontsize=6)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "results" / "gradient_leakage"))
    p.add_argument("--n-images", type=int, default=1)
    p.add_argument("--steps", type=int, default=300, help="L-BFGS function evaluations of the attack")
    p.add_argument("--lr", type=float, default=0.01, help="the site's SGD learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
