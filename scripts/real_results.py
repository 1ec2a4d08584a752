#!/usr/bin/env python
"""Every preset's documented command on real weights, over several CC0 pairs: numbers and figure.

For each network (``--networks vgg19,vgg16``), each content/style pair of bundled samples
(``--pairs chelsea:strokes,astronaut:mosaic,rocket:hubble``: a cat and brush strokes; a portrait
and a flat-colour mosaic; a night launch photo and a star field) and each preset, this runs what
``nst-jax stylize CONTENT STYLE --preset NAME --size SIZE --steps STEPS`` runs (the preset tuned
for the network), then

* prints the quality numbers of :mod:`nst_jax.quality` (content similarity, higher is better;
  style distance relative to the photo, lower is better; roughness relative to the style image)
  and the wall time (compilation included), with the same numbers for the content photo and the
  style image as the ends of the scale, and whether each preset passes the checks the ``real``
  test tier holds it to and is not beaten on both content and style by another preset;
* with ``--torch``, runs the same recipe in PyTorch (``scripts/torch_reference.py``: the same
  network, weights, loss and optimiser, written independently; multi-scale presets restart the
  optimiser at each scale) and prints its numbers and time beside;
* with ``--figure PATH``, writes content | style | result per preset for each pair on the first
  network, labelled, as one PNG (README's first figure: ``docs/real_results.png``).

Real weights: ``scripts/fetch_real_weights.py --model NETWORK`` (``--weights-vgg19``/
``--weights-vgg16`` to pass files).

    python scripts/real_results.py --size 256 --steps 300 --figure docs/real_results.png
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
from nst_jax.weights.file import load_weights  # noqa: E402

PRESETS = ("tf-tutorial", "gatys")


MIN_CONTENT, MAX_STYLE, MAX_ROUGH = 0.45, 0.5, 1.3  # as tests/test_real_weights.py holds them


def fetch_weights(network: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_real_weights.py"),
                           "--quiet", "--model", network], capture_output=True, text=True)
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


def run_pair(weights, pair: str, args) -> list[tuple[str, np.ndarray]]:
    """Prints the rows of one network and pair; returns ``(preset, image)`` per preset."""
    c_name, s_name = pair.split(":")
    content = image_io.load_image(image_io.sample_path(c_name))
    style = image_io.load_image(image_io.sample_path(s_name))
    print(f"\n{weights.label}: content {c_name}, style {s_name}, --size {args.size}, "
          f"--steps {args.steps}")
    photo = np.asarray(imageops.resize_longest(content, args.size))
    ends = (quality.measure(weights, photo, photo, style),
            quality.measure(weights, image_io.resize_image(style, photo.shape[:2]), photo, style))
    print(f"{'':26} {'content':>8} {'style':>8} {'rough':>6} {'seconds':>8}")
    for label, q in zip(("content photo (reference)", "style image (reference)"), ends):
        print(f"{label:26} {q.content:8.3f} {q.style:8.3f} {q.roughness:6.2f}")
    rows, scores = [], {}
    for name in args.presets.split(","):
        config = nst_jax.get_preset(name, weights.network).replace(size=args.size,
                                                                   steps=args.steps)
        start = time.perf_counter()
        result = nst_jax.stylize(content, style, config, weights)
        seconds = time.perf_counter() - start
        q = quality.measure(weights, result.image, photo, style)
        scores[name] = q
        ok = q.content >= MIN_CONTENT and q.style <= MAX_STYLE and q.roughness <= MAX_ROUGH
        print(f"{'nst-jax ' + name:26} {q.content:8.3f} {q.style:8.3f} {q.roughness:6.2f} "
              f"{seconds:8.1f}  {'passes' if ok else 'FAILS'} the checks", flush=True)
        rows.append((name, result.image))
        if args.torch:
            image, seconds = run_torch(weights, config, content, style)
            qt = quality.measure(weights, image, photo, style)
            print(f"{'pytorch ' + name:26} {qt.content:8.3f} {qt.style:8.3f} {qt.roughness:6.2f} "
                  f"{seconds:8.1f}", flush=True)
    for a, qa in scores.items():
        beaten = [b for b, qb in scores.items()
                  if b != a and qb.content > qa.content and qb.style < qa.style]
        if beaten:
            print(f"{a} is beaten on both content and style by {', '.join(beaten)}")
    return [(f"{c_name}", photo), (s_name, np.asarray(imageops.resize_longest(style, args.size))),
            *rows]


def write_figure(rows, path: Path, *, height: int) -> None:
    """One labelled row (content | style | each preset) per pair, stacked, on white."""
    import tempfile

    from nst_jax import figures

    strips = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, row in enumerate(rows):
            labels = [label if j < 2 else f"--preset {label}" for j, (label, _) in enumerate(row)]
            strips.append(figures.side_by_side([image for _, image in row], labels,
                                               Path(tmp) / f"{i}.png", height=height))
    width = max(s.shape[1] for s in strips)
    padded = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=1.0)
              for s in strips]
    image_io.save_image(path, np.concatenate(padded, axis=0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default="vgg19,vgg16")
    parser.add_argument("--weights-vgg19", help="real VGG-19 (default: fetch_real_weights.py)")
    parser.add_argument("--weights-vgg16", help="real VGG-16 (default: fetch_real_weights.py)")
    parser.add_argument("--pairs", default="chelsea:strokes,astronaut:mosaic,rocket:hubble",
                        help="CONTENT:STYLE bundled samples, comma-separated")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300, help="--steps of each command")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--torch", action="store_true", help="also run the PyTorch reference")
    parser.add_argument("--figure", type=Path,
                        help="write content | style | result per preset, a row per pair, for the "
                        "first network")
    args = parser.parse_args()

    figure_rows = []
    for i, network in enumerate(args.networks.split(",")):
        path = getattr(args, f"weights_{network}") or fetch_weights(network)
        weights = load_weights(path)
        for pair in args.pairs.split(","):
            shown = run_pair(weights, pair, args)
            if i == 0:
                figure_rows.append(shown)
    if args.figure:
        write_figure(figure_rows, args.figure, height=args.size * 2 // 3)
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
