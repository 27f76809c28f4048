"""Synthetic FAZ (OCTA) and fundus optic disc/cup sets in the exact layouts of the FedICRA release.

Writes, under ``out``, for ``task`` in {faz, odoc}:

- ``FAZ_h5/Domain{k}/{train,test}/<case>.h5`` (``ODOC_h5`` for fundus): datasets ``image`` (FAZ float32
  (H, W); fundus float32 (3, H, W), channel first as the reference loader's ``rot90(axes=(1, 2))`` implies;
  intensities in [0, 1]), ``mask`` (uint8 class indices) and, in train files, the sparse maps
  ``scribble``, ``scribble_noisy``, ``keypoint``, ``block``, ``box`` (uint8, unannotated = number of classes);
- ``FAZ/Domain{k}/train/{imgs,mask,scr,scr_n,keypoint,block,box}/<case>.png`` and
  ``FAZ/Domain{k}/test/{imgs,mask}/<case>.png`` (``ODOC`` for fundus): 8-bit PNGs, images grey ``L``
  (FAZ) or ``RGB`` (fundus) scaled by 255, label maps grey ``L`` holding the class indices themselves.

Five sites with different appearance (brightness, contrast, colour cast, blur, noise, field of view), as the
five public sources of each task differ. Images are toy renderings: dark avascular blobs in a capillary-like
mesh, and a bright disc with a brighter cup on an orange retina with vessels. Good for exercising the
pipeline, the weak losses and the federated plumbing; not for judging segmentation accuracy.

    python -m data_prep.synthetic.fedicra --out data/fedicra --task both
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from scipy import ndimage

from data_prep.common import atomic_dir, progress
from data_prep.fedicra_layout import PNG_SPARSE_DIRS, TASKS
from data_prep.synthetic.sparse_annotations import all_sparse_forms

__all__ = ["SiteStyle", "FAZ_STYLES", "ODOC_STYLES", "faz_case", "odoc_case", "generate"]



@dataclass(frozen=True)
class SiteStyle:
    """Per-site acquisition look. ``fov`` is the OCTA field of view in mm (FAZ) or the fundus FOV radius
    as a fraction of the half image side (ODOC); ``colour`` multiplies RGB (fundus only)."""

    brightness: float
    contrast: float
    blur: float
    noise: float
    fov: float
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)


# FAZ sites: FAZID-like, OCTA-500 3 mm, OCTA-500 6 mm, a large mixed set, ROSE-like (digest section 1)
FAZ_STYLES = (
    SiteStyle(brightness=0.00, contrast=1.00, blur=0.6, noise=0.04, fov=3.0),
    SiteStyle(brightness=0.05, contrast=0.85, blur=0.4, noise=0.02, fov=3.0),
    SiteStyle(brightness=-0.05, contrast=1.10, blur=0.8, noise=0.05, fov=6.0),
    SiteStyle(brightness=0.10, contrast=0.70, blur=1.0, noise=0.03, fov=4.5),
    SiteStyle(brightness=-0.02, contrast=1.20, blur=0.3, noise=0.07, fov=3.0),
)
# fundus sites: Drishti-GS, RIM-ONE r3, REFUGE train, REFUGE val, a fifth set
ODOC_STYLES = (
    SiteStyle(brightness=0.00, contrast=1.00, blur=0.5, noise=0.02, fov=1.6, colour=(1.00, 0.95, 0.85)),
    SiteStyle(brightness=-0.08, contrast=0.90, blur=1.0, noise=0.03, fov=1.2, colour=(0.90, 0.80, 0.90)),
    SiteStyle(brightness=0.05, contrast=1.10, blur=0.7, noise=0.02, fov=1.8, colour=(1.05, 0.90, 0.70)),
    SiteStyle(brightness=0.08, contrast=0.95, blur=0.4, noise=0.015, fov=1.8, colour=(1.00, 1.00, 0.95)),
    SiteStyle(brightness=-0.03, contrast=1.15, blur=1.2, noise=0.04, fov=1.4, colour=(0.95, 0.85, 1.05)),
)


def _finish(img: np.ndarray, style: SiteStyle, rng: np.random.Generator, axes: tuple[int, ...]) -> np.ndarray:
    """Site look: blur, contrast about 0.5, brightness, noise; clipped to [0, 1], float32."""
    sigma = [style.blur if a in axes else 0.0 for a in range(img.ndim)]
    img = ndimage.gaussian_filter(img, sigma)
    img = (img - 0.5) * style.contrast * rng.uniform(0.95, 1.05) + 0.5 + style.brightness
    img = img + rng.normal(0.0, style.noise, img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _wobbly_radius(theta: np.ndarray, r0: float, rng: np.random.Generator, amp: float) -> np.ndarray:
    r = np.ones_like(theta)
    for harmonic in (2, 3, 4):
        r += rng.uniform(0, amp) * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    return r0 * r


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """White noise blurred by a Gaussian of ``sigma`` px, in Fourier space (cost independent of sigma;
    periodic borders, which a texture does not mind)."""
    spectrum = ndimage.fourier_gaussian(np.fft.rfft2(rng.normal(size=shape)), sigma, n=shape[1])
    return np.fft.irfft2(spectrum, s=shape)


def _ridges(shape: tuple[int, int], sigma: float, width: float, rng: np.random.Generator) -> np.ndarray:
    """Thin bright curves: the zero crossings of smoothed noise, a cheap capillary-like mesh."""
    field = _smooth_noise(shape, sigma, rng)
    field /= field.std() + 1e-8
    return np.exp(-((field / width) ** 2))


def faz_case(size: int, style: SiteStyle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One OCTA-like en-face image (H, W) in [0, 1] and its FAZ mask (0 bg, 1 FAZ)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = size / 2 + rng.normal(0, size * 0.03, 2)
    theta = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot(yy - cy, xx - cx)
    scale = 3.0 / style.fov  # a wider field of view shows the same FAZ smaller
    radius = _wobbly_radius(theta, size * rng.uniform(0.07, 0.12) * scale, rng, 0.12)
    mask = (dist < radius).astype(np.uint8)
    capillaries = _ridges((size, size), 2.0 * scale * size / 256, 0.25, rng)
    vessels = _ridges((size, size), 7.0 * scale * size / 256, 0.10, rng)
    avascular = 1.0 / (1.0 + np.exp(-(dist - radius) / 1.5))  # 0 inside the FAZ, 1 outside
    img = 0.10 + (0.9 * capillaries + 0.6 * vessels) * avascular
    return _finish(img, style, rng, axes=(0, 1)), mask


def _vessel_tree(size: int, cy: float, cx: float, start_r: float, rng: np.random.Generator) -> np.ndarray:
    """Soft map of 6-10 vessels leaving the cup edge (``start_r`` from the centre) as random-walk polylines."""
    canvas = np.zeros((size, size))
    for _ in range(int(rng.integers(6, 11))):
        angle = rng.uniform(-np.pi, np.pi)
        y, x = cy + start_r * np.sin(angle), cx + start_r * np.cos(angle)
        thick = rng.uniform(0.8, 1.8)
        for _ in range(int(size * 1.2)):
            angle += rng.normal(0, 0.06)
            y, x = y + np.sin(angle), x + np.cos(angle)
            if not (0 <= y < size and 0 <= x < size):
                break
            canvas[int(y), int(x)] = thick
    sigma = max(0.5, size / 256)
    return np.clip(ndimage.gaussian_filter(canvas, sigma) * 3.0, 0.0, 1.0)


def odoc_case(size: int, style: SiteStyle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One fundus-like disc-centred crop (3, H, W) in [0, 1] and its mask (0 bg, 1 cup, 2 disc rim)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = size / 2 + rng.normal(0, size * 0.04, 2)
    theta = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot((yy - cy) / rng.uniform(0.9, 1.1), xx - cx)
    disc_r = _wobbly_radius(theta, size * rng.uniform(0.17, 0.24), rng, 0.05)
    ccy, ccx = cy + rng.normal(0, 2), cx + rng.normal(0, 2)
    cup_dist = np.hypot(yy - ccy, xx - ccx)
    cup_r = _wobbly_radius(theta, disc_r.mean() * rng.uniform(0.35, 0.65), rng, 0.06)
    disc, cup = dist < disc_r, (cup_dist < cup_r) & (dist < disc_r - 2)
    mask = np.where(cup, 1, np.where(disc, 2, 0)).astype(np.uint8)

    soft_disc = 1.0 / (1.0 + np.exp(-(disc_r - dist) / 2.0))
    soft_cup = 1.0 / (1.0 + np.exp(-(cup_r - cup_dist) / 2.5)) * soft_disc
    illumination = _smooth_noise((size, size), size / 8, rng)
    illumination = 1.0 + 0.15 * illumination / (illumination.std() + 1e-8)
    base = np.array([0.72, 0.32, 0.12])[:, None, None] * illumination
    img = base + np.array([0.25, 0.35, 0.25])[:, None, None] * soft_disc
    img = img + np.array([0.05, 0.15, 0.20])[:, None, None] * soft_cup
    vessels = _vessel_tree(size, cy, cx, float(cup_r.mean()), rng)
    img = img * (1.0 - np.array([0.35, 0.6, 0.6])[:, None, None] * vessels)
    img = img * np.asarray(style.colour)[:, None, None]
    fov = np.hypot(yy - size / 2, xx - size / 2) < style.fov * size / 2
    img = img * fov
    return _finish(img, style, rng, axes=(1, 2)), mask


def _to_png_image(image: np.ndarray, task: str) -> Image.Image:
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    if task == "odoc":
        return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), mode="RGB")
    return Image.fromarray(pixels, mode="L")


def _write_h5(path: Path, image: np.ndarray, mask: np.ndarray, sparse: dict[str, np.ndarray] | None) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)  # noisy floats do not compress; gzip would only cost time
        for name, arr in {"mask": mask, **(sparse or {})}.items():
            f.create_dataset(name, data=arr, compression="gzip", compression_opts=1)


def _write_png_case(domain: Path, split: str, name: str, image, mask, sparse, task: str) -> None:
    folders = {"imgs": None, "mask": mask}
    if split == "train":
        folders.update({PNG_SPARSE_DIRS[k]: v for k, v in sparse.items()})
    for folder, arr in folders.items():
        (domain / split / folder).mkdir(parents=True, exist_ok=True)
        pic = _to_png_image(image, task) if arr is None else Image.fromarray(arr.astype(np.uint8), mode="L")
        pic.save(domain / split / folder / f"{name}.png", compress_level=1)


def _site_cases(task: str, site: int, n_train: int, n_test: int, size: int, seed: int):
    """Yield (split, case name, image, mask, sparse maps or None) for one site, deterministic by seed."""
    styles, make = (FAZ_STYLES, faz_case) if task == "faz" else (ODOC_STYLES, odoc_case)
    style = styles[(site - 1) % len(styles)]
    rng = np.random.default_rng([seed, site, 0 if task == "faz" else 1])
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            image, mask = make(size, style, rng)
            sparse = all_sparse_forms(mask, TASKS[task].num_classes, rng) if split == "train" else None
            yield split, f"d{site}_{split}_{i:03d}", image, mask, sparse


def generate(
    out: str | Path = "data/fedicra",
    task: str = "both",
    n_sites: int = 5,
    n_train: int = 8,
    n_test: int = 4,
    size: int = 256,
    layout: str = "both",
    seed: int = 0,
) -> list[Path]:
    """Write the synthetic set(s); return the written layout roots (e.g. ``out/FAZ_h5``, ``out/FAZ``).

    Args:
        task: ``faz``, ``odoc`` or ``both``.
        n_train, n_test: images per site in ``train`` / ``test``.
        size: image side in pixels (the release uses 256).
        layout: ``h5``, ``png`` or ``both``.
    """
    tasks = ("faz", "odoc") if task == "both" else (task,)
    layouts = ("h5", "png") if layout == "both" else (layout,)
    for name, value, allowed in (("task", task, ("faz", "odoc", "both")), ("layout", layout, ("h5", "png", "both"))):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    sizes = (("n_sites", n_sites, 1), ("n_train", n_train, 1), ("n_test", n_test, 1), ("size", size, 32))
    for name, value, low in sizes:
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value!r}")
    written = []
    for t in tasks:
        roots = {lay: Path(out) / (TASKS[t].h5_dir if lay == "h5" else TASKS[t].png_dir) for lay in layouts}
        with contextlib.ExitStack() as stack:  # every layout root renamed into place only on success
            tmp = {lay: stack.enter_context(atomic_dir(root, owner="data_prep.fedicra generate", marker_beside=True))
                   for lay, root in roots.items()}
            for site in progress(range(1, n_sites + 1), f"{t} sites"):
                for split, name, image, mask, sparse in _site_cases(t, site, n_train, n_test, size, seed):
                    if "h5" in tmp:
                        folder = tmp["h5"] / f"Domain{site}" / split
                        folder.mkdir(parents=True, exist_ok=True)
                        _write_h5(folder / f"{name}.h5", image, mask, sparse)
                    if "png" in tmp:
                        _write_png_case(tmp["png"] / f"Domain{site}", split, name, image, mask, sparse, t)
        written.extend(roots.values())
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.synthetic.fedicra", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generate_arguments(p)
    a = p.parse_args(argv)
    for root in generate(a.out, a.task, a.n_sites, a.n_train, a.n_test, a.size, a.layout, a.seed):
        print(f"wrote {root}")
    return 0


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    """The generator's options, shared with ``python -m data_prep.fedicra generate``."""
    p.add_argument("--out", default="data/fedicra",
                   help="parent of FAZ_h5/, FAZ/, ODOC_h5/, ODOC/ (default: %(default)s)")
    p.add_argument("--task", choices=("faz", "odoc", "both"), default="both", help="(default: %(default)s)")
    p.add_argument("--layout", choices=("h5", "png", "both"), default="both", help="(default: %(default)s)")
    p.add_argument("--n-sites", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--n-train", type=int, default=8, help="train images per site (default: %(default)s)")
    p.add_argument("--n-test", type=int, default=4, help="test images per site (default: %(default)s)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)


if __name__ == "__main__":
    sys.exit(main())
