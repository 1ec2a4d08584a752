"""A style × content grid from one batched call: ``stylize_batch(..., pairing="product")``.

Row 0 shows the style images, column 0 the content images, and cell (i, j) content ``i`` painted
in style ``j``; every header cell is labelled with the image's name. All pairs of one shape run as one vmapped, sharded batch (see
:func:`nst_jax.stylize_batch`). Images are bundled sample names or paths.

    python scripts/stylize_grid.py --weights random --size 64 --steps 20   # writes out/grid.png
    python scripts/stylize_grid.py --contents chelsea my.jpg --styles strokes hubble --preset gatys
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from nst_jax import image_io, imageops
from nst_jax.run.transfer import stylize_batch
from nst_jax.config import PRESETS, get_preset
from nst_jax.weights.store import resolve_weights

PAD = 6


def _load(name: str) -> np.ndarray:
    path = Path(name) if Path(name).exists() else image_io.sample_path(name)
    return image_io.load_image(path)


def _cell(img: np.ndarray, side: int) -> np.ndarray:
    """``img`` scaled to fit a ``side × side`` white square (aspect ratio kept, centred)."""
    small = imageops.resize_longest(img, side)
    h, w = small.shape[:2]
    out = np.ones((side, side, 3), np.float32)
    y, x = (side - h) // 2, (side - w) // 2
    out[y:y + h, x:x + w] = small
    return out


def _label(cell: np.ndarray, text: str) -> np.ndarray:
    """``cell`` with ``text`` on a white band along its bottom edge."""
    from PIL import Image, ImageDraw

    from nst_jax.figures import label_font

    im = Image.fromarray(np.round(np.clip(cell, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    font = label_font(max(10, cell.shape[0] // 12))
    band = font.size + 4 if hasattr(font, "size") else 14
    draw.rectangle([0, cell.shape[0] - band, cell.shape[1], cell.shape[0]], fill=(255, 255, 255))
    draw.text((3, cell.shape[0] - band + 1), text, fill=(0, 0, 0), font=font)
    return np.asarray(im, np.float32) / 255.0


def compose_grid(contents, styles, results, side: int, content_names=None,
                 style_names=None) -> np.ndarray:
    """``(1 + C) × (1 + S)`` cells: styles along the top, contents down the left, results inside.

    ``results`` is content-major (``results[c * S + s]``), the order of ``pairing="product"``.
    Header cells are labelled with ``content_names`` / ``style_names`` when given.
    """
    corner = np.ones((side, side, 3), np.float32)
    if content_names and style_names:
        corner = _label(corner, "content \\ style")
    head = [_cell(s, side) for s in styles]
    if style_names:
        head = [_label(c, f"style: {n}") for c, n in zip(head, style_names)]
    rows = [[corner] + head]
    for c, content in enumerate(contents):
        row = [_cell(content, side)]
        if content_names:
            row = [_label(row[0], f"content: {content_names[c]}")]
        row += [_cell(results[c * len(styles) + s].image, side) for s in range(len(styles))]
        rows.append(row)
    n_r, n_c = len(rows), len(rows[0])
    grid = np.ones((n_r * side + (n_r + 1) * PAD, n_c * side + (n_c + 1) * PAD, 3), np.float32)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            y, x = PAD + i * (side + PAD), PAD + j * (side + PAD)
            grid[y:y + side, x:x + side] = cell
    return grid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contents", nargs="+", default=["chelsea", "hubble"],
                   help="content images: sample names or paths (default chelsea hubble)")
    p.add_argument("--styles", nargs="+", default=["strokes", "hubble"],
                   help="style images: sample names or paths (default strokes hubble)")
    p.add_argument("--preset", default="tf-tutorial", choices=sorted(PRESETS))
    p.add_argument("--size", type=int, default=128, help="longest side of each result")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--weights", default=None, help="weights file, or 'random' (default: found)")
    p.add_argument("--cell", type=int, default=160, help="grid cell size in pixels")
    p.add_argument("-o", "--output", default=str(Path("out") / "grid.png"),
                   help="output image (default out/grid.png; out/ is created and git-ignored)")
    args = p.parse_args()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)

    image_io.check_output_path(args.output)
    contents = [_load(c) for c in args.contents]
    styles = [_load(s) for s in args.styles]
    config = get_preset(args.preset).replace(size=args.size, steps=args.steps)
    weights = resolve_weights(args.weights)
    start = time.perf_counter()
    results = stylize_batch(contents, styles, config, weights, pairing="product")
    seconds = time.perf_counter() - start
    names = lambda xs: [Path(x).stem for x in xs]  # noqa: E731
    image_io.save_image(args.output, compose_grid(contents, styles, results, args.cell,
                                                  names(args.contents), names(args.styles)))
    print(f"wrote {args.output}: {len(contents)} contents x {len(styles)} styles in "
          f"{seconds:.1f}s ({weights.label})")
    for (c, s), r in zip([(c, s) for c in args.contents for s in args.styles], results):
        print(f"  {c} in the style of {s}: loss {r.loss:.4g}, {r.steps} steps")


if __name__ == "__main__":
    main()
