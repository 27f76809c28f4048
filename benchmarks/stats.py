"""Statistics and the result-file shape shared by every algorithm's comparison (read by ``benchmarks.report``).

Every comparison writes, in its own folder under ``results/``:

* ``<name>.csv``: one row per (setting, site, method, seed, metric), FLamby's shape: :data:`SCORE_COLUMNS`;
  ``value`` is the mean over the site's ``n`` test volumes for that seed.
* ``<name>_volumes.csv``: the per-volume scores behind it, :data:`VOLUME_COLUMNS` (one row per case as well);
  the paired comparisons use these.
* ``<name>_meta.json``: ``{"algorithm", "title", "synthetic", "settings": {...}, "claims": [Claim...]}``: the run
  settings and the orderings the paper (or a sanity check) expects.

Paired comparison of method A against method B: per volume (site, case), the difference A - B averaged over
seeds (the volumes are the independent units; seeds re-train on the same volumes), then a percentile bootstrap
interval of the mean difference over volumes and an exact two-sided sign test. An ordering "A better than B"
holds (``yes``) when the interval lies entirely on A's side and the sign test rejects a coin flip (p < 0.05), fails
(``no``) when both point the other way, and is ``within noise`` otherwise. Requiring both keeps a mean pulled by one
volume (interval clear of 0, 12 wins / 8 losses) from reading as a verdict, and makes fewer than 6 paired volumes
(where even a clean sweep has p > 0.05) always ``within noise``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data_prep.common import own_folder

__all__ = [
    "SCORE_COLUMNS", "VOLUME_COLUMNS", "Summary", "Claim", "Paired", "summarise", "paired_bootstrap", "sign_test",
    "compare_paired", "write_comparison", "read_rows", "csv_paths",
]

SCORE_COLUMNS = ("algorithm", "setting", "site", "method", "seed", "metric", "value", "n")
VOLUME_COLUMNS = ("algorithm", "setting", "site", "method", "seed", "metric", "case", "value")


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for a single value
    n: int


@dataclass(frozen=True)
class Claim:
    """An expected ordering: ``better`` beats ``worse`` on ``metric`` in ``setting`` (``source``: paper / sanity).

    ``sites``: the sites (test sets) the claim is about; empty = every site of the setting (the volumes of all of
    them are the paired units).
    """

    setting: str
    better: str
    worse: str
    metric: str
    higher_is_better: bool = True
    source: str = "paper"
    note: str = ""
    sites: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "sites", tuple(self.sites))  # a list when read back from JSON


@dataclass(frozen=True)
class Paired:
    """A paired comparison of ``better - worse`` (sign-adjusted so that > 0 favours ``better``)."""

    mean_diff: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    ties: int
    p_sign: float
    n: int
    verdict: str


def summarise(values: Iterable[float]) -> Summary:
    """Mean, sample std and n of ``values`` (NaN mean for none)."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return Summary(float("nan"), float("nan"), 0)
    return Summary(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size))


def paired_bootstrap(
    diffs: Sequence[float], n_boot: int = 10000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean of paired differences ``diffs``."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        raise ValueError("paired_bootstrap needs at least one difference, got none")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(d.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


#: level of the exact sign test that a "yes" / "no" verdict also needs
SIGN_TEST_ALPHA = 0.05


def sign_test(diffs: Sequence[float], tol: float = 1e-12) -> tuple[int, int, int, float]:
    """(wins, losses, ties, two-sided exact p) of paired differences; ties (|d| <= tol) are dropped from the test."""
    d = np.asarray(diffs, dtype=float)
    wins, losses = int((d > tol).sum()), int((d < -tol).sum())
    ties = int(d.size - wins - losses)
    n = wins + losses
    if n == 0:
        return wins, losses, ties, 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return wins, losses, ties, float(min(1.0, 2 * tail))


def compare_paired(
    better: Mapping[tuple, float], worse: Mapping[tuple, float], higher_is_better: bool = True,
    n_boot: int = 10000, seed: int = 0,
) -> Paired:
    """Paired comparison of two methods' per-volume scores keyed ``(site, case, seed)``.

    Differences are averaged over seeds per ``(site, case)`` first; keys present in only one method are ignored.
    """
    common = sorted(set(better) & set(worse))
    if not common:
        raise ValueError(f"no paired volumes: keys {sorted(better)[:3]}... vs {sorted(worse)[:3]}...")
    sign = 1.0 if higher_is_better else -1.0
    per_volume: dict[tuple, list[float]] = {}
    for key in common:
        per_volume.setdefault(tuple(key[:2]), []).append(sign * (better[key] - worse[key]))
    diffs = [float(np.mean(v)) for v in per_volume.values()]
    mean, low, high = paired_bootstrap(diffs, n_boot=n_boot, seed=seed)
    wins, losses, ties, p = sign_test(diffs)
    decided = p < SIGN_TEST_ALPHA
    verdict = "yes" if decided and low > 0 else "no" if decided and high < 0 else "within noise"
    return Paired(mean, low, high, wins, losses, ties, p, len(diffs), verdict)


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="raise")
        writer.writeheader()
        for row in rows:
            missing = set(columns) - set(row)
            if missing:
                raise ValueError(f"row {dict(row)!r} lacks columns {sorted(missing)}")
            writer.writerow(row)
    tmp.replace(path)
    return path


def write_comparison(
    out_dir: str | Path, name: str, volume_rows: Sequence[Mapping], meta: Mapping, claims: Sequence[Claim] = ()
) -> dict[str, Path]:
    """Write ``<name>.csv`` (aggregated from ``volume_rows``), ``<name>_volumes.csv`` and ``<name>_meta.json``.

    Args:
        volume_rows: one mapping per volume score with :data:`VOLUME_COLUMNS`.
        meta: ``algorithm``, ``title``, ``synthetic`` (bool) and ``settings`` of the run.
        claims: the expected orderings to check.
    """
    for key in ("algorithm", "title", "synthetic", "settings"):
        if key not in meta:
            raise ValueError(f"meta needs {key!r}, got keys {sorted(meta)}")
    out_dir = own_folder(out_dir, "benchmarks comparison")
    groups: dict[tuple, list[float]] = {}
    for row in volume_rows:
        key = tuple(row[c] for c in SCORE_COLUMNS[:6])
        groups.setdefault(key, []).append(float(row["value"]))
    scores = [{**dict(zip(SCORE_COLUMNS[:6], k)), "value": float(np.mean(v)), "n": len(v)} for k, v in groups.items()]
    paths = {
        "scores": _write_csv(out_dir / f"{name}.csv", SCORE_COLUMNS, scores),
        "volumes": _write_csv(out_dir / f"{name}_volumes.csv", VOLUME_COLUMNS, volume_rows),
        "meta": out_dir / f"{name}_meta.json",
    }
    body = {**meta, "name": name, "claims": [asdict(c) for c in claims]}
    paths["meta"].write_text(json.dumps(body, indent=2) + "\n")
    return paths


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a comparison CSV with ``seed`` as int and ``value`` as float (``n`` as int where present)."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["seed"] = int(row["seed"])
        row["value"] = float(row["value"])
        if "n" in row:
            row["n"] = int(row["n"])
    return rows


def csv_paths(results_dir: str | Path) -> list[Path]:
    """Every comparison under ``results_dir``: the ``<name>.csv`` files that have a ``<name>_meta.json`` beside."""
    return sorted(p for p in Path(results_dir).rglob("*.csv") if p.with_name(f"{p.stem}_meta.json").is_file())
