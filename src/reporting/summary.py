"""Turn a finished job's result folder into tables, a JSON/markdown summary and a learning-curve plot.

Reads only what NVFlare itself writes on the server (``metrics/round_metrics.jsonl``,
``cross_site_val/cross_val_results.json``, ``tb_events/``, ``mlflow.db``), so it works the same for a
simulator workspace and for a result downloaded from a POC or production deployment.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["find_server_dir", "load_round_metrics", "load_cross_site", "report"]


def find_server_dir(result: str | Path) -> Path:
    """The folder holding the server's run outputs inside a simulator workspace or a downloaded result."""
    result = Path(result)
    for marker in ("metrics/round_metrics.jsonl", "cross_site_val/cross_val_results.json", "tb_events"):
        hits = sorted(result.rglob(marker))
        if hits:
            return hits[0].parents[len(Path(marker).parts) - 1]
    raise FileNotFoundError(f"no NVFlare server results (round metrics, cross-site results) under {str(result)!r}")


def load_round_metrics(server_dir: Path) -> dict[str, dict[str, list[float]]]:
    """``{site: {metric: [value per round]}}`` as the sites reported them with their training results."""
    path = server_dir / "metrics" / "round_metrics.jsonl"
    out: dict[str, dict[str, list[float]]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        row = json.loads(line)
        for site in row["sites"]:
            for m in site["metrics"]:
                out.setdefault(site["name"], {}).setdefault(m["name"], []).append(m["value"])
    return out


def load_cross_site(server_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{data_site: {model_name: {metric: value}}}`` from NVFlare's cross-site evaluation."""
    path = server_dir / "cross_site_val" / "cross_val_results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _model_label(name: str) -> str:
    return {"SRV_FL_global_model.pt": "global (last)", "SRV_best_FL_global_model.pt": "global (best)"}.get(
        name, f"{name} local"
    )


def format_tables(rounds: dict, cross: dict, key_metric: str) -> str:
    lines = []
    if rounds:
        n = max(len(v.get(key_metric, [])) for v in rounds.values())
        lines.append(f"Per-site {key_metric} of the global model received at each round (site validation data)")
        lines.append("| site | " + " | ".join(f"round {r}" for r in range(n)) + " |")
        lines.append("|---" * (n + 1) + "|")
        for site in sorted(rounds):
            vals = rounds[site].get(key_metric, [])
            lines.append(f"| {site} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
        lines.append("")
    if cross:
        models = sorted({m for row in cross.values() for m in row}, key=lambda m: (m.startswith("SRV"), m))
        metric = next(iter(next(iter(cross.values())).values())).keys()
        metric = next(iter(metric))
        lines.append(f"Cross-site evaluation: {metric} (rows: data of site, columns: model)")
        lines.append("| data \\ model | " + " | ".join(_model_label(m) for m in models) + " |")
        lines.append("|---" * (len(models) + 1) + "|")
        for site in sorted(cross):
            cells = [cross[site].get(m, {}).get(metric) for m in models]
            lines.append(f"| {site} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    return "\n".join(lines)


def plot_learning_curves(rounds: dict, key_metric: str, path: Path) -> Path | None:
    if not rounds:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for site in sorted(rounds):
        values = rounds[site].get(key_metric, [])
        ax.plot(range(len(values)), values, marker="o", label=site)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(f"{key_metric} (global model)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(result: str | Path, key_metric: str, quiet: bool = False, publish: bool = True) -> dict:
    """Print the per-site table, the cross-site matrix and the dashboard commands; write summary files.

    With ``publish`` the table goes to TensorBoard (TEXT tab) and, with the final models, to MLflow as artifacts.
    """
    server_dir = find_server_dir(result)
    rounds, cross = load_round_metrics(server_dir), load_cross_site(server_dir)
    text = format_tables(rounds, cross, key_metric)
    summary = {"server_dir": str(server_dir), "key_metric": key_metric, "rounds": rounds, "cross_site": cross}
    (server_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (server_dir / "summary.md").write_text(text + "\n")
    plot = plot_learning_curves(rounds, key_metric, server_dir / "learning_curves.png")
    if publish:
        _publish(server_dir, text, key_metric, rounds)
    if not quiet:
        print("\n" + text)
        print(f"\nResults: {server_dir}  (summary.md, summary.json, learning_curves.png, global models in app_server/)")
        if (server_dir / "tb_events").exists():
            print(f"TensorBoard: .venv/bin/tensorboard --logdir {server_dir / 'tb_events'}")
        if (server_dir / "mlflow.db").exists():
            print(f"MLflow:      .venv/bin/mlflow ui --backend-store-uri sqlite:///{server_dir / 'mlflow.db'}")
    summary["plot"] = str(plot) if plot else None
    return summary


def _publish(server_dir: Path, text: str, key_metric: str, rounds: dict) -> None:
    if (server_dir / "tb_events").exists():
        from src.reporting.tensorboard_results import publish_table

        publish_table(server_dir, text, step=max((len(v.get(key_metric, [])) for v in rounds.values()), default=1) - 1)
    if (server_dir / "mlflow.db").exists():
        from src.reporting.mlflow_results import publish_results

        publish_results(server_dir, key_metric=key_metric)
