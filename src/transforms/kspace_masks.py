"""Fixed per-site k-space sampling masks with a fully sampled centre, deterministic by seed.

FedMRI gives every client ONE fixed 2-D mask in centred k-space; the main setting is fastMRI 1-D uniform 3x, BraTS
1-D Cartesian random 5x, SMS 2-D radial 4x and uMR 2-D random 6x (:data:`FEDMRI_SITE_MASKS`). The reference code
loads those masks from unpublished ``.mat`` files, so they are generated here.

Mask types (all return a float32 ``(H, W)`` tensor of 0/1; 1-D masks sample whole columns, i.e. lines along W as
in fastMRI):

- ``"equispaced"``: MONAI's :class:`EquispacedKspaceMask` (fastMRI's rule: ``round(W * center_fraction)`` centre
  columns plus equispaced columns at the adjusted rate). Its grid can fall on centre columns, so the measured
  acceleration differs from the request by up to ~5.3 % (worst measured: W = 160; 2.6 % at W = 240 and 320).
- ``"random"`` (1-D Cartesian random): the same centre columns, then exactly ``round(W / acceleration) - n_centre``
  further columns drawn uniformly without replacement. MONAI's :class:`RandomKspaceMask` draws each column with a
  Bernoulli probability instead; for one mask that is fixed for a whole federation, its count's spread (std ~6
  columns at 320 columns, 5x, i.e. roughly 4.3x-5.9x) would give a site a different acceleration than requested,
  so the count is made exact here (deviation from MONAI, same expectation).
- ``"radial"``: a centred ``c x c`` block (``c = round(N * center_fraction)`` per axis) plus straight spokes
  through the k-space centre at equally spaced angles with a seeded random rotation; the number of spokes is the
  one whose union comes closest to ``H * W / acceleration`` sampled points. Near the centre the spokes overlap and
  fully sample a neighbourhood that can be larger than the requested block: for radial masks the measured centre
  fraction is ">= requested", not "equal".
- ``"random2d"``: the same centred block plus exactly ``round(H * W / acceleration) - block`` further points drawn
  uniformly without replacement (uniform density: the reference's density is unknown).

Tolerances, checked by the tests for sizes 96-320 and accelerations 3x-8x: measured acceleration
``H*W / sum(mask)`` within :data:`ACCELERATION_RTOL` of the request: equispaced 6 % (MONAI's grid, above), 1-D
random 2 % (integer column count), radial 3.5 % (one spoke is ~N points), random2d 0.5 %. Measured centre fraction
(see :func:`measure_center_fraction`): at least ``round(N * center_fraction) / N`` and at most
:data:`CENTER_FRACTION_ATOL` (0.02) above it for 1-D masks and ``random2d`` (a sampled line or point adjacent to the
block extends the fully sampled run), and at least the request for ``radial``. Square shapes are assumed for the
2-D centre measure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.apps.reconstruction.transforms.array import EquispacedKspaceMask
from torch import Tensor

from src.transforms.mask_specs import (
    ACCELERATION_RTOL,
    CENTER_FRACTION_ATOL,
    FEDMRI_SITE_MASKS,
    MASK_TYPES,
    SiteMaskSpec,
)

__all__ = [
    "MASK_TYPES",
    "ACCELERATION_RTOL",
    "CENTER_FRACTION_ATOL",
    "SiteMaskSpec",
    "FEDMRI_SITE_MASKS",
    "make_mask",
    "site_mask",
    "measure_acceleration",
    "measure_center_fraction",
]

def _check_args(mask_type: str, shape: Sequence[int], acceleration: float, center_fraction: float) -> tuple[int, int]:
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    if len(shape) != 2 or not all(isinstance(s, int | np.integer) and s >= 8 for s in shape):
        raise ValueError(f"shape must be two integers >= 8 (H, W), got {tuple(shape)!r}")
    if not (isinstance(acceleration, int | float) and math.isfinite(acceleration) and acceleration > 1):
        raise ValueError(f"acceleration must be a finite number > 1, got {acceleration!r}")
    if not (isinstance(center_fraction, int | float) and 0 < center_fraction < 1 / acceleration):
        raise ValueError(
            f"center_fraction must be in (0, 1/acceleration) = (0, {1 / acceleration:.4g}), got {center_fraction!r}"
        )
    return int(shape[0]), int(shape[1])


def _center_slice(n: int, n_center: int) -> slice:
    start = (n - n_center + 1) // 2  # MONAI/fastMRI placement of the centre lines
    return slice(start, start + n_center)


def _equispaced_columns(width: int, acceleration: float, center_fraction: float, seed: int) -> np.ndarray:
    maker = EquispacedKspaceMask([center_fraction], [acceleration], spatial_dims=2, is_complex=True)
    maker.set_random_state(seed=seed)
    maker(torch.zeros(1, 8, width, 2))
    return maker.mask.reshape(width).numpy() > 0


def _random_columns(width: int, acceleration: float, center_fraction: float, rng: np.random.Generator) -> np.ndarray:
    cols = np.zeros(width, dtype=bool)
    cols[_center_slice(width, int(round(width * center_fraction)))] = True
    extra = int(round(width / acceleration)) - int(cols.sum())
    candidates = np.flatnonzero(~cols)
    cols[rng.choice(candidates, size=max(extra, 0), replace=False)] = True
    return cols


def _center_block(shape: tuple[int, int], center_fraction: float) -> np.ndarray:
    block = np.zeros(shape, dtype=bool)
    rows = _center_slice(shape[0], max(1, int(round(shape[0] * center_fraction))))
    cols = _center_slice(shape[1], max(1, int(round(shape[1] * center_fraction))))
    block[rows, cols] = True
    return block


def _random2d(shape: tuple[int, int], acceleration: float, center_fraction: float, rng) -> np.ndarray:
    mask = _center_block(shape, center_fraction).ravel()
    extra = int(round(mask.size / acceleration)) - int(mask.sum())
    mask[rng.choice(np.flatnonzero(~mask), size=max(extra, 0), replace=False)] = True
    return mask.reshape(shape)


def _spokes(shape: tuple[int, int], n_spokes: int, rotation: float) -> np.ndarray:
    """Union of ``n_spokes`` full-length lines through the k-space centre, angles ``rotation + i * pi / n``."""
    h, w = shape
    cy, cx = h // 2, w // 2  # DC position of the centred FFT
    radius = math.hypot(h, w) / 2
    t = np.arange(-radius, radius + 0.5, 0.5)  # half-pixel steps leave no gaps in the rasterised line
    angles = rotation + np.pi * np.arange(n_spokes) / n_spokes
    ys = np.rint(cy + np.outer(np.sin(angles), t)).astype(np.int64).ravel()
    xs = np.rint(cx + np.outer(np.cos(angles), t)).astype(np.int64).ravel()
    keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    mask = np.zeros(shape, dtype=bool)
    mask[ys[keep], xs[keep]] = True
    return mask


def _radial(shape: tuple[int, int], acceleration: float, center_fraction: float, rng) -> np.ndarray:
    block = _center_block(shape, center_fraction)
    target = shape[0] * shape[1] / acceleration
    rotation = float(rng.uniform(0.0, np.pi))

    def union(n: int) -> np.ndarray:
        return block | _spokes(shape, n, rotation)

    # Coverage grows with the number of spokes (monotone up to rasterisation noise): bisect, then pick the closer
    # of the two neighbours.
    lo, hi = 1, 4 * max(shape)
    while lo < hi:
        mid = (lo + hi) // 2
        if union(mid).sum() < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [union(n) for n in (max(1, lo - 1), lo)]
    return min(candidates, key=lambda m: abs(int(m.sum()) - target))


def make_mask(
    mask_type: str,
    shape: Sequence[int],
    acceleration: float,
    center_fraction: float,
    seed: int,
) -> Tensor:
    """Generate one fixed sampling mask in centred k-space.

    Args:
        mask_type: one of :data:`MASK_TYPES`.
        shape: ``(H, W)`` of the k-space, each >= 8.
        acceleration: requested ``H * W / sampled points`` (> 1).
        center_fraction: fully sampled centre, as a fraction of W (1-D) or of each axis (2-D block);
            must be below ``1 / acceleration``.
        seed: integer seed; the same arguments always give the same mask.

    Returns:
        float32 ``(H, W)`` tensor of 0/1.
    """
    hw = _check_args(mask_type, shape, acceleration, center_fraction)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    if mask_type == "equispaced":
        mask = np.broadcast_to(_equispaced_columns(hw[1], acceleration, center_fraction, int(seed)), hw)
    elif mask_type == "random":
        mask = np.broadcast_to(_random_columns(hw[1], acceleration, center_fraction, rng), hw)
    elif mask_type == "radial":
        mask = _radial(hw, acceleration, center_fraction, rng)
    else:
        mask = _random2d(hw, acceleration, center_fraction, rng)
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))


def site_mask(site_index: int, shape: Sequence[int], specs: Sequence[SiteMaskSpec] = FEDMRI_SITE_MASKS) -> Tensor:
    """The fixed mask of site ``site_index`` (0-based) for k-space of ``shape``.

    Args:
        site_index: index into ``specs``.
        shape: ``(H, W)`` of that site's k-space (sites differ: 192, 240, 320).
        specs: per-site specifications; the paper's main setting by default.
    """
    if isinstance(site_index, bool) or not isinstance(site_index, int | np.integer):
        raise TypeError(f"site_index must be an int, got {site_index!r}")
    if not 0 <= site_index < len(specs):
        raise IndexError(f"site_index must be in [0, {len(specs) - 1}], got {site_index!r}")
    spec = specs[site_index]
    return make_mask(spec.mask_type, shape, spec.acceleration, spec.center_fraction, spec.seed)


def _check_mask(mask: Tensor) -> None:
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a 2-D (H, W) tensor, got {shape!r}")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask must contain only 0 and 1")


def measure_acceleration(mask: Tensor) -> float:
    """``H * W / number of sampled points`` of an ``(H, W)`` 0/1 mask."""
    _check_mask(mask)
    sampled = int(mask.sum().item())
    if sampled == 0:
        raise ValueError("mask samples no k-space point; acceleration is undefined")
    return mask.numel() / sampled


def measure_center_fraction(mask: Tensor) -> float:
    """Size of the fully sampled centre, as a fraction of the axis.

    For a column mask (every row identical) it is the length of the run of sampled columns containing the centre
    column ``W // 2``, divided by W. Otherwise it is the side of the largest fully sampled centred square (grown
    one ring at a time around ``(H // 2, W // 2)``), divided by ``min(H, W)``.
    """
    _check_mask(mask)
    m = mask.bool()
    h, w = m.shape
    if bool((m == m[0:1]).all()):
        cols = m[0]
        if not cols[w // 2]:
            return 0.0
        left = w // 2
        while left > 0 and cols[left - 1]:
            left -= 1
        right = w // 2
        while right < w - 1 and cols[right + 1]:
            right += 1
        return (right - left + 1) / w
    best = 0
    for side in range(1, min(h, w) + 1):
        top, left = (h - side + 1) // 2, (w - side + 1) // 2
        if not bool(m[top : top + side, left : left + side].all()):
            break
        best = side
    return best / min(h, w)
