"""Turn a finished job's result folder into tables, a JSON/markdown summary and a learning-curve plot.

Reads only what the server writes (NVFlare's ``metrics/round_metrics.jsonl``,
``cross_site_val/cross_val_results.json``, ``tb_events/``, ``mlflow.db``, and the bytes on the wire our
:class:`~src.comm.wire.WireBytes` filter counts in ``metrics/wire_bytes.jsonl``), so it works the same for a
simulator workspace and for a result downloaded from a POC or production deployment. ``summary.json`` holds
``wire_bytes``: ``{site: {"task": [bytes per round], "result": [...]}}`` (server -> site, site -> server).
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


#: round-table variants: metric suffix -> which model the site scored
ROUND_TABLES = (
    ("", "the global model each site received"),
    ("_local", "each site's model after its local training"),
    ("_personal", "each site's personalised model"),
)


def _round_table(rounds: dict, metric: str, what: str) -> list[str]:
    n = max(len(v.get(metric, [])) for v in rounds.values())
    if n == 0:
        return []
    if metric.endswith(("_local", "_personal")):
        header = [f"round {r + 1}" for r in range(n)]
        note = f"{what}, at the end of each round"
    else:  # the model received at round r has been aggregated r times; round 1 scores the initial model
        header = ["initial"] + [f"after {r}" for r in range(1, n)]
        note = (f"{what} (after k aggregations; 'initial' is the untrained start model; the final model, after "
                f"{n}, is scored in the cross-site table as 'global (last)')")
    lines = [f"Per-site {metric} on the site's validation data: {note}",
             "| site | " + " | ".join(header) + " |", "|---" * (n + 1) + "|"]
    for site in sorted(rounds):
        vals = rounds[site].get(metric, [])
        lines.append(f"| {site} | " + " | ".join(_cell(v) for v in vals) + " |")
    lines.append("")
    return lines


def _cell(value) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{value:.4f}" if value == value and abs(value) != float("inf") else "n/a"


def format_settings(settings: dict | None) -> str:
    if not settings:
        return ""
    lines = ["Run settings", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def format_tables(rounds: dict, cross: dict, key_metric: str) -> str:
    lines = []
    if rounds:
        for suffix, what in ROUND_TABLES:
            if suffix and not any(f"{key_metric}{suffix}" in v for v in rounds.values()):
                continue
            lines += _round_table(rounds, f"{key_metric}{suffix}", what)
    if cross:
        models = sorted({m for row in cross.values() for m in row}, key=lambda m: (m.startswith("SRV"), m))
        metric = next(iter(next(iter(cross.values())).values())).keys()
        metric = next(iter(metric))
        lines.append(f"Cross-site evaluation: {metric} (rows: data of site, columns: model)")
        lines.append("| data \\ model | " + " | ".join(_model_label(m) for m in models) + " |")
        lines.append("|---" * (len(models) + 1) + "|")
        for site in sorted(cross):
            cells = [cross[site].get(m, {}).get(metric) for m in models]
            lines.append(f"| {site} | " + " | ".join("-" if c is None else _cell(c) for c in cells) + " |")
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


def plot_cross_site(cross: dict, path: Path) -> Path | None:
    """The cross-site matrix as one heat-map (rows: data of site, columns: model)."""
    if not cross:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({m for row in cross.values() for m in row}, key=lambda m: (m.startswith("SRV"), m))
    metric = next(iter(next(iter(next(iter(cross.values())).values())).keys()))
    sites = sorted(cross)
    values = [[float(cross[s].get(m, {}).get(metric, float("nan"))) for m in models] for s in sites]
    fig, ax = plt.subplots(figsize=(1.4 * len(models) + 2, 0.6 * len(sites) + 1.5))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1 if all(0 <= v <= 1 for r in values for v in r if v == v)
                      else None)
    ax.set_xticks(range(len(models)), [_model_label(m) for m in models], rotation=30, ha="right")
    ax.set_yticks(range(len(sites)), sites)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, _cell(v), ha="center", va="center", color="w" if v == v and v < 0.6 else "k", fontsize=8)
    ax.set_xlabel("model")
    ax.set_ylabel("data of site")
    ax.set_title(f"cross-site {metric}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def learner_config_of(result: str | Path) -> dict:
    """The learner configuration the job staged for its sites (``learner_config.json``), if the result holds it."""
    for path in sorted(Path(result).rglob("learner_config.json")):
        try:
            staged = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        config = staged.get("config", {})
        return {k: v for k, v in config.items() if k not in ("extra", "__class__")}
    return {}


def receiver_store(server_dir: Path) -> dict:
    """The MLflow receiver's settings in the job's server config: ``tracking_uri``, ``experiment``, ``launch``."""
    for path in sorted(Path(server_dir).rglob("config_fed_server.json")):
        try:
            components = json.loads(path.read_text()).get("components", [])
        except (OSError, json.JSONDecodeError):
            continue
        for comp in components:
            if str(comp.get("path", "")).endswith("MLflowReceiver"):
                args = comp.get("args", {})
                kw = args.get("kw_args") or {}
                return {"tracking_uri": args.get("tracking_uri"), "experiment": kw.get("experiment_name"),
                        "launch": (kw.get("run_tags") or {}).get("launch")}
    return {}


def report(result: str | Path, key_metric: str, quiet: bool = False, publish: bool = True,
           settings: dict | None = None, tracking_uri: str | None = None, launch: str | None = None) -> dict:
    """Print the run's settings, per-site tables, the cross-site matrix and the dashboard commands; write summary
    files (``summary.md`` starts with the settings).

    With ``publish`` the table goes to TensorBoard (TEXT tab) and, with the final models and the run's settings as
    parameters, to MLflow: the project store ``tracking_uri`` (runs of this ``launch``), else the job's own
    ``mlflow.db``.
    """
    from src.comm.wire_report import load_wire_bytes, wire_summary, wire_table

    server_dir = find_server_dir(result)
    rounds, cross = load_round_metrics(server_dir), load_cross_site(server_dir)
    wire = wire_summary(load_wire_bytes(server_dir))
    tables = format_tables(rounds, cross, key_metric)
    text = (format_settings(settings) + "\n" + tables) if settings else tables
    if wire:
        text += "\n\n" + wire_table(wire)
    summary = {"server_dir": str(server_dir), "key_metric": key_metric, "settings": settings or {},
               "rounds": rounds, "cross_site": cross, "wire_bytes": wire}
    (server_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (server_dir / "summary.md").write_text(text + "\n")
    if cross:
        (server_dir / "cross_site.md").write_text(tables[tables.index("Cross-site"):] + "\n")
    plot = plot_learning_curves(rounds, key_metric, server_dir / "learning_curves.png")
    heat = plot_cross_site(cross, server_dir / "cross_site.png")
    store = None
    found = receiver_store(server_dir)
    tracking_uri = tracking_uri or found.get("tracking_uri")
    launch = launch or found.get("launch")
    settings_job = (settings or {}).get("job") or found.get("experiment")
    if publish:
        params = {**learner_config_of(result), **(settings or {})}
        store = _publish(server_dir, text, key_metric, rounds, tracking_uri, launch, params, settings_job)
    if not quiet:
        print("\n" + text)
        files = ", ".join(p.name for p in (server_dir / "summary.md", plot, heat) if p)
        print(f"\nResults: {server_dir}  ({files}, summary.json; global models in app_server/)")
        if (server_dir / "tb_events").exists():
            print(f"TensorBoard: .venv/bin/tensorboard --logdir {server_dir / 'tb_events'}")
        if store:
            print(f"MLflow:      .venv/bin/mlflow ui --backend-store-uri {store}")
    summary["plot"] = str(plot) if plot else None
    summary["cross_site_plot"] = str(heat) if heat else None
    summary["tracking_uri"] = store
    return summary


def _publish(server_dir: Path, text: str, key_metric: str, rounds: dict, tracking_uri: str | None,
             launch: str | None, params: dict, job: str | None) -> str | None:
    if (server_dir / "tb_events").exists():
        from src.reporting.tensorboard_results import publish_table

        publish_table(server_dir, text, step=max((len(v.get(key_metric, [])) for v in rounds.values()), default=1) - 1)
    if tracking_uri and launch:
        from src.reporting.mlflow_results import publish_results

        publish_results(server_dir, job_name=job, key_metric=key_metric, tracking_uri=tracking_uri, launch=launch,
                        params=params)
        return tracking_uri
    if (server_dir / "mlflow.db").exists():
        from src.reporting.mlflow_results import publish_results

        publish_results(server_dir, key_metric=key_metric, params=params or None)
        return f"sqlite:///{server_dir / 'mlflow.db'}"
    return None
