#!/usr/bin/env python
"""Every preset's documented command on the bundled samples with real weights: figure and numbers.

For each preset this runs what ``nst-jax stylize chelsea.jpg strokes.jpg -o out.png --preset NAME
--size SIZE --steps STEPS`` runs (the preset tuned for the weights' network, at ``--size``), then

* prints the two quality numbers of :mod:`nst_jax.quality` (content similarity, higher is better;
  style distance relative to the photo, lower is better) and the wall time (compilation included),
  with the same numbers for the content photo and the style image as the ends of the scale;
* with ``--torch``, runs the same recipe in PyTorch (``scripts/torch_reference.py``: the same
  network, weights, loss and optimiser, written independently; multi-scale presets restart the
  optimiser at each scale) and prints its numbers and time beside;
* with ``--figure PATH``, writes content | style | result per preset, labelled, as one PNG
  (README's first figure: ``docs/real_results.png``).

Real weights: ``--weights PATH`` (default: what ``scripts/fetch_real_weights.py`` prints).

    python scripts/real_results.py --size 256 --steps 300 --torch --figure docs/real_results.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import nst_jax  # noqa: E402
from nst_jax import image_io, imageops, quality  # noqa: E402
from nst_jax.weights_file import load_weights  # noqa: E402

PRESETS = ("tf-tutorial", "gatys")


def fetch_weights() -> str:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_real_weights.py"),
                           "--quiet"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"real_results: no real weights: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


def run_torch(weights, config, content, style) -> tuple[np.ndarray, float]:
    """The preset's recipe in PyTorch; returns ``(image, seconds)``."""
    import torch

    from torch_reference import TorchStyleTransfer, to_hwc, to_nchw

    torch.manual_seed(config.seed)
    params = {k: {n: np.asarray(a) for n, a in v.items()} for k, v in weights.params.items()}
    spec = config.loss
    start = time.perf_counter()
    x = None
    for i, size in enumerate(config.scale_sizes(content.shape[:2])):
        c = np.asarray(imageops.resize_longest(content, size))
        s = np.asarray(imageops.resize_longest(style, round(max(c.shape[:2]) *
                                                            config.style_scale_for(0, 1))))
        ref = TorchStyleTransfer(params, weights.preprocessing, spec, c, s)
        if x is None:
            if config.init == "content":
                x0 = to_nchw(c)
            else:  # nst-jax's noise init: uniform in [0.25, 0.75]
                x0 = 0.25 + 0.5 * torch.rand(1, 3, *c.shape[:2])
        else:
            x0 = to_nchw(np.asarray(imageops.resize(to_hwc(x), c.shape[:2])))
        steps = config.steps_at(i)
        if config.optimizer == "adam":
            x, _ = ref.run_adam(x0, steps, lr=config.learning_rate, b1=config.adam_b1,
                                b2=config.adam_b2, eps=config.adam_eps)
        else:
            x, _, _ = ref.run_lbfgs(x0, steps, history=config.lbfgs_memory,
                                    line_search="strong_wolfe")
    return np.clip(to_hwc(x), 0, 1), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="real weights (default: fetch_real_weights.py)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300, help="--steps of each command")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--style", default="strokes.jpg", help="bundled style sample")
    parser.add_argument("--torch", action="store_true", help="also run the PyTorch reference")
    parser.add_argument("--figure", type=Path, help="write content | style | result per preset")
    args = parser.parse_args()

    weights = load_weights(args.weights or fetch_weights())
    content = image_io.load_image(image_io.sample_path("chelsea.jpg"))
    style = image_io.load_image(image_io.sample_path(args.style))
    print(f"weights: {weights.label}; content chelsea.jpg, style {args.style}, --size {args.size}")
    photo = np.asarray(imageops.resize_longest(content, args.size))
    ends = (quality.measure(weights, photo, photo, style),
            quality.measure(weights, image_io.resize_image(style, photo.shape[:2]), photo, style))
    print(f"{'':26} {'content':>8} {'style':>8} {'rough':>6} {'seconds':>8}")
    for label, q in zip(("content photo (reference)", "style image (reference)"), ends):
        print(f"{label:26} {q.content:8.3f} {q.style:8.3f} {q.roughness:6.2f}")
    rows = []
    for name in args.presets.split(","):
        config = nst_jax.get_preset(name, weights.network).replace(size=args.size,
                                                                   steps=args.steps)
        start = time.perf_counter()
        result = nst_jax.stylize(content, style, config, weights)
        seconds = time.perf_counter() - start
        q = quality.measure(weights, result.image, photo, style)
        print(f"{'nst-jax ' + name:26} {q.content:8.3f} {q.style:8.3f} {q.roughness:6.2f} "
              f"{seconds:8.1f}", flush=True)
        rows.append((name, result.image))
        if args.torch:
            image, seconds = run_torch(weights, config, content, style)
            qt = quality.measure(weights, image, photo, style)
            print(f"{'pytorch ' + name:26} {qt.content:8.3f} {qt.style:8.3f} {qt.roughness:6.2f} "
                  f"{seconds:8.1f}", flush=True)
    if args.figure:
        from nst_jax import figures

        images, labels = [photo], ["content"]
        images.append(np.asarray(imageops.resize_longest(style, args.size)))
        labels.append("style")
        for name, image in rows:
            images.append(image)
            labels.append(f"--preset {name}")
        figures.side_by_side(images, labels, args.figure, height=args.size * 2 // 3)
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
