"""Per-pass trace of IOP-FL test-time routing on the held-out site: what changes, pass by pass, and why Dice moves.

    python -m benchmarks.iopfl_routing_trace --out results/iopfl_routing_trace      # small synthetic setting

Trains the federated models once in process (the comparison's :func:`benchmarks.iopfl_compare.run_federated`,
FedAvg global + IOP-FL personalised experts), then scores on the held-out site's stream (3-D foreground Dice):

* ``global``: the global model, eval mode (running BatchNorm statistics);
* ``bn_adapt``: the global model with the target batch's BatchNorm statistics (what routing normalises with);
* ``routed, no update``: the routing model before any step (random routers, sigmoid weights), train mode as the
  routing pass predicts, and eval mode (router dropout off);
* ``routed, uniform 1/E``: the routing model with every router's weights forced to 1/E (the experts' average,
  batch statistics): isolates the routers' initial weights from the experts themselves;
* every routing pass: Dice, predicted foreground fraction, the loss parts, the routing weights (mean over layers and
  samples of each expert's weight and of the per-layer sum over experts) and how far BatchNorm's affine
  parameters have moved from the global model's.

Writes ``<out>/iopfl_routing_trace.json`` and ``.md``. The question it answers (docs/iopfl.md): is the drop of
routing below the global model on a site the global model already handles a bug or the reference's behaviour?
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import iopfl_compare as cmp  # noqa: E402
from src.inference.outside import load_stream  # noqa: E402
from src.inference.test_time_routing import (  # noqa: E402
    RoutingConfig,
    copy_with_batch_statistics,
    predict,
    run_test_time_routing,
)
from src.metrics.slice_volume import score_slices  # noqa: E402
from src.models.routed_conv import RoutedConv2d, build_routing_model  # noqa: E402
from src.models.unet2d import UNet2D  # noqa: E402

#: a --quick-like setting where the global model does transfer to the held-out site (4 rounds, not 1)
DEFAULTS = {"rounds": 4, "tta_passes": 5, "features": [4, 8, 16], "n_cases": 4, "n_test": 1, "size": 32,
            "matrix": 64, "seeds": [0]}


@contextmanager
def forced_weights(model, value: float | None):
    """Every routed layer uses the fixed weight ``value`` for each expert (None: its router)."""
    layers = [m for m in model.modules() if isinstance(m, RoutedConv2d)]
    originals = [vars(m).get("forward") for m in layers]  # an instance override already there, else None
    if value is not None:
        for m in layers:
            m.forward = (lambda x, _m=m: RoutedConv2d.forward(
                _m, x, torch.full((x.shape[0], _m.num_experts), value, dtype=x.dtype)))
    try:
        yield
    finally:
        for m, f in zip(layers, originals):
            if f is None:
                vars(m).pop("forward", None)  # back to the class's forward (the router)
            else:
                m.forward = f


def routing_weights(model, images: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Mean over routed layers and samples (router in eval mode) of each expert's weight and of their sum."""
    per_layer = []
    hooks = [m.router.register_forward_hook(lambda _m, _i, out: per_layer.append(out.detach()))
             for m in model.modules() if isinstance(m, RoutedConv2d)]
    try:
        predict(model, images, batch_size, train_mode=False)
    finally:
        for h in hooks:
            h.remove()
    if not per_layer:  # forced weights: no router ran
        return {}
    r = torch.cat(per_layer)  # (layers x samples, E)
    out = {f"r_expert{e}": float(r[:, e].mean()) for e in range(r.shape[1])}
    out["r_sum_mean"], out["r_sum_min"], out["r_sum_max"] = (float(r.sum(1).mean()), float(r.sum(1).min()),
                                                            float(r.sum(1).max()))
    return out


