"""Configuration of the FedICRA job and the baselines that share its data, model, losses and loop.

Defaults are the reference's (llmir/FedICRA; digest ``shared/design/algorithms/fedicra.md``): batch 12, 10 local
iterations a round, 30,000 iterations in all (3,000 rounds), AdamW (0.9, 0.999) with weight decay 0.01 rebuilt every
round, lr ``0.01 * (1 - t / 30000) ** 0.9`` on the site's cumulative iteration ``t``, FedRep split of 3 body
iterations after 7 head-only ones, adaptive mixing after a 50-iteration warm-up, loss
``pCE + 0.1 * tree + 0.1 * gCRF + 1 * site-contrastive``. The sparse form per site defaults to the paper's
dataset table (not the reference code's configs, which disagree; ``label_forms`` overrides per site).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from src.config.base import LearnerConfig
from src.data.fedicra import LABEL_FORMS, PAPER_SUP_TYPES, TASK_CHANNELS, TASK_CLASSES

ALGORITHMS = ("fedicra", "fedavg", "fedprox", "fedbn", "fedrep", "local", "centralised")
TASKS = tuple(TASK_CLASSES)


def paper_label_forms(task: str, sites: tuple[str, ...]) -> dict[str, str]:
    """The paper's form per site: the i-th site (in federation order) takes the i-th form of the table."""
    table = PAPER_SUP_TYPES[task]
    if len(sites) > len(table):
        raise ValueError(f"the paper's table names {len(table)} sites, got {len(sites)}: give label_forms per site")
    return dict(zip(sites, table))


@dataclass
class FedICRAConfig(LearnerConfig):
    """FedICRA (arXiv 2304.05635) and its baselines.

    Args:
        task: ``faz`` (1 channel, 2 classes) or ``odoc`` (3 channels: background, cup, disc rim).
        algorithm: ``fedicra``; ``fedavg`` / ``fedprox`` / ``fedbn`` / ``fedrep`` (personal ``out_conv``, head-then-
            body split) on the same network and weak loss without the FedICRA parts; ``local`` (a site never
            loads what the server sends); ``centralised`` (one site on pooled data, normally full masks).
        federation_sites: every site of the federation, in order: the site -> index map of the channel
            selection's one-hot code, identical at every site (an unknown site is an error, never a guess).
        label_forms: training label form per site (``scribble``, ``scribble_noisy``, ``keypoint``, ``block``,
            ``box`` or ``mask``); a site not listed takes the paper's table by its federation index.
        iterations_per_round: local iterations (batches) per round (10).
        total_iterations: horizon ``T`` of the poly lr (30,000).
        poly_power: exponent of the poly lr (0.9).
        weight_decay: AdamW weight decay (0.01).
        rep_iterations: FedRep split: the last ``rep_iterations`` of a round update every parameter but
            ``out_conv``; the ones before update ``out_conv`` only (3 of 10).
        mixing_warmup: local iterations before adaptive mixing starts (50); before, the global model is loaded.
        mixing_eta, mixing_loss_window, mixing_std_threshold, mixing_max_first_epochs: the W learning rule
            (:class:`~src.personalisation.adaptive_mixing.AdaptiveDecoderMixing`).
        mixing_batches: training batches W is learnt on per epoch (the reference: the whole local set; FedALA's
            ``rand_percent`` subset). 0 = all.
        tree_weight, crf_weight, lc_weight: loss weights (0.1, 0.1, 1); ``lc`` only for ``fedicra``.
        crf_radius, crf_sigma_xy, crf_sigma_rgb: gated CRF kernel (5, 6 px, 0.1).
        augment: the reference's training augmentation (90-degree rotation + flip, rotation in [-45, 44]).
        upsample: ``bilinear`` (what the reference actually runs) or ``deconv``.
    """

    algorithms: ClassVar[tuple[str, ...]] = ALGORITHMS

    task: str = "faz"
    data_root: str = "data/fedicra/FAZ_h5"
    datalist_dir: str = "datalists/fedicra_faz"
    algorithm: str = "fedicra"
    batch_size: int = 12
    lr: float = 0.01
    local_epochs: int = 1
    federation_sites: tuple[str, ...] = ("site-1", "site-2", "site-3", "site-4", "site-5")
    label_forms: dict[str, str] = field(default_factory=dict)
    iterations_per_round: int = 10
    total_iterations: int = 30_000
    poly_power: float = 0.9
    weight_decay: float = 0.01
    rep_iterations: int = 3
    mixing_warmup: int = 50
    mixing_eta: float = 1.0
    mixing_loss_window: int = 10
    mixing_std_threshold: float = 0.1
    mixing_max_first_epochs: int = 100
    mixing_batches: int = 0
    tree_weight: float = 0.1
    crf_weight: float = 0.1
    lc_weight: float = 1.0
    crf_radius: int = 5
    crf_sigma_xy: float = 6.0
    crf_sigma_rgb: float = 0.1
    augment: bool = True
    upsample: str = "bilinear"
    eval_split: str = "testing"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        self.federation_sites = tuple(self.federation_sites)
        if len(set(self.federation_sites)) != len(self.federation_sites) or len(self.federation_sites) < 2:
            raise ValueError(f"federation_sites must be >= 2 distinct names, got {list(self.federation_sites)}")
        for site, form in self.label_forms.items():
            if form not in LABEL_FORMS:
                raise ValueError(f"label_forms[{site!r}] must be one of {LABEL_FORMS}, got {form!r}")
        if self.iterations_per_round < 1 or self.total_iterations < 1:
            raise ValueError(f"iterations_per_round and total_iterations must be >= 1, got "
                             f"{self.iterations_per_round!r}, {self.total_iterations!r}")
        if not 0 <= self.rep_iterations <= self.iterations_per_round:
            raise ValueError(f"rep_iterations must be in [0, iterations_per_round={self.iterations_per_round}], "
                             f"got {self.rep_iterations!r}")
        for name in ("tree_weight", "crf_weight", "lc_weight", "weight_decay", "mixing_warmup", "mixing_batches"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    @property
    def num_classes(self) -> int:
        return TASK_CLASSES[self.task]

    @property
    def in_channels(self) -> int:
        return TASK_CHANNELS[self.task]

    def site_index(self, site: str) -> int:
        """The site's fixed index in the federation (the channel-selection code); unknown sites are refused."""
        if site not in self.federation_sites:
            raise ValueError(f"site {site!r} is not in federation_sites {list(self.federation_sites)}")
        return self.federation_sites.index(site)

    def label_form(self, site: str) -> str:
        """Training label form of ``site``: ``label_forms`` if given, else the paper's table by federation index
        (``centralised`` with no explicit form trains on the dense masks: the fully supervised upper bound)."""
        if site in self.label_forms:
            return self.label_forms[site]
        if self.algorithm == "centralised":
            return "mask"
        return paper_label_forms(self.task, self.federation_sites)[site]
