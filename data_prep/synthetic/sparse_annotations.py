"""Sparse (weak) annotations derived from a dense mask, in the five forms FedICRA's sites train with.

Every function takes a dense class-index ``mask`` (H, W) with values ``0..num_classes-1`` and returns a
map of the same shape and dtype ``uint8`` in which unannotated pixels hold ``num_classes`` (the ignore
value the partial cross-entropy skips). Class 0 (background) is annotated too, as in the real data.

How each form looks, and the invariant the unit tests hold it to:

- ``scribble``: one thin (1 px) curve per region, including the background, drawn along a level set
  of the distance to the region's boundary and cut to an arc. Every scribble pixel lies in the region it
  labels.
- ``scribble_noisy``: the same kind of curve drawn close to the boundary and then shifted by a few pixels,
  so parts of it spill over into the neighbouring region (annotator error). Every pixel still lies within
  ``NOISY_MAX_SPILL`` pixels of its class's region.
- ``keypoint``: one to three small discs (radius 2) per region, each fully inside the region.
- ``block``: a few square blocks (one centred on a pixel of each class), inside which the label is the
  dense mask; unannotated elsewhere.
- ``box``: each structure's axis-aligned bounding box filled with the structure's class (fundus: the disc
  box holds the rim class 2 and the cup box, drawn on top, the cup class 1); everything farther than a
  small margin outside the outer box is background; the margin ring is unannotated. Inside a box the label
  therefore equals the mask only on pixels of the box's class: the corners are over-claimed, as a real box
  annotation is.

The reference release (llmir/FedICRA) ships these maps precomputed; its generation code is not public,
so the forms above follow the paper's description and figures, not a byte-for-byte recipe.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from data_prep.fedicra_layout import SPARSE_FORMS

__all__ = [
    "SPARSE_FORMS",
    "NOISY_MAX_SPILL",
    "KEYPOINT_RADIUS",
    "scribble",
    "scribble_noisy",
    "keypoint",
    "block",
    "block_boxes",
    "box",
    "all_sparse_forms",
]

NOISY_MAX_SPILL = 9  # px: largest distance a noisy-scribble pixel may lie outside its class's region
KEYPOINT_RADIUS = 2


def _check_mask(mask: np.ndarray, num_classes: int) -> None:
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    if mask.size and (mask.min() < 0 or mask.max() >= num_classes):
        raise ValueError(f"mask values must lie in 0..{num_classes - 1}, got {np.unique(mask).tolist()}")


def _empty(mask: np.ndarray, num_classes: int) -> np.ndarray:
    return np.full(mask.shape, num_classes, dtype=np.uint8)


def _object_centre(mask: np.ndarray) -> np.ndarray:
    """Centroid of the foreground (all classes > 0), or the image centre when there is none."""
    fg = np.argwhere(mask > 0)
    return fg.mean(axis=0) if len(fg) else (np.array(mask.shape, dtype=float) - 1) / 2


def _arc(curve: np.ndarray, centre: np.ndarray, rng: np.random.Generator, lo: float = 0.35, hi: float = 0.75):
    """Keep the pixels of ``curve`` whose angle around ``centre`` falls in one random interval."""
    pts = np.argwhere(curve)
    if len(pts) == 0:
        return curve
    ang = np.arctan2(pts[:, 0] - centre[0], pts[:, 1] - centre[1])
    start = rng.uniform(-np.pi, np.pi)
    width = rng.uniform(lo, hi) * 2 * np.pi
    keep = np.mod(ang - start, 2 * np.pi) < width
    out = np.zeros_like(curve)
    out[tuple(pts[keep].T)] = True
    return out if out.any() else curve


def _level_curve(region: np.ndarray, is_background: bool, rng: np.random.Generator, near_edge: bool) -> np.ndarray:
    """The 1-px contour of ``{d >= level}``, ``d`` the distance to the region's boundary (image border excluded)."""
    dist = ndimage.distance_transform_edt(region)
    dmax = float(dist.max())
    if near_edge:
        level = rng.uniform(1.0, 2.5)
    elif is_background:
        level = rng.uniform(6.0, 16.0)
    else:
        level = rng.uniform(0.35, 0.6) * dmax
    level = min(level, max(dmax - 0.5, 0.5))
    inner = dist >= level
    return inner & ~ndimage.binary_erosion(inner, border_value=1)


def _largest_piece(curve: np.ndarray) -> np.ndarray:
    """The largest 8-connected piece: an annulus's level set has an inner and an outer contour, keep one."""
    labels, n = ndimage.label(curve, structure=np.ones((3, 3)))
    if n <= 1:
        return curve
    return labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)


def _curve_per_region(mask, num_classes, rng, near_edge):
    centre = _object_centre(mask)
    curves = []
    for k in range(num_classes):
        region = mask == k
        if not region.any():
            continue
        curve = _largest_piece(_arc(_level_curve(region, k == 0, rng, near_edge), centre, rng))
        if not curve.any():  # region thinner than the band: fall back to its deepest pixel
            dist = ndimage.distance_transform_edt(region)
            curve = np.zeros_like(region)
            curve[np.unravel_index(np.argmax(dist), dist.shape)] = True
        curves.append((k, curve))
    return curves


