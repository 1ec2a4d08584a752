"""Render one content image under each artist control, side by side.

    python scripts/controls_figure.py -o controls.png [--weights PATH|random] [--size 128] [--steps 150]

Panels: content | style | plain | multi-scale | luminance only | colour-matched style |
two styles blended | two styles by region mask (top / bottom) | iterate averaging (EMA).
Uses the bundled public-domain samples unless --content/--style/--style2 are given.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from nst_jax import figures, image_io
from nst_jax.cli.common import announce_weights
from nst_jax.config import get_preset
from nst_jax.errors import NstError
from nst_jax.run.transfer import stylize
from nst_jax.weights.store import resolve_weights


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="controls.png")
    p.add_argument("--content", default=str(image_io.sample_path(image_io.SAMPLE_CONTENT)))
    p.add_argument("--style", default=str(image_io.sample_path(image_io.SAMPLE_STYLES[0])))
    p.add_argument("--style2", default=str(image_io.sample_path(image_io.SAMPLE_STYLES[1])))
    p.add_argument("--weights", default=None, help="weights file, or 'random'")
    p.add_argument("--preset", default="tf-tutorial")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=150)
    args = p.parse_args(argv)
    try:
        image_io.check_output_path(args.output)
        content = image_io.load_image(args.content)
        style, style2 = image_io.load_image(args.style), image_io.load_image(args.style2)
        weights = resolve_weights(args.weights)
        announce_weights(weights)
        base = get_preset(args.preset).replace(size=args.size, steps=args.steps, chunk_size=25)
        half = np.zeros(content.shape[:2], np.float32)
        half[: content.shape[0] // 2] = 1.0
        runs = [
            ("plain", base, [style], {}),
            ("multi-scale x3", base.replace(scales=3, steps=max(1, args.steps // 3)), [style], {}),
            ("luminance only", base.replace(preserve_colors="luminance"), [style], {}),
            ("colour-matched", base.replace(preserve_colors="match"), [style], {}),
            ("blend 0.7/0.3", base, [style, style2], {"style_blend": [0.7, 0.3]}),
            ("masks top/bottom", base, [style, style2], {"masks": np.stack([half, 1 - half])}),
            ("EMA 0.95", base.replace(ema_decay=0.95), [style], {}),
        ]
        panels, labels = [content, style], ["content", "style"]
        for label, config, styles, kw in runs:
            t = time.perf_counter()
            result = stylize(content, styles, config, weights, **kw)
            print(f"{label:18s} loss {result.loss:10.4g}  {time.perf_counter() - t:6.1f}s", flush=True)
            panels.append(result.image)
            labels.append(label)
        figures.side_by_side(panels, labels, args.output, height=args.size)
        print(f"wrote {args.output}")
    except NstError as err:
        print(f"controls_figure: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
