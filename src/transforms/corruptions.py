"""MR imaging artefacts for robustness tests (the paper's ACDC-C and more), deterministic by (seed, severity).

Two entry points:

- `acdc_c(image, kind, seed)`: one realisation of the reference's ACDC-C generator (TorchIO ``RandomBiasField``,
  ``RandomSpike``, ``RandomGhosting``, ``RandomMotion`` with the reference's arguments, see `ACDC_C_RANGES`): every
  magnitude is drawn from the reference's range by `seed`. The robustness benchmark uses three seeds per kind;
- `corrupt(image, kind, severity, seed)`: six corruptions on a five-step ladder whose level 5 is the top of the
  reference's range (so level 5 is as strong as the strongest ACDC-C draw); for a fixed seed the artefact grows with
  severity (the seed fixes the random draws, the severity scales them).

Per kind: implementation; severity ladder 1 -> 5; ACDC-C draw (the reference's TorchIO arguments):

- `bias_field`: MONAI `RandBiasField`, degree 3, coefficients U(-c, c); c = 0.1 ... 0.5; ACDC-C c = 0.5 (order 3);
- `spike`: MONAI `KSpaceSpikeNoise` at a seeded off-centre location, r x max |k|; r = 0.6 ... 3; ACDC-C one spike,
  r ~ U(1, 3);
- `ghosting`: own k-space code (TorchIO model), line attenuation a = 0.5 ... 1.0; ACDC-C a ~ U(0.5, 1), n ~ U{4..10};
- `motion`: own k-space code (TorchIO model), 2 poses, max rotation 6 ... 30 deg and shift 2 ... 10 mm; ACDC-C
  rotation U(-30, 30) deg, shift U(-10, 10) mm;
- `gibbs`: MONAI `GibbsNoise`, alpha = 0.4 ... 0.8 (no randomness: seed unused); not in ACDC-C;
- `rician_noise`: MONAI `RandRicianNoise`, std = 0.02 ... 0.10 x image max; not in ACDC-C.

The magnitudes are the reference generator's (an earlier version of this module was milder: motion up to 10 deg /
10 px, spikes 0.1-0.75 x the spectrum maximum, ghosting 0.2-0.9). Millimetres become pixels through ``spacing_mm``
(default 1.36719 mm, the bundle's in-plane spacing), as TorchIO converts them through the image's spacing.

Why own code for ghosting and motion rather than TorchIO: TorchIO is not a dependency of this bundle (it pulls
SimpleITK and others, and its random draws come from the global torch RNG, whereas here each realisation is fixed by
its own seed and runs on 2-D slices or 3-D stacks alike). Both follow TorchIO's k-space models:

- ghosting: in the centred 2-D spectrum, every n-th line along the phase-encoding axis is scaled by (1 - a);
  the central 2 % of lines are restored (TorchIO's `restore`); n ~ U{4..10} and the axis come from the seed;
- motion: the object takes 2 seeded rigid poses (rotation, translation) at seeded times; the k-space lines along
  the phase-encoding axis acquired after each time point come from the spectrum of the moved object.
- spike: TorchIO sets the spike to intensity x the spectrum maximum; MONAI's `KSpaceSpikeNoise` does the same when
  given log(r x max).

Images are channel-first, (C, H, W) or (C, H, W, D), numpy or torch, finite floats; the output has the same shape
and container (float32). Artefacts act in-plane (H, W); for (C, H, W, D) the MONAI transforms act in 3-D and the own
ones slice by slice with the same draw. Intensities are not renormalised: do that as for clean test data.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import GibbsNoise, KSpaceSpikeNoise, RandBiasField, RandRicianNoise

__all__ = ["ACDC_C_KINDS", "ACDC_C_RANGES", "CORRUPTIONS", "SEVERITIES", "acdc_c", "corrupt", "ghosting", "motion"]

SEVERITIES = (1, 2, 3, 4, 5)
_BIAS_COEFF = (0.1, 0.2, 0.3, 0.4, 0.5)
_SPIKE_RATIO = (0.6, 1.2, 1.8, 2.4, 3.0)
_GHOST_INTENSITY = (0.5, 0.625, 0.75, 0.875, 1.0)
_MOTION_DEGREES = (6.0, 12.0, 18.0, 24.0, 30.0)
_MOTION_MM = (2.0, 4.0, 6.0, 8.0, 10.0)
DEFAULT_SPACING_MM = 1.36719
#: the reference's ACDC-C generator (TorchIO arguments): the ranges each realisation draws from
ACDC_C_RANGES = {
    "bias_field": {"coefficients": 0.5, "order": 3},
    "spike": {"num_spikes": 1, "intensity": (1.0, 3.0)},
    "ghosting": {"num_ghosts": (4, 10), "intensity": (0.5, 1.0), "restore": 0.02},
    "motion": {"degrees": 30.0, "translation_mm": 10.0, "num_transforms": 2},
}
ACDC_C_KINDS = tuple(ACDC_C_RANGES)
_GIBBS_ALPHA = (0.4, 0.5, 0.6, 0.7, 0.8)
_RICIAN_STD = (0.02, 0.04, 0.06, 0.08, 0.10)
_GHOST_RESTORE = 0.02
_MOTION_TRANSFORMS = 2


def _to_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validated float32 plain-tensor copy of a (C, H, W) or (C, H, W, D) image."""
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise TypeError(f"image must be a numpy array or torch tensor, got {type(image).__name__}")
    tensor = torch.as_tensor(image)
    if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in (torch.uint8, torch.int16,
                                                                                   torch.int32, torch.int64)):
        raise TypeError(f"image must hold real numbers, got dtype {tensor.dtype}")
    if tensor.ndim not in (3, 4):
        raise ValueError(f"image must be channel-first (C, H, W) or (C, H, W, D), got shape {tuple(tensor.shape)}")
    if min(tensor.shape[1:3]) < 4:
        raise ValueError(f"image H and W must be >= 4, got shape {tuple(tensor.shape)}")
    tensor = tensor.detach().to(torch.float32).clone().as_subclass(torch.Tensor)
    if not torch.isfinite(tensor).all():
        raise ValueError("image contains NaN or inf values")
    return tensor


