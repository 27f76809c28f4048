"""What a job prints while it runs: one line per site per round, one server line per round, nothing else.

Sites and the server log their progress lines to the ``fl_progress`` logger (:data:`PROGRESS_LOGGER`); the
simulator's logging configuration (:func:`nvflare_log_config`) sends that logger and errors to the console and
everything (NVFlare's transport lines, ignite's ``Engine run ...``, MLflow) to the run's log files
(``<workspace>/<job>/<site>/log.txt``). ``--verbose`` keeps NVFlare's own console output instead.

    round 2/3  site-1  loss 1.604  val_accuracy 0.333 (global in) 0.444 (local)  14 s
    round 2/3  server  mean val_accuracy 0.278 (global in, 2 sites)  round 23 s  ETA 0:23

"global in" is the score of the model the server sent at the start of the round (what model selection uses);
"local" is the site's model after its local training. Nothing here imports NVFlare or torch.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["PROGRESS_LOGGER", "progress", "site_line", "server_line", "RoundClock", "nvflare_log_config",
           "write_log_config"]

#: the one logger whose INFO lines reach the console in the default (non-verbose) mode
PROGRESS_LOGGER = "fl_progress"


def progress(line: str) -> None:
    """Log one progress line (console and the site's log file)."""
    logging.getLogger(PROGRESS_LOGGER).info(line)


def _num(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def site_line(round_number: int, num_rounds: int | None, site: str, metrics: Mapping[str, float],
              received: Mapping[str, float], key_metric: str, seconds: float) -> str:
    """``round 3/10  site-2  loss 0.410  val_dice 0.730 (global in) 0.750 (local)  12 s``.

    Args:
        round_number: NVFlare's 0-based round; shown 1-based.
        metrics: the round's metrics (``train_loss``, ``<key_metric>_local`` ...).
        received: the received global model's validation scores.
    """
    total = f"/{num_rounds}" if num_rounds else ""
    parts = [f"round {round_number + 1}{total}", site]
    loss = metrics.get("train_loss")
    if loss is not None:
        parts.append(f"loss {_num(loss)}")
    score = received.get(key_metric)
    local = metrics.get(f"{key_metric}_local")
    if score is not None or local is not None:
        text = f"{key_metric} {_num(score)} (global in)"
        if local is not None:
            text += f" {_num(local)} (local)"
        parts.append(text)
    parts.append(_duration(seconds))
    return "  ".join(parts)


def server_line(round_number: int, num_rounds: int, mean: Mapping[str, float] | None, key_metric: str | None,
                n_sites: int, round_seconds: float, eta_seconds: float | None) -> str:
    """``round 3/10  server  mean val_dice 0.712 (global in, 3 sites)  round 41 s  ETA 4:47``."""
    parts = [f"round {round_number + 1}/{num_rounds}", "server"]
    mean = dict(mean or {})
    name = key_metric if key_metric in mean else next((k for k in sorted(mean) if k.startswith("val_")), None)
    if name is not None:
        parts.append(f"mean {name} {_num(mean[name])} (global in, {n_sites} sites)")
    else:
        parts.append(f"{n_sites} sites")
    parts.append(f"round {_duration(round_seconds)}")
    parts.append("done" if eta_seconds is None or eta_seconds <= 0 else f"ETA {_duration(eta_seconds)}")
    return "  ".join(parts)


class RoundClock:
    """Times rounds on the server; the ETA is the mean round time so far (the first round, which includes the
    sites' start-up, only until there is another) times the rounds left."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._start = clock()
        self._last = self._start
        self._done = 0
        self._later: list[float] = []  # round times after the first (the first includes the sites' start-up)

    def round_done(self, round_number: int, num_rounds: int, mean: Mapping[str, float] | None,
                   key_metric: str | None = None, n_sites: int = 0) -> str:
        now = self._clock()
        round_seconds, self._last = now - self._last, now
        self._done += 1
        if self._done > 1:
            self._later.append(round_seconds)
        round_number = self._done - 1 if round_number is None else round_number  # a workflow that sets no round
        num_rounds = num_rounds or round_number + 1
        left = max(0, num_rounds - (round_number + 1))
        per_round = sum(self._later) / len(self._later) if self._later else round_seconds
        eta = per_round * left
        line = server_line(round_number, num_rounds, mean, key_metric, n_sites, round_seconds, eta)
        progress(line)
        return line


def nvflare_log_config(verbose: bool = False) -> dict:
    """NVFlare's own logging configuration (same files), with the console limited to progress lines and errors.

    ``verbose``: NVFlare's configuration unchanged (every INFO line on the console).
    """
    from importlib.util import find_spec

    spec = find_spec("nvflare")
    base = Path(spec.origin).parent / "fuel" / "utils" / "log_config.json"
    config = json.loads(base.read_text())
    if verbose:
        return config
    config = copy.deepcopy(config)
    config["formatters"]["progressFormatter"] = {"format": "%(message)s"}
    config["formatters"]["consoleFormatter"]["fmt"] = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
    config["filters"]["ProgressFilter"] = {
        "()": "nvflare.fuel.utils.log_utils.LoggerNameFilter",
        "logger_names": [PROGRESS_LOGGER],
        "allow_all_error_logs": False,
    }
    config["handlers"]["consoleHandler"]["level"] = "ERROR"
    config["handlers"]["progressHandler"] = {
        "class": "logging.StreamHandler",
        "level": "INFO",
        "formatter": "progressFormatter",
        "filters": ["ProgressFilter"],
        "stream": "ext://sys.stdout",
    }
    config["loggers"]["root"]["handlers"].append("progressHandler")
    return config


def write_log_config(path: str | Path, verbose: bool = False) -> Path:
    """Write :func:`nvflare_log_config` as JSON (the simulator takes a file path); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nvflare_log_config(verbose), indent=2))
    return path
