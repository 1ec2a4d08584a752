"""Regenerates the bundled sample images in this directory (see SOURCES.md).

    python scripts/make_samples.py

``chelsea.jpg``, ``hubble.jpg``, ``astronaut.jpg`` and ``rocket.jpg`` are resized from
scikit-image's bundled data files (needs scikit-image installed); ``strokes.jpg`` and
``mosaic.jpg`` are drawn procedurally below, from fixed seeds, so they are our own work with no
third-party rights in them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nst_jax.image_io import load_image, save_image
from nst_jax.imageops import resize_longest

HERE = Path(__file__).resolve().parent.parent / "nst_jax" / "samples"
LONGEST_SIDE = 256


def _from_skimage(filename: str, out_name: str) -> None:
    import skimage.data  # only needed to regenerate the samples

    src = Path(skimage.data.__file__).parent / filename
    img = load_image(src)
    img = resize_longest(img, LONGEST_SIDE)
    save_image(HERE / out_name, img)


def brush_strokes(size: int = LONGEST_SIDE, *, seed: int = 0) -> np.ndarray:
    """A swirling brush-stroke 'painting' (float RGB in [0, 1]) for use as a style image.

    Thousands of short strokes follow a smooth flow field made of a few vortices, coloured from a
    blue/yellow palette with jitter; drawn at 2x and downsampled for antialiasing.
    """
    rng = np.random.default_rng(seed)
    s = 2 * size
    canvas = Image.new("RGB", (s, s), (20, 40, 90))
    draw = ImageDraw.Draw(canvas)
    vortices = [(rng.uniform(0, s), rng.uniform(0, s), rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2))
                for _ in range(5)]
    palette = np.array(
        [(25, 50, 120), (40, 90, 170), (90, 140, 200), (230, 200, 70), (250, 230, 140),
         (20, 30, 60), (200, 120, 40), (120, 170, 160)], dtype=np.float64)

    def angle(x: float, y: float) -> float:
        a = 0.6 * math.sin(x / 55.0) + 0.5 * math.cos(y / 70.0)
        for vx, vy, strength in vortices:
            dx, dy = x - vx, y - vy
            r2 = dx * dx + dy * dy + 400.0
            a += strength * 6000.0 / r2 * math.atan2(dy, dx) / math.pi
        return a

    for _ in range(4500):
        x, y = rng.uniform(0, s), rng.uniform(0, s)
        # Brighter, warmer strokes cluster around the vortices, like painted stars.
        near = min(math.hypot(x - vx, y - vy) for vx, vy, _ in vortices)
        base = palette[rng.integers(3, 5)] if near < 45 and rng.random() < 0.8 else palette[rng.integers(0, 8)]
        colour = tuple(int(c) for c in np.clip(base + rng.normal(0, 18, 3), 0, 255))
        width = int(rng.integers(3, 8))
        points = [(x, y)]
        for _ in range(int(rng.integers(4, 10))):
            a = angle(x, y)
            x, y = x + 6.0 * math.cos(a), y + 6.0 * math.sin(a)
            points.append((x, y))
        draw.line(points, fill=colour, width=width, joint="curve")
    small = canvas.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float32) / 255.0


def flat_mosaic(size: int = LONGEST_SIDE, *, seed: int = 1, cells: int = 60) -> np.ndarray:
    """A poster-like mosaic (float RGB in [0, 1]) of flat colour regions with dark outlines.

    ``cells`` random sites split the square into Voronoi regions, each filled with one colour of
    a small saturated palette, and the borders between regions are drawn in near-black, as in
    stained glass or a flat-colour print: a style made of large uniform areas and hard edges,
    unlike the brush strokes. Drawn at 2x and downsampled for antialiasing.
    """
    rng = np.random.default_rng(seed)
    s = 2 * size
    sites = rng.uniform(0, s, (cells, 2))
    palette = np.array([(214, 40, 40), (247, 127, 0), (252, 191, 73), (234, 226, 183),
                        (0, 48, 73), (42, 157, 143), (233, 196, 106), (38, 70, 83)], np.float64)
    colours = palette[rng.integers(0, len(palette), cells)]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    d = (yy[..., None] - sites[:, 0]) ** 2 + (xx[..., None] - sites[:, 1]) ** 2
    order = np.argsort(d, axis=-1)
    nearest, second = order[..., 0], order[..., 1]
    gap = np.sqrt(np.take_along_axis(d, second[..., None], -1)[..., 0]) - np.sqrt(
        np.take_along_axis(d, nearest[..., None], -1)[..., 0])
    img = colours[nearest]
    img[gap < 5.0] = (20, 20, 24)  # the outlines between regions
    small = Image.fromarray(img.astype(np.uint8)).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float32) / 255.0


def main() -> None:
    _from_skimage("chelsea.png", "chelsea.jpg")
    _from_skimage("hubble_deep_field.jpg", "hubble.jpg")
    _from_skimage("astronaut.png", "astronaut.jpg")
    _from_skimage("rocket.jpg", "rocket.jpg")
    _from_skimage("coffee.png", "coffee.jpg")
    _from_skimage("ihc.png", "ihc.jpg")
    save_image(HERE / "strokes.jpg", brush_strokes())
    save_image(HERE / "mosaic.jpg", flat_mosaic())


if __name__ == "__main__":
    main()