def _like_input(result: torch.Tensor, image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    result = result.as_subclass(torch.Tensor).to(torch.float32)
    return result.numpy() if isinstance(image, np.ndarray) else result.to(image.device)


def _bias_field(img: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    return _bias_field_at(img, _BIAS_COEFF[severity - 1], seed)


def _bias_field_at(img: torch.Tensor, c: float, seed: int) -> torch.Tensor:
    transform = RandBiasField(degree=3, coeff_range=(-c, c), prob=1.0)
    transform.set_random_state(seed=seed)
    return transform(img)


def _spike(img: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    return _spike_at(img, _SPIKE_RATIO[severity - 1], np.random.default_rng(seed))


def _spike_at(img: torch.Tensor, ratio: float, rng: np.random.Generator) -> torch.Tensor:
    h, w = img.shape[1:3]
    # a location away from the k-space centre: offset 5-40 % of the size, random direction
    radius = rng.uniform(0.05, 0.4)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    loc = [int(round(h // 2 + radius * h * math.sin(angle))) % h, int(round(w // 2 + radius * w * math.cos(angle))) % w]
    if img.ndim == 4:
        loc.append(img.shape[3] // 2)
    spatial_dims = tuple(range(1, img.ndim))
    peak = torch.fft.fftn(img, dim=spatial_dims).abs().amax(dim=spatial_dims)  # per channel
    intensity = [float(torch.log(p * ratio + 1e-10)) for p in peak]
    locs = [(ch, *loc) for ch in range(img.shape[0])]
    return KSpaceSpikeNoise(loc=locs, k_intensity=intensity)(img)


def _gibbs(img: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    del seed  # deterministic transform
    return GibbsNoise(alpha=_GIBBS_ALPHA[severity - 1])(img)


def _rician(img: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    std = _RICIAN_STD[severity - 1] * max(float(img.abs().max()), 1e-8)
    transform = RandRicianNoise(prob=1.0, std=std, sample_std=False)
    transform.set_random_state(seed=seed)
    return transform(img)


def _centred_spectrum(img: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fft2(img, dim=(1, 2), norm="ortho"), dim=(1, 2))


def _image_from_spectrum(spectrum: torch.Tensor) -> torch.Tensor:
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(1, 2)), dim=(1, 2), norm="ortho")


def ghosting(img: torch.Tensor, intensity: float, num_ghosts: int, axis: int, restore: float = _GHOST_RESTORE):
    """Ghosting along in-plane `axis` (0 = H, 1 = W) of a (C, H, W[, D]) tensor; returns the real part.

    Every `num_ghosts`-th k-space line is multiplied by (1 - intensity); lines within `restore` x size of the
    centre keep their values (so the image contrast survives, as in TorchIO).
    """
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"intensity must be in [0, 1], got {intensity!r}")
    if not isinstance(num_ghosts, int) or num_ghosts < 2:
        raise ValueError(f"num_ghosts must be an int >= 2, got {num_ghosts!r}")
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (H) or 1 (W), got {axis!r}")
    if not 0.0 <= restore <= 1.0:
        raise ValueError(f"restore must be in [0, 1], got {restore!r}")
    spectrum = _centred_spectrum(img)
    size = img.shape[1 + axis]
    factors = torch.ones(size)
    factors[::num_ghosts] = 1.0 - intensity
    if restore > 0:  # keep the central restore x size lines (the image contrast)
        factors[(torch.arange(size) - size // 2).abs() <= restore * size / 2] = 1.0
    shape = [1] * img.ndim
    shape[1 + axis] = size
    return _image_from_spectrum(spectrum * factors.reshape(shape)).real


def _ghosting(img: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    num_ghosts = int(rng.integers(4, 11))
    axis = int(rng.integers(0, 2))
    return ghosting(img, _GHOST_INTENSITY[severity - 1], num_ghosts, axis)


def _rigid(slices: torch.Tensor, degrees: float, shift_hw: tuple[float, float]) -> torch.Tensor:
    """Rotate (about the centre) and translate (in pixels) a (N, 1, H, W) batch, bilinear, zero padding."""
    _, _, h, w = slices.shape
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # affine_grid works in normalised coordinates [-1, 1]; a pixel shift of s is 2 s / size there
    matrix = torch.tensor(
        [[cos, -sin * h / w, -2.0 * shift_hw[1] / w], [sin * w / h, cos, -2.0 * shift_hw[0] / h]], dtype=slices.dtype
    )
    grid = F.affine_grid(matrix.expand(slices.shape[0], 2, 3), list(slices.shape), align_corners=False)
    return F.grid_sample(slices, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def motion(img: torch.Tensor, degrees: list[float], shifts: list[tuple[float, float]], times: list[float],
           axis: int) -> torch.Tensor:
    """Rigid-motion artefact on a (C, H, W[, D]) tensor; returns the magnitude image.

    The object starts at rest and switches to pose i (rotation `degrees[i]`, shift `shifts[i]` in pixels (dy, dx))
    at acquisition time `times[i]` in (0, 1); k-space lines along in-plane `axis` (0 = H, 1 = W) are acquired in
    order, each taken from the spectrum of the object in its pose at that time.
    """
    if not (len(degrees) == len(shifts) == len(times)):
        raise ValueError(f"degrees, shifts and times must have one entry per pose, got {len(degrees)}, "
                         f"{len(shifts)}, {len(times)}")
    if any(not 0.0 < t < 1.0 for t in times) or list(times) != sorted(times):
        raise ValueError(f"times must be increasing values in (0, 1), got {times!r}")
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (H) or 1 (W), got {axis!r}")
    c, h, w = img.shape[:3]
    # (C, H, W[, D]) -> (C*D, 1, H, W) slices
    slices = img.movedim(3, 1).reshape(-1, 1, h, w) if img.ndim == 4 else img.reshape(-1, 1, h, w)
    spectrum = _centred_spectrum(slices[:, 0])
    size = (h, w)[axis]
    line_time = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    for deg, shift, start in zip(degrees, shifts, times):
        moved = _centred_spectrum(_rigid(slices, deg, shift)[:, 0])
        lines = line_time >= start
        selector = lines.reshape((size, 1) if axis == 0 else (1, size))
        spectrum = torch.where(selector, moved, spectrum)
    out = _image_from_spectrum(spectrum).abs()
    if img.ndim == 4:
        return out.reshape(c, -1, h, w).movedim(1, 3)
    return out.reshape(c, h, w)


def _motion(img: torch.Tensor, severity: int, seed: int, spacing_mm: float = DEFAULT_SPACING_MM) -> torch.Tensor:
    return _motion_at(img, _MOTION_DEGREES[severity - 1], _MOTION_MM[severity - 1] / spacing_mm,
                      np.random.default_rng(seed))


def _motion_at(img: torch.Tensor, deg: float, px: float, rng: np.random.Generator) -> torch.Tensor:
    """Poses drawn as TorchIO: rotation U(-deg, deg), shift U(-px, px) per axis, sorted times."""
    unit_rot = rng.uniform(-1.0, 1.0, _MOTION_TRANSFORMS)
    unit_shift = rng.uniform(-1.0, 1.0, (_MOTION_TRANSFORMS, 2))
    times = sorted(rng.uniform(0.15, 0.85, _MOTION_TRANSFORMS).tolist())
    axis = int(rng.integers(0, 2))
    return motion(img, (unit_rot * deg).tolist(), [tuple(s * px) for s in unit_shift], times, axis)


_IMPLEMENTATIONS = {
    "bias_field": _bias_field,
    "spike": _spike,
    "ghosting": _ghosting,
    "motion": _motion,
    "gibbs": _gibbs,
    "rician_noise": _rician,
}
CORRUPTIONS = tuple(_IMPLEMENTATIONS)


def corrupt(
    image: np.ndarray | torch.Tensor, kind: str, severity: int, seed: int = 0
) -> np.ndarray | torch.Tensor:
    """Return a corrupted float32 copy of `image`; same (kind, severity, seed) -> same output.

    Args:
        image: (C, H, W) or (C, H, W, D) numpy array or torch tensor of finite real values.
        kind: one of `CORRUPTIONS`.
        severity: 1 (mild) ... 5 (strong), see the module table.
        seed: non-negative int fixing every random draw (location, direction, noise).
    """
    if kind not in _IMPLEMENTATIONS:
        raise ValueError(f"kind must be one of {CORRUPTIONS}, got {kind!r}")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    tensor = _to_tensor(image)
    return _like_input(_IMPLEMENTATIONS[kind](tensor, severity, int(seed)), image)


def acdc_c(
    image: np.ndarray | torch.Tensor, kind: str, seed: int = 0, spacing_mm: float = DEFAULT_SPACING_MM
) -> np.ndarray | torch.Tensor:
    """One ACDC-C realisation: the reference generator's corruption `kind`, every magnitude drawn by `seed`.

    Args:
        image: (C, H, W) or (C, H, W, D) numpy array or torch tensor of finite real values.
        kind: one of `ACDC_C_KINDS` (bias field, spike, ghosting, motion).
        seed: non-negative int fixing every draw (the benchmark uses three seeds per kind).
        spacing_mm: in-plane pixel spacing, converting the motion's 10 mm translation range to pixels.
    """
    if kind not in ACDC_C_RANGES:
        raise ValueError(f"kind must be one of {ACDC_C_KINDS}, got {kind!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm!r}")
    tensor = _to_tensor(image)
    rng = np.random.default_rng([int(seed), 7919])
    ranges = ACDC_C_RANGES[kind]
    if kind == "bias_field":
        out = _bias_field_at(tensor, ranges["coefficients"], int(seed))
    elif kind == "spike":
        out = _spike_at(tensor, float(rng.uniform(*ranges["intensity"])), rng)
    elif kind == "ghosting":
        intensity = float(rng.uniform(*ranges["intensity"]))
        low, high = ranges["num_ghosts"]
        out = ghosting(tensor, intensity, int(rng.integers(low, high + 1)), int(rng.integers(0, 2)),
                       ranges["restore"])
    else:
        out = _motion_at(tensor, ranges["degrees"], ranges["translation_mm"] / spacing_mm, rng)
    return _like_input(out, image)