def scribble(mask: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Thin curves inside every region (background included); see the module docstring."""
    _check_mask(mask, num_classes)
    out = _empty(mask, num_classes)
    for k, curve in _curve_per_region(mask, num_classes, rng, near_edge=False):
        out[curve] = k
    return out


def _shift(curve: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate a boolean map by (dy, dx) pixels; what leaves the image is dropped."""
    out = np.zeros_like(curve)
    h, w = curve.shape
    ys, xs = np.nonzero(curve)
    ys, xs = ys + dy, xs + dx
    ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    out[ys[ok], xs[ok]] = True
    return out


def scribble_noisy(mask: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Scribbles drawn near the boundary and shifted by 3-6 px so that they spill over it.

    Background first, then the classes in increasing order, so foreground strokes win where they cross.
    """
    _check_mask(mask, num_classes)
    out = _empty(mask, num_classes)
    for k, curve in _curve_per_region(mask, num_classes, rng, near_edge=True):
        length = rng.uniform(3.0, 6.0)
        angle = rng.uniform(-np.pi, np.pi)
        shifted = _shift(curve, int(round(length * np.sin(angle))), int(round(length * np.cos(angle))))
        out[shifted if shifted.any() else curve] = k
    return out


def keypoint(
    mask: np.ndarray, num_classes: int, rng: np.random.Generator, max_points: int = 3, radius: int = KEYPOINT_RADIUS
) -> np.ndarray:
    """One to ``max_points`` discs of ``radius`` per region, each disc entirely inside its region."""
    _check_mask(mask, num_classes)
    out = _empty(mask, num_classes)
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = yy**2 + xx**2 <= radius**2
    for k in range(num_classes):
        region = mask == k
        if not region.any():
            continue
        # distance to the nearest pixel outside the region *or* outside the image, so discs stay whole
        dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        candidates = np.argwhere(dist > radius + 0.5)
        if len(candidates) == 0:  # region too thin for a disc: annotate its deepest pixel only
            out[np.unravel_index(np.argmax(dist), dist.shape)] = k
            continue
        n = int(rng.integers(1, max_points + 1))
        for cy, cx in candidates[rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)]:
            out[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1][disc] = k
    return out


def block_boxes(mask: np.ndarray, num_classes: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Square blocks ``(y0, y1, x0, x1)`` (half-open): one centred on a random pixel of each present class.

    The side is 10-16 % of the image side (at least 8 px), clipped at the image border.
    """
    h, w = mask.shape
    boxes = []
    for k in range(num_classes):
        pts = np.argwhere(mask == k)
        if len(pts) == 0:
            continue
        cy, cx = pts[rng.integers(len(pts))]
        half = max(4, int(round(rng.uniform(0.10, 0.16) * min(h, w) / 2)))
        boxes.append((max(0, cy - half), min(h, cy + half), max(0, cx - half), min(w, cx + half)))
    return boxes


def block(mask: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """The dense mask copied inside the blocks of :func:`block_boxes`; unannotated elsewhere."""
    _check_mask(mask, num_classes)
    out = _empty(mask, num_classes)
    for y0, y1, x0, x1 in block_boxes(mask, num_classes, rng):
        out[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
    return out


def _bbox(region: np.ndarray) -> tuple[int, int, int, int] | None:
    pts = np.argwhere(region)
    if len(pts) == 0:
        return None
    (y0, x0), (y1, x1) = pts.min(axis=0), pts.max(axis=0) + 1
    return int(y0), int(y1), int(x0), int(x1)


def box(mask: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Filled bounding boxes, background beyond a 3-8 px margin, the margin unannotated.

    Structures are nested (fundus: disc = classes >= 1 contains cup = class 1), so structure ``k`` is the
    region ``mask >= k`` and its box is filled with class ``num_classes - 1`` for the outermost and ``k``
    for inner ones; for two classes (FAZ) this is simply the FAZ box filled with 1.
    """
    _check_mask(mask, num_classes)
    out = _empty(mask, num_classes)
    outer = _bbox(mask >= 1)
    if outer is None:  # no structure: every pixel is known background
        out[:] = 0
        return out
    margin = int(rng.integers(3, 9))
    h, w = mask.shape
    y0, y1, x0, x1 = outer
    out[:] = 0
    out[max(0, y0 - margin) : min(h, y1 + margin), max(0, x0 - margin) : min(w, x1 + margin)] = num_classes
    out[y0:y1, x0:x1] = num_classes - 1
    for k in range(num_classes - 2, 0, -1):  # inner structures on top, outermost-first order
        inner = _bbox((mask >= 1) & (mask <= k))
        if inner is not None:
            a0, a1, b0, b1 = inner
            out[a0:a1, b0:b1] = k
    return out


_FORMS = {"scribble": scribble, "scribble_noisy": scribble_noisy, "keypoint": keypoint, "block": block, "box": box}


def all_sparse_forms(mask: np.ndarray, num_classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every form of :data:`SPARSE_FORMS` for one mask, drawn from ``rng`` in a fixed order."""
    return {name: _FORMS[name](mask, num_classes, rng) for name in SPARSE_FORMS}
