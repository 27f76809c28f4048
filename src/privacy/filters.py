"""Privacy filters on what a site sends: NVFlare's PercentilePrivacy, SVTPrivacy and ExcludeVars, per job.

``--privacy none|percentile|svt|exclude`` picks one; it runs on the site as an output filter of the ``train`` and
``submit_model`` tasks (every model a site sends: each round's update and, for cross-site evaluation, its best local
model), so the server and anyone on the wire only ever see filtered models. Percentile and SVT act on *weight
differences* (they threshold and clip ``delta_w`` per local step; applied to full weights they would zero the
model), so they run on the difference between the site's weights and the last global model it received
(:mod:`src.privacy.weight_diff`).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

__all__ = ["PRIVACY_CHOICES", "PrivacySettings", "add_privacy_filter", "add_privacy_options", "build_filter",
           "settings_from_args"]

PRIVACY_CHOICES = ("none", "percentile", "svt", "exclude")
#: tasks whose results are filtered: every model a site sends. The same task set as the personal-key ExcludeVars of
#: jobs/common.py, because NVFlare refuses filter chains whose task sets overlap without being equal.
FILTERED_TASKS = ("train", "submit_model")
#: tasks whose incoming global model FilterWeightDiff differences against
RECEIVED_TASKS = ("train",)


@dataclass(frozen=True)
class PrivacySettings:
    """One filter and its parameters (defaults are NVFlare's own).

    Args:
        kind: one of :data:`PRIVACY_CHOICES`.
        percentile: PercentilePrivacy: only ``|delta_w|`` above this percentile (0-100) is shared.
        gamma: PercentilePrivacy: shared per-step differences are clipped to ``[-gamma, gamma]``.
        svt_fraction, svt_epsilon, svt_noise_var, svt_gamma, svt_tau: SVTPrivacy's ``fraction`` of parameters
            uploaded, privacy budget, release noise, clipping bound and threshold (Sparse Vector Technique).
        exclude_vars: ExcludeVars: regular expression of parameter names that never leave the site.
    """

    kind: str = "none"
    percentile: float = 10.0
    gamma: float = 0.01
    svt_fraction: float = 0.1
    svt_epsilon: float = 0.1
    svt_noise_var: float = 0.1
    svt_gamma: float = 1e-5
    svt_tau: float = 1e-6
    exclude_vars: str = ""

    def __post_init__(self) -> None:
        if self.kind not in PRIVACY_CHOICES:
            raise ValueError(f"privacy must be one of {PRIVACY_CHOICES}, got {self.kind!r}")
        if not 0 <= self.percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {self.percentile!r}")
        if self.gamma <= 0 or self.svt_gamma <= 0:
            raise ValueError(f"gamma must be > 0, got gamma={self.gamma!r}, svt_gamma={self.svt_gamma!r}")
        if not 0 < self.svt_fraction <= 1:
            raise ValueError(f"svt_fraction must be in (0, 1], got {self.svt_fraction!r}")
        if self.svt_epsilon <= 0 or self.svt_noise_var <= 0:
            raise ValueError(f"svt_epsilon and svt_noise_var must be > 0, got {self.svt_epsilon!r}, "
                             f"{self.svt_noise_var!r}")
        if self.kind == "exclude" and not self.exclude_vars:
            raise ValueError("--privacy exclude needs --exclude-vars REGEX (parameter names to keep on the site)")

    @property
    def needs_weight_diff(self) -> bool:
        return self.kind in ("percentile", "svt")

    def describe(self) -> str:
        """Short parameter string for tables and logs."""
        return {
            "none": "-",
            "percentile": f"percentile={self.percentile:g}, gamma={self.gamma:g}",
            "svt": f"fraction={self.svt_fraction:g}, epsilon={self.svt_epsilon:g}, noise_var={self.svt_noise_var:g}, "
                   f"gamma={self.svt_gamma:g}, tau={self.svt_tau:g}",
            "exclude": f"exclude_vars={self.exclude_vars!r}",
        }[self.kind]


def add_privacy_options(parser: argparse.ArgumentParser) -> None:
    """The ``--privacy`` option and each filter's parameters (defaults: NVFlare's)."""
    d = PrivacySettings()
    g = parser.add_argument_group("privacy filter on every site's model update (train task)")
    g.add_argument("--privacy", choices=PRIVACY_CHOICES, default=d.kind, help="output filter the sites apply")
    g.add_argument("--privacy-percentile", type=float, default=d.percentile,
                   help="percentile: share only |delta_w| above this percentile")
    g.add_argument("--privacy-gamma", type=float, default=d.gamma, help="percentile: clip per-step delta_w to +-gamma")
    g.add_argument("--svt-fraction", type=float, default=d.svt_fraction, help="svt: fraction of parameters uploaded")
    g.add_argument("--svt-epsilon", type=float, default=d.svt_epsilon, help="svt: privacy budget of the selection")
    g.add_argument("--svt-noise-var", type=float, default=d.svt_noise_var, help="svt: release noise control")
    g.add_argument("--svt-gamma", type=float, default=d.svt_gamma, help="svt: clipping bound")
    g.add_argument("--svt-tau", type=float, default=d.svt_tau, help="svt: threshold")
    g.add_argument("--exclude-vars", default=d.exclude_vars, metavar="REGEX",
                   help="exclude: parameter names (regular expression) that never leave the site")


def settings_from_args(args: argparse.Namespace) -> PrivacySettings:
    return PrivacySettings(
        kind=getattr(args, "privacy", "none"), percentile=args.privacy_percentile, gamma=args.privacy_gamma,
        svt_fraction=args.svt_fraction, svt_epsilon=args.svt_epsilon, svt_noise_var=args.svt_noise_var,
        svt_gamma=args.svt_gamma, svt_tau=args.svt_tau, exclude_vars=args.exclude_vars,
    )


def build_filter(settings: PrivacySettings, param_names: list[str] | None = None):
    """NVFlare's filter object for ``settings`` (None for ``none``).

    ExcludeVars gets the *list* of ``param_names`` matching ``settings.exclude_vars``: given the regular expression
    itself it compiles it in its constructor, and the job export then writes an empty ``re.Pattern`` component.
    """
    from nvflare.apis.dxo import DataKind

    if settings.kind == "percentile":
        from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy

        return PercentilePrivacy(percentile=settings.percentile, gamma=settings.gamma,
                                 data_kinds=[DataKind.WEIGHT_DIFF])
    if settings.kind == "svt":
        from nvflare.app_common.filters.svt_privacy import SVTPrivacy

        return SVTPrivacy(fraction=settings.svt_fraction, epsilon=settings.svt_epsilon,
                          noise_var=settings.svt_noise_var, gamma=settings.svt_gamma, tau=settings.svt_tau,
                          data_kinds=[DataKind.WEIGHT_DIFF])
    if settings.kind == "exclude":
        from nvflare.app_common.filters.exclude_vars import ExcludeVars

        return ExcludeVars(exclude_vars=excluded_names(settings.exclude_vars, param_names),
                           data_kinds=[DataKind.WEIGHTS, DataKind.WEIGHT_DIFF])
    return None


def excluded_names(pattern: str, param_names: list[str] | None) -> list[str]:
    """The parameter names ``pattern`` matches (``re.search``); at least one, or the exclusion would be a no-op."""
    if param_names is None:
        raise ValueError(f"--exclude-vars {pattern!r}: the model's parameter names are needed to resolve it")
    names = [n for n in param_names if re.search(pattern, n)]
    if not names:
        raise ValueError(f"--exclude-vars {pattern!r} matches none of the model's {len(param_names)} parameters, "
                         f"e.g. {list(param_names)[:3]!r}")
    return names


def add_privacy_filter(recipe, args: argparse.Namespace) -> PrivacySettings:
    """Add the ``--privacy`` filter to ``recipe``: a client output filter of every model a site sends.

    Percentile and SVT act on weight differences: they run inside :class:`~src.privacy.weight_diff.FilterWeightDiff`
    (with :class:`~src.privacy.weight_diff.RememberGlobalModel` on the incoming task), so sites keep sending full
    weights and every aggregator works unchanged.
    """
    settings = settings_from_args(args)
    model = getattr(recipe, "model", None)
    flt = build_filter(settings, list(model.state_dict()) if hasattr(model, "state_dict") else None)
    if flt is None:
        return settings
    if settings.needs_weight_diff:
        from src.privacy.weight_diff import FilterWeightDiff, RememberGlobalModel

        recipe.add_client_input_filter(RememberGlobalModel(key=settings.kind), tasks=list(RECEIVED_TASKS))
        flt = FilterWeightDiff(inner=flt, key=settings.kind)
    recipe.add_client_output_filter(flt, tasks=list(FILTERED_TASKS))
    return settings