def bn_drift(model, global_state: dict) -> float:
    """Relative L2 distance of all BatchNorm affine parameters from the global model's."""
    num, den = 0.0, 0.0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.affine:
            for p, key in ((module.weight, "weight"), (module.bias, "bias")):
                ref = global_state[f"{name}.{key}"].float()
                num += float(((p.detach() - ref) ** 2).sum())
                den += float((ref**2).sum())
    return (num / max(den, 1e-12)) ** 0.5


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/iopfl_routing_trace")
    p.add_argument("--data-root", default="data/iopfl_routing_trace/multisite_prostate")
    p.add_argument("--datalist-dir", default="datalists/iopfl_routing_trace")
    p.add_argument("--rounds", type=int, default=DEFAULTS["rounds"])
    p.add_argument("--passes", type=int, default=DEFAULTS["tta_passes"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=RoutingConfig.lr, help="routing Adam lr (reference 1e-3)")
    p.add_argument("--features", type=int, nargs="+", default=DEFAULTS["features"])
    p.add_argument("--n-cases", type=int, default=DEFAULTS["n_cases"])
    a = p.parse_args(argv)
    args = cmp.parse_args(["--quick", "--data-root", a.data_root, "--datalist-dir", a.datalist_dir,
                           "--num-rounds", str(a.rounds), "--tta-passes", str(a.passes), "--seeds", str(a.seed),
                           "--out", a.out, "--n-cases", str(a.n_cases), "--features", *map(str, a.features)])
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = cmp.ensure_data(args)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ood = cmp.site_id(args.ood_site)
    sites = [cmp.site_id(s) for s in cmp.RAW_SITES if cmp.site_id(s) != ood]
    cfg_kwargs = {"data_root": str(Path(args.data_root).resolve()), "datalist_dir": str(Path(args.datalist_dir)),
                  "features": tuple(args.features), "seed": a.seed, "num_threads": 1, "tracking": ()}
    torch.manual_seed(a.seed)
    init = cmp._state(UNet2D(features=args.features))
    res = cmp.run_federated("iopfl", sites, cfg_kwargs, args.rounds, init, out / "models", cmp.Tracker(out))
    global_state, personal = res["_states"]["global_best"], res["_states"]["personal_best"]
    target = cmp.load_site_datalist(Path(args.datalist_dir) / f"{ood}.json", args.data_root)
    items = target["training"] + target["validation"] + target["testing"]
    images, labels, cases, slices = load_stream(items)
    rcfg = RoutingConfig(passes=a.passes, seed=a.seed, lr=a.lr)

    def dice(pred) -> float:
        return float(score_slices(pred.cpu().numpy(), labels, cases, slices, prefix="ood")["ood_dice"])

    def fg(pred) -> float:
        return float(pred.float().mean())

    template = UNet2D(features=args.features)
    template.load_state_dict(global_state)
    g = template.eval()
    rows = {"global": {"dice": dice(predict(g, images, rcfg.batch_size)), "fg": fg(predict(g, images, 5))},
            "bn_adapt": {"dice": dice(predict(copy_with_batch_statistics(g), images, 5))}}
    experts = [*personal, global_state]
    routed = build_routing_model(template, experts, global_state)
    torch.manual_seed(a.seed)
    for mode in (True, False):
        pred = predict(routed, images, rcfg.batch_size, train_mode=mode)
        rows[f"routed, no update ({'train' if mode else 'eval'} mode)"] = {"dice": dice(pred), "fg": fg(pred)}
    with forced_weights(routed, 1.0 / len(experts)):
        pred = predict(routed, images, rcfg.batch_size)
        rows["routed, uniform 1/E"] = {"dice": dice(pred), "fg": fg(pred)}
    with forced_weights(routed, 0.5):
        pred = predict(routed, images, rcfg.batch_size)
        rows["routed, every weight 0.5 (the sigmoid's value at 0)"] = {"dice": dice(pred), "fg": fg(pred)}
    start_weights = routing_weights(routed, images, rcfg.batch_size)
    trace = []

    def log(i, parts):
        trace.append({"pass": i + 1, **parts, "bn_drift": bn_drift(routed, global_state),
                      **routing_weights(routed, images, rcfg.batch_size)})

    passes = run_test_time_routing(routed, images, rcfg, log=log)
    for t, pred in zip(trace, passes):
        t["dice"], t["fg"] = dice(pred), fg(pred)
    truth_fg = float((labels > 0).mean())
    result = {"settings": {"rounds": args.rounds, "passes": a.passes, "seed": a.seed, "features": args.features,
                           "size": args.size, "matrix": args.matrix, "ood": ood, "slices": len(items),
                           "volumes": len(set(cases)), "experts": len(experts), "routing": vars(rcfg),
                           "data": data, "wall_seconds": round(time.perf_counter() - start, 1)},
              "label_fg": truth_fg, "reference_points": rows, "weights_before": start_weights, "passes": trace}
    (out / "iopfl_routing_trace.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (out / "iopfl_routing_trace.md").write_text(md)
    print(md)
    return result


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"# IOP-FL routing trace on held-out {s['ood']} ({s['volumes']} volumes, {s['slices']} slices)", "",
             f"{s['rounds']} rounds, U-Net {s['features']}, {s['size']} px, {s['experts']} experts, routing lr "
             f"{s['routing']['lr']}, batch {s['routing']['batch_size']}; label foreground fraction "
             f"{r['label_fg']:.3f}; {s['wall_seconds']} s wall.", "",
             "| model | 3-D Dice | predicted fg fraction |", "|---|---|---|"]
    for name, v in r["reference_points"].items():
        lines.append(f"| {name} | {v['dice']:.3f} | {v.get('fg', float('nan')):.3f} |")
    w = r["weights_before"]
    lines += ["", f"Routing weights before any update: per-layer sum over experts {w['r_sum_mean']:.2f} "
              f"(min {w['r_sum_min']:.2f}, max {w['r_sum_max']:.2f}); a weighted average would sum to 1.", "",
              "| pass | Dice | fg fraction | entropy (bits) | consistency | BN affine drift (rel.) | sum of weights "
              "| weight of the global expert |", "|---|---|---|---|---|---|---|---|"]
    last = f"r_expert{r['settings']['experts'] - 1}"
    for t in r["passes"]:
        lines.append(f"| {t['pass']} | {t['dice']:.3f} | {t['fg']:.3f} | {t['entropy']:.4f} | {t['consistency']:.4f}"
                     f" | {t['bn_drift']:.3f} | {t['r_sum_mean']:.2f} | {t[last]:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
